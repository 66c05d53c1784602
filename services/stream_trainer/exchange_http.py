"""The global model API as a `ModelExchange` (httpx).

Contract: ``POST {api_url}/api/local-update`` (``Authorization: Bearer <FLEAD_API_KEY>``, JSON
``{"device_id", "update_id", "base_version", "n_samples", "kind": "delta", "arrays", "metrics"}``) answers
202 accepted, 200 duplicate or 422 with the reason; ``GET {api_url}/api/global-model`` answers the
current version (``version, created_at, parent_version, strategy, model, client``) with an ETag, 304 to
``If-None-Match`` when unchanged.

`push` only queues: a background thread delivers updates in order (retried with backoff on network
errors, 408, 429 and 5xx; dropped and counted on other refusals) and asks for a newer global model every
``global_poll_s``. The queue is bounded (``outbox_limit``, oldest dropped and counted); what has not
been delivered at a checkpoint is saved with its device and queued again after a restart (the API
ignores an update id it has already seen).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import httpx

from flead.config import Settings
from flead.federated import ClientConfig, GlobalState, LocalUpdate
from flead.federated.wire import encode_json_update
from flead.model.anomaly_model import AnomalyModel
from flead.model.config import ModelConfig, model_for_fleet
from services.stream_trainer.backoff import Backoff
from services.stream_trainer.options import TrainerOptions

log = logging.getLogger(__name__)

UPDATE_PATH = "/api/local-update"
MODEL_PATH = "/api/global-model"
RETRIED_STATUS = {408, 429}


class HttpExchange:
    def __init__(
        self, settings: Settings, options: TrainerOptions, transport: httpx.BaseTransport | None = None
    ):
        headers = {"Accept": "application/json"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        timeout = httpx.Timeout(options.http_timeout_s, connect=min(2.0, options.http_timeout_s))
        self._http = httpx.Client(
            base_url=settings.api_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.lineage = f"http:{settings.api_url.rstrip('/')}"
        self.model_config: ModelConfig = options.model or model_for_fleet(settings.fleet)
        self.client_config = ClientConfig()
        self._poll_s = options.global_poll_s
        self._limit = options.outbox_limit
        self._outbox: deque[LocalUpdate] = deque()
        self._state: GlobalState | None = None
        self._etag: str | None = None
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = dict.fromkeys(("pushed", "delivered", "duplicate", "refused", "failed", "dropped"), 0)
        self._counts |= {"models_fetched": 0, "not_modified": 0}
        self._api_errors = 0

    # ------------------------------------------------------------------------------ the protocol

    def open(self, should_stop: Callable[[], bool]) -> bool:
        """Wait for the first global model (it decides the architecture), then start delivering.
        Returns False when `should_stop` ended the wait first."""
        backoff = Backoff(0.5, 15.0)
        while not should_stop():
            try:
                if self._fetch_model():
                    break
                problem = "the API has no global model yet"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            delay = backoff.next_delay()
            log.warning(
                "waiting for the global model at %s (%s); retrying in %.1f s", self.lineage, problem, delay
            )
            self._stop.wait(delay)  # backoff between attempts, interruptible by close()
        else:
            return False
        self._thread = threading.Thread(target=self._run, name="flead-model-exchange", daemon=True)
        self._thread.start()
        return True

    def push(self, update: LocalUpdate) -> None:
        if not isinstance(update, LocalUpdate):
            raise TypeError(f"push needs a LocalUpdate, got {type(update).__name__}")
        with self._lock:
            if len(self._outbox) >= self._limit:
                dropped = self._outbox.popleft()
                self._counts["dropped"] += 1
                log.warning(
                    "update outbox full (%d): dropped %s of %s",
                    self._limit,
                    dropped.update_id,
                    dropped.device_id,
                )
            self._outbox.append(update)
            self._counts["pushed"] += 1
            self._lock.notify_all()

    def latest(self, known_version: int | None) -> GlobalState | None:
        state = self._state
        if state is None or (known_version is not None and state.version <= known_version):
            return None
        return state

    def unsent(self) -> list[LocalUpdate]:
        with self._lock:
            return list(self._outbox)

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._lock.notify_all()
            while self._outbox and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            return not self._outbox

    def stats(self) -> dict[str, int | float | None]:
        state = self._state
        with self._lock:
            waiting = len(self._outbox)
        return {
            "global_version": None if state is None else state.version,
            "outbox": waiting,
            "api_errors": self._api_errors,
            **self._counts,
        }

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http.close()

    # ------------------------------------------------------------------------------ background

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception:  # the exchange thread must outlive any surprise; the loop resumes
                self._api_errors += 1
                log.exception("model exchange error; resuming")
                self._stop.wait(1.0)

    def _serve(self) -> None:
        backoff = Backoff(0.5, 30.0)
        next_poll = time.monotonic() + self._poll_s
        retry_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                try:
                    self._fetch_model()
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    self._api_errors += 1
                    log.warning("could not fetch the global model: %s", exc)
                next_poll = now + self._poll_s
            if now >= retry_at:
                outcome = self._deliver_next()
                if outcome == "retry":
                    retry_at = time.monotonic() + backoff.next_delay()
                elif outcome == "sent":
                    backoff.reset()
                    continue
            with self._lock:
                if self._stop.is_set():
                    break
                wake_at = next_poll if not self._outbox else min(next_poll, max(retry_at, time.monotonic()))
                self._lock.wait(max(0.0, wake_at - time.monotonic()))

    def _deliver_next(self) -> str:
        """Send the oldest waiting update: "sent" (delivered or finally refused), "retry" or "idle"."""
        with self._lock:
            if not self._outbox:
                return "idle"
            update = self._outbox[0]
        try:
            response = self._http.post(UPDATE_PATH, json=encode_json_update(update))
        except httpx.HTTPError as exc:
            self._api_errors += 1
            log.warning("could not deliver update %s of %s: %s", update.update_id, update.device_id, exc)
            return "retry"
        status = response.status_code
        if status in RETRIED_STATUS or status >= 500:
            self._api_errors += 1
            log.warning("the API answered %d to update %s; will retry", status, update.update_id)
            return "retry"
        if status == 202:
            outcome = "delivered"
        elif status == 200:
            outcome = "duplicate"
        elif status == 422:
            outcome = "refused"
            log.info("update %s of %s refused: %s", update.update_id, update.device_id, _reason(response))
        else:
            outcome = "failed"
            log.error(
                "the API answered %d to update %s (%s); dropped", status, update.update_id, _reason(response)
            )
        with self._lock:
            if self._outbox and self._outbox[0] is update:
                self._outbox.popleft()
            self._counts[outcome] += 1
            self._lock.notify_all()
        return "sent"

    def _fetch_model(self) -> bool:
        """Ask for the current global model; True when one is known (new or unchanged)."""
        headers = {"If-None-Match": self._etag} if self._etag and self._state is not None else {}
        response = self._http.get(MODEL_PATH, headers=headers)
        if response.status_code == 304:
            self._counts["not_modified"] += 1
            return True
        if response.status_code == 404:
            return False
        response.raise_for_status()
        data = response.json()
        model = AnomalyModel.from_json_dict(data["model"])
        state = GlobalState(
            version=data["version"],
            weights=model.get_weights(),
            created_at=datetime.fromisoformat(data["created_at"]),
            parent_version=data.get("parent_version"),
        )
        client = data.get("client") or {}
        config = ClientConfig(
            proximal_mu=float(client.get("proximal_mu", 0.0)),
            personal_mix=float(client.get("personal_mix", ClientConfig().personal_mix)),
        )
        with self._lock:
            if self._state is None or state.version >= self._state.version:
                if self._state is not None and model.config != self.model_config:
                    log.error(
                        "global version %d changed the architecture; devices keep the old one", state.version
                    )
                elif self._state is None:
                    self.model_config = model.config
                self._state, self.client_config = state, config
                self._etag = response.headers.get("ETag")
            self._counts["models_fetched"] += 1
        return True


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:200]
