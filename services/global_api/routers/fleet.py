"""``GET /api/fleet``: the fleet schema this deployment reads (its features, inputs, units, limits)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flead.fleet import FleetSchema
from services.global_api.auth import get_service
from services.global_api.service import GlobalModelService

router = APIRouter(tags=["fleet"])


@router.get(
    "/api/fleet",
    response_model=FleetSchema,
    summary="The fleet schema: what each reading carries (`fleet` of a Kafka reading is its `name@version`)",
)
def get_fleet(service: GlobalModelService = Depends(get_service)) -> FleetSchema:
    return service.settings.fleet
