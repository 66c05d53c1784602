"""Anomaly documents to MongoDB from a background thread, so the consume loop never waits for them.

Documents are written about once a second (``insert_many(ordered=False)`` on their natural ``_id``,
duplicates ignored), retried with backoff while MongoDB is away, and `flush` (called by every
checkpoint) waits until everything handed over so far is stored, or raises: a checkpoint never covers
an anomaly that is not in MongoDB.
"""

from __future__ import annotations

import logging
import threading
import time

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from services.stream_trainer.backoff import Backoff
from services.stream_trainer.health import Counters
from services.stream_trainer.mongo_writes import insert_ignoring_duplicates

log = logging.getLogger(__name__)

WRITE_EVERY_S = 1.0


class AnomalyStoreError(RuntimeError):
    pass


class AnomalyStore:
    def __init__(self, collection: Collection, counters: Counters) -> None:
        self._collection = collection
        self._counters = counters
        self._waiting: list[dict] = []
        self._added = 0  # documents handed over, ever
        self._stored = 0  # of which stored
        self._error: Exception | None = None  # of the last failed attempt
        self._lock = threading.Condition()
        self._stop = False
        self._flush_requested = False
        self._thread = threading.Thread(target=self._run, name="flead-anomaly-store", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._added - self._stored

    def add(self, documents: list[dict]) -> None:
        if documents:
            with self._lock:
                self._waiting.extend(documents)
                self._added += len(documents)

    def flush(self, timeout_s: float) -> None:
        """Wait until every document added so far is stored; AnomalyStoreError if that does not happen
        within `timeout_s` (MongoDB away): the caller must not checkpoint."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._added
            self._flush_requested = True
            self._lock.notify_all()
            while self._stored < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AnomalyStoreError(
                        f"{target - self._stored} anomaly documents not stored yet: {self._error!r}"
                    )
                self._lock.wait(remaining)

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            with self._lock:
                deadline = time.monotonic() + WRITE_EVERY_S
                while not (self._stop or self._flush_requested) and time.monotonic() < deadline:
                    self._lock.wait(deadline - time.monotonic())
                self._flush_requested = False
                if self._stop and (not self._waiting or self._error is not None):
                    return
                batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                insert_ignoring_duplicates(self._collection, batch)
            except PyMongoError as exc:
                self._counters.add("mongo_errors")
                log.warning("could not store %d anomaly documents yet: %s", len(batch), exc)
                with self._lock:
                    self._waiting[:0] = batch  # keep them, in order, for the next attempt
                    self._error = exc
                    self._lock.wait(backoff.next_delay())  # backoff, cut short by flush or close
                continue
            backoff.reset()
            with self._lock:
                self._stored += len(batch)
                self._error = None
                self._lock.notify_all()
