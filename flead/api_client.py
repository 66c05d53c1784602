"""A small HTTP client for the global model API: what Dagster and the CLI ask of it.

Every call is retried with backoff on connection errors and 5xx answers; a 4xx answer is an
`ApiError` at once, with the API's own message. Lists are read page by page through their cursors
(every list answers ``{"items": [...], "limit": N, "next": cursor | null}``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

RETRIES = 4
BACKOFF_S = 0.5
MAX_PAGE = 1000  # the API's largest `limit`


class ApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class PendingUpdates:
    """``GET /api/updates/pending``: how many local updates await aggregation, and the newest one."""

    count: int
    newest_id: str | None
    newest_received_at: str | None  # ISO 8601, UTC


@dataclass
class GlobalApiClient:
    base_url: str
    token: str | None = None
    timeout_s: float = 30.0

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last: str = ""
        for attempt in range(RETRIES):
            try:
                response = httpx.request(
                    method,
                    self.base_url.rstrip("/") + path,
                    headers=headers,
                    timeout=self.timeout_s,
                    **kwargs,
                )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise ApiError(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}")
                    return response
                last = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt < RETRIES - 1:
                time.sleep(BACKOFF_S * 2**attempt)  # backoff between retries
        raise ApiError(
            f"{method} {path} failed after {RETRIES} tries ({last}); is the API at {self.base_url} up?"
        )

    def aggregate(self) -> dict:
        return self._request("POST", "/api/aggregate").json()

    def pending_updates(self) -> PendingUpdates:
        return PendingUpdates(**self._request("GET", "/api/updates/pending").json())

    def items(self, path: str, params: dict | None = None, *, page_size: int = MAX_PAGE) -> Iterator[dict]:
        """Every item of the list at ``path`` (filtered by ``params``), following its cursors."""
        after = None
        while True:
            query = {**(params or {}), "limit": page_size, **({"after": after} if after else {})}
            page = self._request("GET", path, params=query).json()
            yield from page["items"]
            after = page["next"]
            if after is None:
                return

    def history(self, limit: int = 100) -> list[dict]:
        """The ``limit`` newest global versions, newest first."""
        versions = self.items("/api/history", page_size=max(1, min(limit, MAX_PAGE)))
        return list(itertools.islice(versions, limit))

    def version(self, version: int) -> dict:
        for entry in self.items("/api/history", page_size=100):  # newest first
            if entry["version"] == version:
                return entry
            if entry["version"] < version:
                break
        raise ApiError(f"version {version} does not exist")

    def model_bytes(self, version: int | None = None) -> tuple[int, bytes]:
        """(version, the binary model) of `version` or the latest."""
        params = {} if version is None else {"version": version}
        response = self._request(
            "GET", "/api/global-model", params=params, headers={"Accept": "application/octet-stream"}
        )
        return int(response.headers["X-Flead-Model-Version"]), response.content


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]
