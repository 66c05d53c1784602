"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError

from services.global_api.auth import get_service
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["operations"])


@router.get("/health", summary="MongoDB reachable and the current version; 503 when not")
def health(service: GlobalModelService = Depends(get_service)) -> JSONResponse:
    try:
        service.ping()
        version = service.registry.latest_version()
    except PyMongoError as exc:
        return JSONResponse(
            {
                "status": "unavailable",
                "mongodb": False,
                "error": f"MongoDB unreachable: {type(exc).__name__}",
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "mongodb": True, "version": version})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
