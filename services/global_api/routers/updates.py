"""``POST /api/local-update``: a device's (or the trainer's) learning since a global version;
``POST /api/local-updates``: many of them in one request; ``GET /api/updates/pending``: what awaits
aggregation."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flead.federated import SubmitStatus, UpdateRefused
from services.global_api.auth import authenticated, get_service
from services.global_api.codec import (
    BatchItem,
    BatchTooLarge,
    UpdateBody,
    UpdateFormatError,
    decode_binary_update,
    decode_binary_updates,
    decode_json_update,
    decode_json_updates,
)
from services.global_api.keys import Principal
from services.global_api.schemas import BatchSubmitResult, PendingUpdates, SubmitResult
from services.global_api.service import GlobalModelService
from services.global_api.submission import ItemOutcome

router = APIRouter(tags=["updates"])
BATCH_PATH = "/api/local-updates"


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its nested models written in place: the request bodies are
    hand-written OpenAPI, where pydantic's ``#/$defs/...`` references resolve to nothing."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


UPDATE_SCHEMA = inline_schema(UpdateBody)

REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": UPDATE_SCHEMA},
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
    binary = _is_binary(request)
    body = await request.body()
    decode = decode_binary_update if binary else decode_json_update
    metrics = request.app.state.metrics
    try:
        update = await run_in_threadpool(decode, body)
        _check_may_submit(principal, update.device_id)
        outcome = await run_in_threadpool(service.submissions.submit, update, submitted_by=principal.label)
    except (UpdateFormatError, UpdateRefused):
        metrics.updates.labels("refused").inc()
        raise
    metrics.updates.labels(str(outcome.status)).inc()
    if outcome.aggregation is not None:
        metrics.count_aggregation("auto", outcome.aggregation.created)
    status = 202 if outcome.status is SubmitStatus.ACCEPTED else 200
    return JSONResponse(outcome.to_dict(), status_code=status)


BATCH_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["updates"],
                "additionalProperties": False,
                "properties": {
                    "updates": {
                        "type": "array",
                        "items": UPDATE_SCHEMA,
                        "description": "The updates, each accepted or refused on its own.",
                    }
                },
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "flead.federated.wire.encode_binary_updates: FLEADUB1, a count, then each "
            "flead-update container after its length (unsigned 32-bit big-endian).",
        },
    },
}
BATCH_RESPONSES = {
    200: {"model": BatchSubmitResult, "description": "Every update accepted, a duplicate or refused."},
    401: {"description": "Missing or invalid token."},
    403: {"description": "A device token submitting for another device."},
    413: {"description": "Body over the batch size limit, or more updates than the per-request limit."},
    415: {"description": "Neither JSON nor the binary batch."},
    422: {"description": "The batch envelope is malformed (a malformed update is refused on its own)."},
}


@router.post(
    BATCH_PATH,
    response_model=BatchSubmitResult,
    openapi_extra={"requestBody": BATCH_REQUEST_BODY},
    responses=BATCH_RESPONSES,
    summary="Submit many local updates (of any devices) in one request",
)
async def submit_local_updates(
    request: Request,
    principal: Principal = Depends(authenticated),
    service: GlobalModelService = Depends(get_service),
) -> JSONResponse:
    binary = _is_binary(request)
    body = await request.body()
    decode = decode_binary_updates if binary else decode_json_updates
    try:
        items = await run_in_threadpool(decode, body, service.settings.api_max_batch_updates)
    except BatchTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    for item in items:
        if item.update is not None:
            _check_may_submit(principal, item.update.device_id)
    decoded = [item for item in items if item.update is not None]
    outcome = await run_in_threadpool(
        service.submissions.submit_many, [item.update for item in decoded], submitted_by=principal.label
    )
    results = batch_results(items, decoded, outcome.items)
    counts = Counter(result["status"] for result in results)
    metrics = request.app.state.metrics
    for status, count in counts.items():
        metrics.updates.labels(status).inc(count)
    response = {
        "results": results,
        **{str(status): counts.get(str(status), 0) for status in SubmitStatus},
        "pending": outcome.pending,
        "version": outcome.version,
        "aggregation_scheduled": outcome.aggregation_scheduled,
    }
    return JSONResponse(response)


def batch_results(
    items: list[BatchItem], decoded: list[BatchItem], outcomes: list[ItemOutcome]
) -> list[dict]:
    """One result per item of the request, in its order: the undecodable ones refused with the reason."""
    by_index = {item.index: outcome for item, outcome in zip(decoded, outcomes, strict=True)}
    results = []
    for item in items:
        outcome = by_index.get(item.index) or ItemOutcome(SubmitStatus.REFUSED, item.error)
        results.append(
            {
                "index": item.index,
                "device_id": item.device_id,
                "update_id": item.update_id,
                "status": str(outcome.status),
                "reason": outcome.reason,
            }
        )
    return results


def _check_may_submit(principal: Principal, device_id: str) -> None:
    if not principal.may_submit_for(device_id):
        raise HTTPException(403, f"a token of device {principal.device_id!r} cannot submit for {device_id!r}")


def _is_binary(request: Request) -> bool:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type not in ("application/json", "application/octet-stream"):
        raise HTTPException(
            415, f"unsupported Content-Type {media_type!r}: send JSON or the binary container"
        )
    return media_type == "application/octet-stream"


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
