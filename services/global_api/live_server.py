"""The API served by a real uvicorn in a background thread, for tests, benchmarks and notebooks::

    with LiveServer(settings) as server:
        httpx.get(f"{server.url}/api/status")

It listens on the host and port of ``settings.api_url`` and is ready when ``/health`` answers 200.
"""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from flead.config import Settings
from services.global_api.app import create_app
from services.global_api.server import api_address

HEALTH_POLL_S = 0.02


class LiveServer:
    def __init__(self, settings: Settings, app: FastAPI | None = None, *, log_level: str = "warning") -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        address = api_address(settings)
        config = uvicorn.Config(self.app, host=address.host, port=address.port, log_level=log_level)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="flead-api", daemon=True)

    @property
    def url(self) -> str:
        return self.settings.api_url.rstrip("/")

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        last_problem = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self._thread.is_alive():
                    raise RuntimeError(f"the API server stopped while starting (port taken?): {last_problem}")
                try:
                    response = client.get(f"{self.url}/health")
                    if response.status_code == 200:
                        return self
                    last_problem = f"/health answered {response.status_code}: {response.text[:200]}"
                except httpx.TransportError as exc:
                    last_problem = f"{type(exc).__name__}: {exc}"
                time.sleep(HEALTH_POLL_S)
        self.stop()
        raise TimeoutError(f"the API did not become healthy within {timeout_s} s: {last_problem}")

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
