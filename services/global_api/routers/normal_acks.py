"""``POST /api/devices/{device_id}/accept-normal`` (admin) and ``GET`` of the same path: an operator's
word that a device's present behaviour is normal, applied by the trainer that owns the device."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Response

from flead.schema import DEVICE_ID_PATTERN
from services.global_api.anomaly_pages import PageKey
from services.global_api.auth import admin, get_service
from services.global_api.keys import Principal
from services.global_api.normal_acks import AcceptNormalRequest, NormalAck, NormalAckPage
from services.global_api.routers.paging import PageRequest, page_request
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["admin"])
DeviceId = Path(pattern=DEVICE_ID_PATTERN, description="The device whose behaviour is normal now.")


@router.post(
    "/api/devices/{device_id}/accept-normal",
    status_code=202,
    response_model=NormalAck,
    summary="Accept a device's present behaviour as its new normal (its thresholds recalibrate)",
    responses={
        200: {"model": NormalAck, "description": "This request id was recorded before: the recorded one."}
    },
)
def accept_normal(
    response: Response,
    device_id: str = DeviceId,
    request: AcceptNormalRequest = Body(default_factory=AcceptNormalRequest),
    principal: Principal = Depends(admin),
    service: GlobalModelService = Depends(get_service),
) -> NormalAck:
    if not service.normal_acks.known(device_id):
        raise HTTPException(404, f"no trainer has reported device {device_id!r}")
    ack, created = service.normal_acks.record(device_id, request, principal)
    if not created:
        response.status_code = 200
    return ack


@router.get(
    "/api/devices/{device_id}/accept-normal",
    response_model=NormalAckPage,
    summary="A device's new-normal acknowledgements, newest first, paginated by cursor: who asked, when, "
    "applied or not",
)
def list_normal_acks(
    device_id: str = DeviceId,
    page: PageRequest = Depends(page_request),
    service: GlobalModelService = Depends(get_service),
) -> NormalAckPage:
    return service.normal_acks.page(device_id, limit=page.limit, after=page.position(PageKey))
