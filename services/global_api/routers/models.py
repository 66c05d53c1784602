"""``GET /api/global-model`` and ``GET /api/history``: the versions of the global model."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from services.global_api.auth import get_service
from services.global_api.codec import MAX_BASE_VERSION as MAX_VERSION
from services.global_api.model_payload import ModelFormat
from services.global_api.registry import LATEST_MAX_AGE_S
from services.global_api.routers.paging import PageRequest, page_request
from services.global_api.schemas import VERSION_CURSOR, GlobalModelDocument, VersionPage, VersionSummary
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["models"])

MODEL_RESPONSES = {
    200: {
        "description": "The model as JSON, or the binary container with Accept: application/octet-stream.",
        "model": GlobalModelDocument,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "`AnomalyModel.to_bytes()`: the flead.model.serialization container.",
            }
        },
    },
    304: {"description": "Not modified (If-None-Match matched the ETag)."},
    404: {"description": "No such version."},
}


@router.get("/api/global-model", responses=MODEL_RESPONSES, summary="The latest or a given global model")
def get_global_model(
    version: int | None = Query(None, ge=0, le=MAX_VERSION, description="A version; default the latest."),
    accept: str | None = Header(None),
    if_none_match: str | None = Header(None),
    service: GlobalModelService = Depends(get_service),
) -> Response:
    fmt = ModelFormat.of(accept)
    wanted = version if version is not None else service.registry.latest_version(max_age_s=LATEST_MAX_AGE_S)
    payload = None if wanted is None else service.payloads.get(wanted, fmt)
    if payload is None:
        missing = (
            "no global model version exists yet" if version is None else f"version {version} does not exist"
        )
        raise HTTPException(404, missing)
    headers = payload.headers(pinned=version is not None)
    if if_none_match and etag_matches(if_none_match, payload.etag):
        return Response(status_code=304, headers=headers)
    return Response(payload.body, media_type=payload.media_type, headers=headers)


def etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


@router.get(
    "/api/history",
    summary="The global versions with their lineage and metrics, newest first, paginated by cursor",
)
def get_history(
    page: PageRequest = Depends(page_request),
    service: GlobalModelService = Depends(get_service),
) -> VersionPage:
    versions = service.registry.history(limit=page.limit, before=page.position(VERSION_CURSOR))
    older = bool(versions) and versions[-1].version > 0  # versions are consecutive from 0
    return VersionPage(
        items=[VersionSummary(**v.summary()) for v in versions],
        limit=page.limit,
        next=VERSION_CURSOR.encode(versions[-1].version) if older else None,
    )
