"""``GET /api/global-model`` answered from memory, in front of the framework.

When the rendered bytes of the wanted version are in `ModelPayloads` and, for "the latest", this process
checked the latest version number within ``LATEST_MAX_AGE_S``, the answer (200 or 304) is sent straight
from here: no routing, no dependency injection, no thread hop, no MongoDB. Anything else (a stale check,
a version not rendered yet, a query it does not understand) goes on to the FastAPI route
(`routers.models`), which checks MongoDB, renders and fills the cache, so both paths answer the same
bytes and headers.

Staleness across replicas: a version written by this process is served at once (`ModelRegistry`
remembers what it inserts); one written by another replica is served at most ``LATEST_MAX_AGE_S``
after it was committed, once a request here finds the check stale and probes MongoDB.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from services.global_api.model_payload import ModelFormat, ModelPayloads, Payload
from services.global_api.registry import LATEST_MAX_AGE_S, ModelRegistry
from services.global_api.routers.models import etag_matches

PATH = "/api/global-model"
NOT_MODIFIED_HEADERS = 4  # ETag, Vary, X-Flead-Model-Version, Cache-Control (see Payload.raw_headers)


class CachedModelResponses:
    def __init__(self, app: ASGIApp, registry: ModelRegistry, payloads: ModelPayloads, route: object) -> None:
        self.app = app
        self.registry = registry
        self.payloads = payloads
        self.route = route  # labels the metrics of the requests answered here like the route's own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            answer = self._cached(scope)
            if answer is not None:
                payload, pinned, headers = answer
                scope["route"] = self.route
                status, raw = _response(payload, pinned, headers)
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": payload.body if status == 200 else b""})
                return
        await self.app(scope, receive, send)

    def _cached(self, scope: Scope) -> tuple[Payload, bool, dict[bytes, bytes]] | None:
        query = scope.get("query_string", b"")
        if query:
            name, _, value = query.partition(b"=")
            if name != b"version" or not value.isdigit() or len(value) > 9:
                return None  # the route validates (and answers 422 to) anything unusual
            version, pinned = int(value), True
        else:
            version, pinned = self.registry.fresh_latest_version(LATEST_MAX_AGE_S), False
            if version is None:
                return None
        headers = dict(scope["headers"])
        accept = headers.get(b"accept")
        fmt = ModelFormat.of(accept.decode("latin-1") if accept else None)
        payload = self.payloads.cached(version, fmt)
        return None if payload is None else (payload, pinned, headers)


def _response(payload: Payload, pinned: bool, headers: dict[bytes, bytes]) -> tuple[int, list]:
    raw = payload.raw_headers[pinned]
    if_none_match = headers.get(b"if-none-match")
    if if_none_match and etag_matches(if_none_match.decode("latin-1"), payload.etag):
        return 304, raw[:NOT_MODIFIED_HEADERS]
    return 200, raw
