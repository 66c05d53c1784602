"""``POST /api/local-update``: a device's (or the trainer's) learning since a global version;
``GET /api/updates/pending``: what awaits aggregation."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from flead.federated import SubmitStatus, UpdateRefused
from services.global_api.auth import authenticated, get_service
from services.global_api.codec import UpdateBody, UpdateFormatError, decode_binary_update, decode_json_update
from services.global_api.keys import Principal
from services.global_api.schemas import PendingUpdates, SubmitResult
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["updates"])

REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": UpdateBody.model_json_schema()},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "flead.model.serialization container, header format 'flead-update'.",
        },
    },
}
RESPONSES = {
    200: {"model": SubmitResult, "description": "Already received: a duplicate, counted once."},
    202: {"model": SubmitResult, "description": "Accepted and pending aggregation."},
    401: {"description": "Missing or invalid token."},
    403: {"description": "A device token submitting for another device."},
    413: {"description": "Body over the size limit."},
    415: {"description": "Neither JSON nor the binary container."},
    422: {"description": "Malformed, or refused against the current model (the reason is given)."},
}


@router.post(
    "/api/local-update",
    status_code=202,
    response_model=SubmitResult,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses=RESPONSES,
    summary="Submit a local model update",
)
async def submit_local_update(
    request: Request,
    principal: Principal = Depends(authenticated),
    service: GlobalModelService = Depends(get_service),
) -> JSONResponse:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type not in ("application/json", "application/octet-stream"):
        raise HTTPException(
            415, f"unsupported Content-Type {media_type!r}: send JSON or the binary container"
        )
    body = await request.body()
    decode = decode_binary_update if media_type == "application/octet-stream" else decode_json_update
    metrics = request.app.state.metrics
    try:
        update = await run_in_threadpool(decode, body)
        if not principal.may_submit_for(update.device_id):
            raise HTTPException(
                403, f"a token of device {principal.device_id!r} cannot submit for {update.device_id!r}"
            )
        outcome = await run_in_threadpool(service.submissions.submit, update, submitted_by=principal.label)
    except (UpdateFormatError, UpdateRefused):
        metrics.updates.labels("refused").inc()
        raise
    metrics.updates.labels(str(outcome.status)).inc()
    if outcome.aggregation is not None:
        metrics.count_aggregation("auto", outcome.aggregation.created)
    status = 202 if outcome.status is SubmitStatus.ACCEPTED else 200
    return JSONResponse(outcome.to_dict(), status_code=status)


@router.get(
    "/api/updates/pending",
    dependencies=[Depends(authenticated)],
    responses={401: {"description": "Missing or invalid token."}},
    summary="How many local updates await aggregation, and the newest of them",
)
def get_pending_updates(service: GlobalModelService = Depends(get_service)) -> PendingUpdates:
    newest = service.updates.newest_pending()
    return PendingUpdates(
        count=service.updates.pending_count(),
        newest_id=None if newest is None else str(newest["_id"]),
        newest_received_at=None if newest is None else newest.get("received_at"),
    )
