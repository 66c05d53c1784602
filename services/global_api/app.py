"""The FastAPI application: ``create_app(settings)``; ``flead api run`` serves it with uvicorn."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pymongo.errors import PyMongoError

from flead.config import Settings
from services.global_api import model_fast_path
from services.global_api.errors import install_error_handlers
from services.global_api.health import MongoHealth
from services.global_api.limits import BodyReadTimeout, BodySizeLimit
from services.global_api.metrics import ApiMetrics, MetricsMiddleware
from services.global_api.model_fast_path import CachedModelResponses
from services.global_api.routers import (
    admin,
    dashboard,
    devices_view,
    docs,
    fleet,
    models,
    monitoring,
    normal_acks,
    operations,
    updates,
)
from services.global_api.service import GlobalModelService

DESCRIPTION = """\
Receives authenticated local model updates from devices and the stream trainer, aggregates them
(automatically at a threshold, or on demand) into versioned global models stored in MongoDB, and
serves the models, their history, devices, anomalies, metrics and a dashboard at `/`.

Every list answers one shape, `{"items": [...], "limit": N, "next": cursor}`: continue with
`after=<next>` until `next` is null.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = GlobalModelService.open(settings)
    health = MongoHealth(settings, service.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(service.start)
        except PyMongoError as exc:
            health.close()
            service.close()
            raise RuntimeError(
                f"MongoDB at {settings.mongo_address} is unreachable ({type(exc).__name__}): start it with "
                "`flead local up` or point FLEAD_MONGO_URI at a running server"
            ) from exc
        await run_in_threadpool(health.start)
        try:
            yield
        finally:
            health.close()
            service.close()

    app = FastAPI(
        title="FLEAD global model API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by routers.docs from the installed package, not from a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.state.health = health
    app.state.metrics = ApiMetrics(
        current_version=_or_nan(service.registry.latest_version),
        pending_updates=_or_nan(service.updates.pending_count),
    )
    service.submissions.on_background_aggregation = lambda outcome: app.state.metrics.count_aggregation(
        "auto", outcome.created
    )
    install_error_handlers(app)
    routers = (
        updates,
        models,
        fleet,
        admin,
        normal_acks,
        monitoring,
        operations,
        dashboard,
        devices_view,
        docs,
    )
    for module in routers:
        app.include_router(module.router)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api_max_body_bytes,
        per_path={updates.BATCH_PATH: settings.api_max_batch_body_bytes},
    )
    app.add_middleware(BodyReadTimeout, timeout_s=settings.api_body_timeout_s)
    model_route = next(route for route in models.router.routes if route.path == model_fast_path.PATH)
    app.add_middleware(
        CachedModelResponses, registry=service.registry, payloads=service.payloads, route=model_route
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _or_nan(read: Callable[[], int | None]) -> Callable[[], float]:
    """A gauge callback that reports NaN instead of failing the scrape when MongoDB is away."""

    def value() -> float:
        try:
            result = read()
        except PyMongoError:
            return math.nan
        return math.nan if result is None else float(result)

    return value
