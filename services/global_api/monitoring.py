"""Read-only views for operators: devices and anomalies, from what the stream trainer writes
(``collection_devices``: per-device statistics such as ``readings``, ``last_seen`` (event time of the
latest reading) and ``updated_at`` (wall clock); ``collection_anomalies``: one event per anomalous
reading with ``device_id``, ``ts``, ``score``, ``threshold``, ...) and the updates the API received."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from services.global_api.anomaly_pages import PageError, PageKey, count_events, read_events
from services.global_api.anomaly_summary import AnomalySummaries
from services.global_api.update_store import UpdateStore

log = logging.getLogger(__name__)

IDLE_AFTER = timedelta(minutes=10)  # a device not heard from for this long (wall clock) is "idle"


def jsonable(value: Any) -> Any:
    """A MongoDB value as JSON: ids as strings, times in ISO 8601 (UTC), non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)  # ObjectId, Decimal128, ...: readable, never a failed response


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class AnomalyFilter:
    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_score: float | None = None

    def query(self) -> dict:
        query: dict[str, Any] = {}
        if self.device_id is not None:
            query["device_id"] = self.device_id
        if self.since is not None or self.until is not None:
            query["ts"] = {}
            if self.since is not None:
                query["ts"]["$gte"] = utc(self.since)
            if self.until is not None:
                query["ts"]["$lt"] = utc(self.until)
        if self.min_score is not None:
            query["score"] = {"$gte": self.min_score}
        return query


ANOMALY_INDEXES = (  # serve every anomaly list query's filter and order (anomaly_pages.ORDER)
    [("ts", DESCENDING), ("_id", DESCENDING)],
    [("device_id", ASCENDING), ("ts", DESCENDING), ("_id", DESCENDING)],
)
MAX_OFFSET = 10_000  # deeper pages continue from a cursor
COUNT_CAP = 1000  # matches counted for a page's total


@dataclass(frozen=True)
class AnomalyPage:
    items: list[dict]
    limit: int
    offset: int
    next: PageKey | None
    total: int
    total_exact: bool

    def to_dict(self) -> dict:
        return {
            "items": self.items,
            "limit": self.limit,
            "offset": self.offset,
            "next": None if self.next is None else self.next.encode(),
            "next_offset": None if self.next is None else self.offset + len(self.items),
            "total": self.total,
            "total_exact": self.total_exact,
        }


class Monitoring:
    def __init__(
        self, devices: Collection, anomalies: Collection, updates: UpdateStore, *, summary_max_age_s: float
    ) -> None:
        self._devices = devices
        self._anomalies = anomalies
        self._updates = updates
        self.summaries = AnomalySummaries(anomalies, max_age_s=summary_max_age_s)

    def ensure_indexes(self) -> None:
        """The trainer owns the collection: if it made an equivalent index under another name, that
        one serves."""
        for keys in ANOMALY_INDEXES:
            try:
                self._anomalies.create_index(keys)
            except OperationFailure as exc:
                log.info("anomaly index %s not created: %s", keys, exc)

    def anomalies(
        self,
        where: AnomalyFilter,
        *,
        limit: int,
        offset: int = 0,
        after: PageKey | None = None,
        count: bool = True,
    ) -> AnomalyPage:
        """A page of anomalies, newest first (after ``after``, skipping ``offset`` <= MAX_OFFSET), and
        (``count``) how many match, counted up to COUNT_CAP."""
        if offset > MAX_OFFSET:
            raise PageError(
                f"offset {offset} is over {MAX_OFFSET}: page on with `after` (the previous page's `next`)"
            )
        query = where.query()
        scope = self.summaries.get().scope(where.device_id)
        walk = read_events(self._anomalies, query, scope, after=after, want=offset + limit + 1)
        page = walk.docs[offset : offset + limit]
        following = PageKey.of(page[-1]) if len(walk.docs) > offset + limit else walk.resume
        total, exact = count_events(self._anomalies, query, scope, cap=COUNT_CAP) if count else (0, False)
        return AnomalyPage([jsonable(doc) for doc in page], limit, offset, following, total, exact)

    def devices(self, *, now: datetime | None = None) -> tuple[list[dict], datetime]:
        """Every device known from the trainer's statistics, its updates or its anomalies; and the time
        of the anomaly summary the anomaly columns come from."""
        now = now or datetime.now(UTC)
        stats = {}
        for doc in self._devices.find({}):
            device_id = doc.get("device_id", doc["_id"])
            stats[str(device_id)] = {k: v for k, v in doc.items() if k != "_id"}
        updates = self._updates.per_device()
        summary = self.summaries.get()
        rows = []
        for device_id in sorted(set(stats) | set(updates) | set(summary.devices)):
            trainer = stats.get(device_id, {})
            received = updates.get(device_id, {})
            flagged = summary.devices.get(device_id)
            # Wall-clock contact: the trainer's last write of the device's statistics, its last update.
            contacts = [
                utc(value)
                for value in (trainer.get("updated_at"), received.get("last_update_at"))
                if isinstance(value, datetime)
            ]
            last_contact = max(contacts) if contacts else None
            rows.append(
                jsonable(
                    {
                        "device_id": device_id,
                        "status": device_status(last_contact, now),
                        "last_contact": last_contact,
                        "last_seen": trainer.get("last_seen"),  # event time of its latest reading
                        "readings": trainer.get("readings"),
                        "n_samples": received.get("n_samples", 0),
                        "n_updates": received.get("n_updates", 0),
                        "n_refused_updates": received.get("n_refused", 0),
                        "last_update_at": received.get("last_update_at"),
                        "anomalies": {
                            "count": flagged.scope.count if flagged else 0,
                            "last_ts": flagged.scope.last if flagged else None,
                            "max_score": flagged.max_score if flagged else None,
                        },
                        "stats": trainer,
                    }
                )
            )
        return rows, summary.computed_at


def device_status(last_contact: datetime | None, now: datetime) -> str:
    if last_contact is None:
        return "unknown"
    return "active" if now - last_contact <= IDLE_AFTER else "idle"
