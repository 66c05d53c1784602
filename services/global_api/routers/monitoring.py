"""``GET /api/status``, ``GET /api/devices``, ``GET /api/anomalies``, ``GET /api/events``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Query

from services.global_api.anomaly_pages import MAX_CURSOR_CHARS, PageKey
from services.global_api.auth import get_service
from services.global_api.codec import ID_PATTERN
from services.global_api.event_pages import EventFilter, EventPage
from services.global_api.monitoring import MAX_OFFSET, AnomalyFilter, utc
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["monitoring"])


def in_utc(name: str, value: datetime | None) -> datetime | None:
    """A time bound in UTC; one UTC cannot hold (year 1 at +00:01, year 9999 at -01:00) is a 422."""
    try:
        return None if value is None else utc(value)
    except OverflowError:
        raise HTTPException(422, f"{name} {value.isoformat()} is outside the dates UTC can hold") from None


@router.get("/api/status", summary="Current version, pending updates, configuration")
def get_status(service: GlobalModelService = Depends(get_service)) -> dict:
    latest = service.registry.latest()
    return {
        "version": latest.version,
        "created_at": latest.created_at.isoformat(),
        "strategy": latest.strategy,
        "versions": latest.version + 1,  # versions are consecutive from 0
        "updates": service.updates.status_counts(),
        "config": service.config.load().to_dict(),
        "architecture": latest.architecture,
    }


@router.get("/api/devices", summary="Devices: last seen, samples, updates, anomaly counts, trainer stats")
def get_devices(service: GlobalModelService = Depends(get_service)) -> dict:
    devices, anomalies_as_of = service.monitoring.devices()
    return {"devices": devices, "anomalies_as_of": anomalies_as_of.isoformat()}


@router.get("/api/anomalies", summary="Anomaly events, newest first, filtered, paginated by cursor")
def get_anomalies(
    device: str | None = Query(None, pattern=ID_PATTERN, description="Only this device."),
    since: datetime | None = Query(
        None, description="Events at or after this time (ISO 8601; UTC if naive)."
    ),
    until: datetime | None = Query(None, description="Events before this time."),
    min_score: float | None = Query(None, allow_inf_nan=False, description="Only scores at least this."),
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(
        None, max_length=MAX_CURSOR_CHARS, description="Continue after this cursor (`next` of a page)."
    ),
    offset: int = Query(0, ge=0, description=f"Events to skip (at most {MAX_OFFSET}; then use `after`)."),
    service: GlobalModelService = Depends(get_service),
) -> dict:
    where = AnomalyFilter(
        device_id=device, since=in_utc("since", since), until=in_utc("until", until), min_score=min_score
    )
    position = None if after is None else PageKey.decode(after)
    return service.monitoring.anomalies(where, limit=limit, offset=offset, after=position).to_dict()


@router.get(
    "/api/events",
    summary="Anomaly events (runs of alarms), newest start first, filtered, paginated by cursor",
    response_model=EventPage,
)
def get_events(
    device: str | None = Query(None, pattern=ID_PATTERN, description="Only this device."),
    since: datetime | None = Query(
        None, description="Events still going at or after this time (ISO 8601; UTC if naive)."
    ),
    until: datetime | None = Query(None, description="Events that started before this time."),
    min_severity: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Only events whose peak severity is at least this."
    ),
    open: bool | None = Query(None, description="true: only open events; false: only closed ones."),
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(
        None, max_length=MAX_CURSOR_CHARS, description="Continue after this cursor (`next` of a page)."
    ),
    service: GlobalModelService = Depends(get_service),
) -> EventPage:
    where = EventFilter(
        device_id=device,
        since=in_utc("since", since),
        until=in_utc("until", until),
        min_severity=min_severity,
        open=open,
    )
    position = None if after is None else PageKey.decode(after)
    return service.events.page(where, limit=limit, after=position)
