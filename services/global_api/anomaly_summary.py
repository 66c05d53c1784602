"""The per-device anomaly summary (count, first and last event time, highest score): one aggregation
over the anomaly collection, run by one thread at a time and reused until it is ten times as old as it
took to compute (at least a second, at most ``settings.api_anomaly_summary_max_age_s``): so a small
collection is summarised almost at once, and a large one costs MongoDB at most a tenth of one query's
time. Then the next reader starts a recomputation in the background and is answered with the one it
has (its time is part of every answer built from it), so the cost does not grow with the number of
readers. Only the first readers of a process wait for it (a starting API begins computing it at once).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

MIN_AGE_S = 1.0
AGE_PER_COST = 10  # a summary is kept this many times as long as it took to compute


@dataclass(frozen=True)
class Scope:
    """What the summary knows of some events: how many, and the time range they cover."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def merge(self, other: Scope) -> Scope:
        firsts = [t for t in (self.first, other.first) if t is not None]
        lasts = [t for t in (self.last, other.last) if t is not None]
        return Scope(self.count + other.count, min(firsts) if firsts else None, max(lasts) if lasts else None)


@dataclass(frozen=True)
class DeviceAnomalies:
    scope: Scope
    max_score: float | None = None


@dataclass(frozen=True)
class AnomalySummary:
    devices: dict[str, DeviceAnomalies] = field(default_factory=dict)
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def scope(self, device_id: str | None) -> Scope:
        if device_id is not None:
            found = self.devices.get(device_id)
            return found.scope if found else Scope()
        total = Scope()
        for device in self.devices.values():
            total = total.merge(device.scope)
        return total


def compute_summary(anomalies: Collection) -> AnomalySummary:
    pipeline = [
        {
            "$group": {
                "_id": "$device_id",
                "count": {"$sum": 1},
                "first_ts": {"$min": "$ts"},
                "last_ts": {"$max": "$ts"},
                "max_score": {"$max": "$score"},
            }
        }
    ]
    computed_at = datetime.now(UTC)
    devices = {}
    for doc in anomalies.aggregate(pipeline):
        if doc["_id"] is None:
            continue
        first, last = doc.get("first_ts"), doc.get("last_ts")
        scope = Scope(
            int(doc["count"]),
            first if isinstance(first, datetime) else None,
            last if isinstance(last, datetime) else None,
        )
        score = doc.get("max_score")
        devices[str(doc["_id"])] = DeviceAnomalies(scope, score if isinstance(score, int | float) else None)
    return AnomalySummary(devices, computed_at)


class AnomalySummaries:
    def __init__(self, anomalies: Collection, *, max_age_s: float) -> None:
        self._anomalies = anomalies
        self._max_age_s = max_age_s
        self._current: tuple[AnomalySummary, float, float] | None = None  # and when, and how long
        self._computing = threading.Lock()  # one aggregation at a time
        self._lock = threading.Lock()

    def prime(self) -> None:
        """Start computing the first summary in the background (a starting API), unless one is."""
        if self._current is None and self._computing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="flead-anomaly-summary", daemon=True).start()

    def get(self) -> AnomalySummary:
        with self._lock:
            current = self._current
        if current is None:
            with self._computing:  # the first readers wait for one computation
                with self._lock:
                    current = self._current
                if current is None:
                    current = self._compute()
            return current[0]
        summary, computed, took = current
        max_age = min(self._max_age_s, max(MIN_AGE_S, AGE_PER_COST * took))
        if time.monotonic() - computed > max_age and self._computing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="flead-anomaly-summary", daemon=True).start()
        return summary

    def _compute(self) -> tuple[AnomalySummary, float, float]:
        started = time.monotonic()
        summary = compute_summary(self._anomalies)
        result = (summary, started, time.monotonic() - started)
        with self._lock:
            self._current = result
        return result

    def _refresh(self) -> None:
        try:
            self._compute()
        except PyMongoError as exc:  # readers keep the previous one; the next stale read tries again
            log.warning("anomaly summary not recomputed: %s", exc)
        finally:
            self._computing.release()
