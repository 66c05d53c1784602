"""The global model API as a `ModelExchange` (httpx).

Contract: ``POST {api_url}/api/local-updates`` (``Authorization: Bearer <FLEAD_API_KEY>``, the binary
batch of `flead.federated.wire.encode_binary_updates`) answers 200 with one result per update
(accepted, duplicate, or refused with the reason); ``GET {api_url}/api/global-model`` answers the
current version (``version, created_at, parent_version, strategy, model, client``) with an ETag, 304 to
``If-None-Match`` when unchanged. An API without the batch endpoint (404) gets one update per
``POST /api/local-update`` (JSON; 202 accepted, 200 duplicate or 422 refused).

`push` only queues: a background thread delivers the waiting updates in order, in batches of at most
``settings.api_max_batch_updates`` updates and ``settings.api_max_batch_body_bytes`` (halved after a 413
or a timeout, grown back after a success); a batch is retried whole with backoff on network errors,
408, 429 and 5xx (the API counts an update id once, so a retried batch that had arrived is harmless),
dropped and counted on other refusals of the request, and each update refused in a batch is dropped and
counted as a refusal. It also asks for a newer global model every ``global_poll_s``. The queue is
bounded (``outbox_limit``, oldest dropped and counted); what has not been delivered at a checkpoint is
saved with its device and queued again after a restart (the API ignores an update id it has already
seen).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import httpx

from flead.config import Settings
from flead.federated import ClientConfig, GlobalState, LocalUpdate
from flead.federated.wire import (
    BATCH_OVERHEAD,
    encode_binary_update,
    encode_json_update,
    frame_binary_updates,
)
from flead.model.anomaly_model import AnomalyModel
from flead.model.config import ModelConfig, model_for_fleet
from services.stream_trainer.backoff import Backoff
from services.stream_trainer.exchange import BudgetRefusals
from services.stream_trainer.options import TrainerOptions

log = logging.getLogger(__name__)

UPDATE_PATH = "/api/local-update"
BATCH_PATH = "/api/local-updates"
MODEL_PATH = "/api/global-model"
RETRIED_STATUS = {408, 429}
BINARY = {"Content-Type": "application/octet-stream"}
ITEM_OUTCOMES = {"accepted": "delivered", "duplicate": "duplicate", "refused": "refused"}
_U32_SIZE = 4  # the length before each update in a binary batch


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
        self._counts |= {"models_fetched": 0, "not_modified": 0, "requests": 0}
        self._batched = True
        self._max_batch = settings.api_max_batch_updates
        self._max_batch_bytes = settings.api_max_batch_body_bytes
        self._batch_size = self._max_batch
        # A batch takes longer than one update; the read timeout grows with the most a batch may hold.
        self._batch_timeout = httpx.Timeout(
            options.http_timeout_s * max(1.0, self._max_batch / 50), connect=min(2.0, options.http_timeout_s)
        )
        self._api_errors = 0
        self.budget = BudgetRefusals()

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

    def over_budget(self, device_id: str) -> bool:
        return device_id in self.budget

    def stats(self) -> dict[str, int | float | None]:
        state = self._state
        with self._lock:
            waiting = len(self._outbox)
        return {
            "global_version": None if state is None else state.version,
            "outbox": waiting,
            "api_errors": self._api_errors,
            **self._counts,
            **self.budget.stats(),
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
        """Send the oldest waiting updates: "sent" (delivered or finally refused), "retry" or "idle"."""
        with self._lock:
            chunk = list(itertools.islice(self._outbox, self._batch_size if self._batched else 1))
        if not chunk:
            return "idle"
        if not self._batched:
            return self._deliver_one(chunk[0])
        containers, size = [], BATCH_OVERHEAD
        for update in chunk:
            container = encode_binary_update(update)
            if containers and size + _U32_SIZE + len(container) > self._max_batch_bytes:
                break
            containers.append(container)
            size += _U32_SIZE + len(container)
        chunk = chunk[: len(containers)]
        try:
            response = self._http.post(
                BATCH_PATH,
                content=frame_binary_updates(containers),
                headers=BINARY,
                timeout=self._batch_timeout,
            )
        except httpx.TimeoutException as exc:
            self._api_errors += 1
            self._batch_size = max(1, len(chunk) // 2)  # the API may be slow on big batches: smaller ones
            log.warning("a batch of %d updates timed out (%s); will retry smaller", len(chunk), exc)
            return "retry"
        except httpx.HTTPError as exc:
            self._api_errors += 1
            log.warning("could not deliver a batch of %d updates: %s", len(chunk), exc)
            return "retry"
        status = response.status_code
        if status in (404, 405):  # an API from before batches: one update per request
            log.warning("the API has no %s (%d); sending updates one by one", BATCH_PATH, status)
            self._batched = False
            return "sent"
        if status == 413 and len(chunk) > 1:
            self._batch_size = max(1, len(chunk) // 2)
            log.warning("the API refused a batch of %d updates as too large; halving", len(chunk))
            return "sent"
        if status in RETRIED_STATUS or status >= 500:
            self._api_errors += 1
            log.warning("the API answered %d to a batch of %d updates; will retry", status, len(chunk))
            return "retry"
        if status == 200:
            outcomes = self._item_outcomes(chunk, response)
            self._batch_size = min(self._max_batch, self._batch_size * 2)
        else:
            log.error(
                "the API answered %d to a batch of %d updates (%s); dropped",
                status,
                len(chunk),
                _reason(response),
            )
            outcomes = ["failed"] * len(chunk)
        self._done(chunk, outcomes)
        return "sent"

    def _item_outcomes(self, chunk: list[LocalUpdate], response: httpx.Response) -> list[str]:
        results = response.json()["results"]
        if len(results) != len(chunk):
            raise ValueError(f"the API answered {len(results)} results to a batch of {len(chunk)} updates")
        outcomes = []
        for update, result in zip(chunk, results, strict=True):
            outcome = ITEM_OUTCOMES.get(result["status"], "failed")
            if outcome == "refused":
                self._refused(update, result.get("reason"))
            outcomes.append(outcome)
        return outcomes

    def _deliver_one(self, update: LocalUpdate) -> str:
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
            self._refused(update, _reason(response))
        else:
            outcome = "failed"
            log.error(
                "the API answered %d to update %s (%s); dropped", status, update.update_id, _reason(response)
            )
        self._done([update], [outcome])
        return "sent"

    def _refused(self, update: LocalUpdate, reason: str | None) -> None:
        if not self.budget.note(update.device_id, reason):
            log.info("update %s of %s refused: %s", update.update_id, update.device_id, reason)

    def _done(self, chunk: list[LocalUpdate], outcomes: list[str]) -> None:
        """Take the answered updates off the outbox (those the outbox has not dropped meanwhile)."""
        with self._lock:
            for update, outcome in zip(chunk, outcomes, strict=True):
                if self._outbox and self._outbox[0] is update:
                    self._outbox.popleft()
                self._counts[outcome] += 1
            self._counts["requests"] += 1
            self._lock.notify_all()

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
