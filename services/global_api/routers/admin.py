"""Admin actions: ``POST /api/aggregate``, ``POST /api/config`` (and ``GET /api/config``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.global_api.auth import admin, get_service
from services.global_api.schemas import AggregationResult, RuntimeSettings, Strategy
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["admin"])
ADMIN_ONLY = [Depends(admin)]


class ConfigChange(BaseModel):
    """Fields to change; omitted ones keep their value. Client settings apply from the next version."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy | None = None
    auto_aggregate_threshold: int | None = Field(None, ge=1, le=1_000_000)
    max_staleness: int | None = Field(None, ge=0, le=1_000_000)
    proximal_mu: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False)
    personal_mix: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


@router.post(
    "/api/aggregate", dependencies=ADMIN_ONLY, summary="Aggregate the pending updates into a new version now"
)
def aggregate(request: Request, service: GlobalModelService = Depends(get_service)) -> AggregationResult:
    outcome = service.aggregator.aggregate(trigger="manual")
    request.app.state.metrics.count_aggregation("manual", outcome.created)
    return AggregationResult(**outcome.to_dict())


@router.get("/api/config", summary="The runtime configuration")
def get_config(service: GlobalModelService = Depends(get_service)) -> RuntimeSettings:
    return RuntimeSettings(**service.config.load().to_dict())


@router.post("/api/config", dependencies=ADMIN_ONLY, summary="Change the runtime configuration (persisted)")
def set_config(change: ConfigChange, service: GlobalModelService = Depends(get_service)) -> RuntimeSettings:
    try:
        return RuntimeSettings(**service.config.update(change.model_dump(exclude_none=True)).to_dict())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
