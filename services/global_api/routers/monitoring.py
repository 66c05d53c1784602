"""``GET /api/status``, ``GET /api/devices``, ``GET /api/anomalies``, ``GET /api/events``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from flead.exports import anomaly_columns, anomaly_row, csv_text
from flead.schema import DEVICE_ID_PATTERN
from services.global_api.anomaly_pages import PageKey
from services.global_api.auth import get_service
from services.global_api.event_pages import EventFilter, EventPage
from services.global_api.monitoring import DEVICE_CURSOR, AnomalyFilter, AnomalyPage, DevicePage, utc
from services.global_api.routers.paging import PageRequest, page_request
from services.global_api.schemas import RuntimeSettings, Status, UpdateCounts
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["monitoring"])


def in_utc(name: str, value: datetime | None) -> datetime | None:
    """A time bound in UTC; one UTC cannot hold (year 1 at +00:01, year 9999 at -01:00) is a 422."""
    try:
        return None if value is None else utc(value)
    except OverflowError:
        raise HTTPException(422, f"{name} {value.isoformat()} is outside the dates UTC can hold") from None


@router.get("/api/status", summary="Current version, pending updates, configuration")
def get_status(service: GlobalModelService = Depends(get_service)) -> Status:
    latest = service.registry.latest()
    return Status(
        version=latest.version,
        created_at=latest.created_at,
        strategy=latest.strategy,
        versions=latest.version + 1,  # versions are consecutive from 0
        updates=UpdateCounts(**service.updates.status_counts()),
        config=RuntimeSettings(**service.config.load().to_dict()),
        architecture=latest.architecture,
    )


@router.get(
    "/api/devices",
    summary="Devices by id, paginated by cursor: last seen, samples, updates, anomaly counts, trainer stats",
)
def get_devices(
    page: PageRequest = Depends(page_request),
    service: GlobalModelService = Depends(get_service),
) -> DevicePage:
    return service.monitoring.device_page(limit=page.limit, after=page.position(DEVICE_CURSOR))


@dataclass(frozen=True)
class AnomalyQuery:
    """The filters and cursor of a page of anomalies (one dependency for the JSON and the CSV page)."""

    where: AnomalyFilter
    limit: int
    after: PageKey | None


def anomaly_query(
    device: str | None = Query(None, pattern=DEVICE_ID_PATTERN, description="Only this device."),
    since: datetime | None = Query(
        None, description="Events at or after this time (ISO 8601; UTC if naive)."
    ),
    until: datetime | None = Query(None, description="Events before this time."),
    min_score: float | None = Query(None, allow_inf_nan=False, description="Only scores at least this."),
    page: PageRequest = Depends(page_request),
) -> AnomalyQuery:
    where = AnomalyFilter(
        device_id=device, since=in_utc("since", since), until=in_utc("until", until), min_score=min_score
    )
    return AnomalyQuery(where, page.limit, page.position(PageKey))


@router.get("/api/anomalies", summary="Anomalous readings, newest first, filtered, paginated by cursor")
def get_anomalies(
    query: AnomalyQuery = Depends(anomaly_query), service: GlobalModelService = Depends(get_service)
) -> AnomalyPage:
    return service.monitoring.anomalies(query.where, limit=query.limit, after=query.after)


@router.get(
    "/api/anomalies.csv",
    summary="Anomalous readings as CSV: the filters and cursor of /api/anomalies, the next cursor in headers",
    response_class=Response,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "A page of rows after a header row (RFC 4180: quoted where needed, CRLF).",
            "headers": {
                "X-Next-Cursor": {
                    "description": "The `after` of the next page; absent on the last page.",
                    "schema": {"type": "string"},
                },
                "Link": {
                    "description": 'The next page\'s URL, `<...>; rel="next"`; absent on the last page.',
                    "schema": {"type": "string"},
                },
            },
        }
    },
)
def get_anomalies_csv(
    request: Request,
    query: AnomalyQuery = Depends(anomaly_query),
    service: GlobalModelService = Depends(get_service),
) -> Response:
    page = get_anomalies(query, service)
    names = service.settings.fleet.columns
    rows = (anomaly_row(item.model_dump(mode="json"), names) for item in page.items)
    headers = {}
    if page.next is not None:
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        link = f"{request.url.path}?{urlencode({**query, 'after': page.next})}"
        headers = {"X-Next-Cursor": page.next, "Link": f'<{link}>; rel="next"'}
    return Response(
        csv_text(rows, anomaly_columns(names)), media_type="text/csv; charset=utf-8", headers=headers
    )


@router.get(
    "/api/events",
    summary="Anomaly events (runs of alarms), newest start first, filtered, paginated by cursor",
)
def get_events(
    device: str | None = Query(None, pattern=DEVICE_ID_PATTERN, description="Only this device."),
    since: datetime | None = Query(
        None, description="Events still going at or after this time (ISO 8601; UTC if naive)."
    ),
    until: datetime | None = Query(None, description="Events that started before this time."),
    min_severity: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Only events whose peak severity is at least this."
    ),
    open: bool | None = Query(None, description="true: only open events; false: only closed ones."),
    page: PageRequest = Depends(page_request),
    service: GlobalModelService = Depends(get_service),
) -> EventPage:
    where = EventFilter(
        device_id=device,
        since=in_utc("since", since),
        until=in_utc("until", until),
        min_severity=min_severity,
        open=open,
    )
    return service.events.page(where, limit=page.limit, after=page.position(PageKey))
