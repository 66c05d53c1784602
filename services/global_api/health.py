"""What ``GET /health`` reports, kept up to date off the request path.

A background thread pings MongoDB every half ``api_health_timeout_s`` over its own client (one
connection, that timeout for connecting, selecting and reading), and reads the latest version by id.
``/health`` only reads the last result from memory, so it never waits behind the read load (the
request thread pool, the main client's connections, slow queries); and MongoDB counts as down when its
last ping failed or none succeeded for twice the timeout (a frozen server answers no ping at all).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pymongo.errors import PyMongoError

from flead.config import Settings
from flead.storage.mongo import get_database, make_mongo_client
from services.global_api.registry import ModelRegistry


@dataclass(frozen=True)
class HealthState:
    mongodb: bool
    version: int | None
    detail: str  # why MongoDB counts as down ("" when up)

    def to_dict(self) -> dict:
        if self.mongodb:
            return {"status": "ok", "mongodb": True, "version": self.version}
        return {"status": "unavailable", "mongodb": False, "error": f"MongoDB unreachable: {self.detail}"}


class MongoHealth:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        timeout_ms = max(int(settings.api_health_timeout_s * 1000), 100)
        self._client = make_mongo_client(
            settings,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
            maxPoolSize=1,
        )
        # Its own view of the versions over its own client; the API's registry gives what it made itself.
        self._versions = ModelRegistry(
            get_database(self._client, settings)[settings.collection_global_models]
        )
        self._registry = registry
        self._interval_s = settings.api_health_timeout_s / 2
        self._stale_after_s = 2 * settings.api_health_timeout_s
        self._lock = threading.Lock()
        self._ok_at: float | None = None  # monotonic time of the last successful probe
        self._problem = "not checked yet"
        self._version: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flead-api-health", daemon=True)

    def start(self) -> None:
        self._probe()  # a state before the first request
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._stale_after_s + 1)
        self._client.close()

    def state(self) -> HealthState:
        with self._lock:
            ok_at, problem, version = self._ok_at, self._problem, self._version
        known = self._registry.known_latest_version()
        if known is not None and (version is None or known > version):
            version = known
        if problem:
            return HealthState(False, version, problem)
        age = time.monotonic() - ok_at if ok_at is not None else float("inf")
        if age > self._stale_after_s:
            return HealthState(False, version, f"no answer to a ping for {age:.1f} s")
        return HealthState(True, version, "")

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._probe()

    def _probe(self) -> None:
        try:
            self._client.admin.command("ping")
            version = self._versions.latest_version()
        except PyMongoError as exc:
            with self._lock:
                self._problem = type(exc).__name__
            return
        with self._lock:
            self._ok_at, self._problem, self._version = time.monotonic(), "", version
