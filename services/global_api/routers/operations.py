"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.global_api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "MongoDB is unreachable (the reason is given)."}},
    summary="MongoDB reachable and the current version; 503 when not",
)
async def health(request: Request) -> JSONResponse:
    # async and from memory (services.global_api.health): never queued behind the read load.
    state = request.app.state.health.state()
    return JSONResponse(state.to_dict(), status_code=200 if state.mongodb else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
