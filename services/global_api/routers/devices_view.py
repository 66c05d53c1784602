"""``GET /devices/{device_id}``: the device page (HTML), linked from the dashboard's devices table."""

from __future__ import annotations

from pathlib import Path as FilePath

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import HTMLResponse

from flead.reporting.device_view import DeviceViewError, NoDeviceData, build_device_view, parse_range
from flead.schema import DEVICE_ID_PATTERN
from services.global_api.auth import get_service
from services.global_api.device_page import render_device_page
from services.global_api.service import GlobalModelService

router = APIRouter(include_in_schema=False)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    device_id: str = Path(pattern=DEVICE_ID_PATTERN),
    start: str | None = Query(None, description="First day or time (ISO 8601, UTC if naive)."),
    end: str | None = Query(None, description="Last day (inclusive) or time (exclusive)."),
    service: GlobalModelService = Depends(get_service),
) -> HTMLResponse:
    try:
        first, last = parse_range(start, end)
    except DeviceViewError as exc:
        raise HTTPException(422, str(exc)) from None
    settings = service.settings
    try:
        view = build_device_view(
            device_id,
            lake_dir=FilePath(settings.lake_dir),
            evaluations_dir=FilePath(settings.evaluations_dir),
            db=service.client[settings.mongo_db],
            anomalies_collection=settings.collection_anomalies,
            events_collection=settings.collection_events,
            start=first,
            end=last,
        )
    except NoDeviceData as exc:
        raise HTTPException(404, str(exc)) from None
    return HTMLResponse(render_device_page(view))
