"""``GET /api/global-model`` bodies, rendered once per version and format (versions never change).

JSON::

    {"version": 3, "created_at": "2026-...+00:00", "parent_version": 2, "strategy": "fedavg",
     "model": <AnomalyModel.to_json_dict()>, "client": {"proximal_mu": 0.0, "personal_mix": 0.5},
     "privacy": {"mode": "local", "epsilon": 3.2, "delta": 1e-05, ...}}

Binary: ``AnomalyModel.to_bytes()``, with the same version fields in the header's ``metadata``.
The ETag is the format plus a digest of the body, so it differs per version and per format.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from services.global_api.registry import ModelRegistry

CACHE_SIZE = 16


class ModelFormat(StrEnum):
    JSON = "json"
    BINARY = "binary"

    @classmethod
    def of(cls, accept: str | None) -> ModelFormat:
        """The format an Accept header asks for: binary when it names application/octet-stream."""
        return cls.BINARY if accept and "application/octet-stream" in accept.lower() else cls.JSON

    @property
    def media_type(self) -> str:
        return "application/json" if self is ModelFormat.JSON else "application/octet-stream"


@dataclass(frozen=True)
class Payload:
    version: int
    body: bytes
    media_type: str
    etag: str

    def headers(self, *, pinned: bool) -> dict[str, str]:
        return {
            "ETag": self.etag,
            "Vary": "Accept",
            "X-Flead-Model-Version": str(self.version),
            # A given version never changes; "the latest" must be revalidated.
            "Cache-Control": "public, max-age=31536000, immutable" if pinned else "no-cache",
        }

    @cached_property
    def raw_headers(self) -> dict[bool, list[tuple[bytes, bytes]]]:
        """ASGI headers of a 200 (pinned, latest), rendered once; a 304 sends the first four."""
        length = str(len(self.body)).encode()
        body = [(b"content-type", self.media_type.encode()), (b"content-length", length)]
        return {
            pinned: [(k.lower().encode(), v.encode()) for k, v in self.headers(pinned=pinned).items()] + body
            for pinned in (True, False)
        }


class ModelPayloads:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._cache: OrderedDict[tuple[int, ModelFormat], Payload] = OrderedDict()
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()

    def cached(self, version: int, fmt: ModelFormat) -> Payload | None:
        """The payload if it is rendered already (memory only, never blocks on the database)."""
        with self._lock:
            return self._cache.get((version, fmt))

    def get(self, version: int, fmt: ModelFormat) -> Payload | None:
        key = (version, fmt)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        # One rendering at a time: the requests that arrive with a new version wait for it, not redo it.
        with self._render_lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            payload = self._render(version, fmt)
            if payload is not None:
                with self._lock:
                    self._cache[key] = payload
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
        return payload

    def _render(self, version: int, fmt: ModelFormat) -> Payload | None:
        meta = self._registry.get(version)
        if meta is None:
            return None
        model = self._registry.model(meta)
        if fmt is ModelFormat.BINARY:
            body = model.to_bytes()
        else:
            document = {
                "version": meta.version,
                "created_at": meta.created_at.isoformat(),
                "parent_version": meta.parent_version,
                "strategy": meta.strategy,
                "model": model.to_json_dict(),
                "client": meta.client,
                "privacy": meta.privacy_summary(),
            }
            body = json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
        digest = hashlib.sha256(body).hexdigest()[:20]
        return Payload(version, body, fmt.media_type, f'"v{version}-{fmt}-{digest}"')
