"""Prometheus metrics (``GET /metrics``), one registry per app instance."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self, current_version: Callable[[], float], pending_updates: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flead_api_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flead_api_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=self.registry,
        )
        self.updates = Counter(
            "flead_api_local_updates",
            "Local updates by outcome (accepted, duplicate, refused).",
            ["outcome"],
            registry=self.registry,
        )
        self.aggregations = Counter(
            "flead_api_aggregations",
            "Aggregations by trigger and outcome (created, skipped).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        version = Gauge(
            "flead_api_global_model_version", "Latest global model version.", registry=self.registry
        )
        version.set_function(current_version)
        pending = Gauge(
            "flead_api_pending_updates", "Updates waiting for aggregation.", registry=self.registry
        )
        pending.set_function(pending_updates)

    def count_aggregation(self, trigger: str, created: bool) -> None:
        self.aggregations.labels(trigger, "created" if created else "skipped").inc()


class MetricsMiddleware:
    """Counts and times every request, labelled by its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
