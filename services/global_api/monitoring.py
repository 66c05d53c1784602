"""Read-only views for operators: devices and anomalies, from what the stream trainer writes
(``collection_devices``: per-device statistics such as ``readings``, ``last_seen`` (event time of the
latest reading) and ``updated_at`` (wall clock); ``collection_anomalies``: one event per anomalous
reading with ``device_id``, ``ts``, ``score``, ``threshold``, ...) and the updates the API received."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from flead.privacy.config import PrivacyConfig
from services.global_api.anomaly_pages import EPOCH, PageKey, read_events
from services.global_api.anomaly_summary import AnomalySummaries
from services.global_api.pages import KeyCursor, Page
from services.global_api.privacy_store import PrivacyStore, device_privacy
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


def utc_text(value: datetime) -> str:
    """A time as the API writes every time: ISO 8601 in UTC to the microsecond,
    ``2004-03-01T12:30:00.000000Z`` (one length, so the text sorts as the time; the trainer's form)."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# A time in a response: validated as a datetime, answered as `utc_text`.
UtcTime = Annotated[
    datetime,
    PlainSerializer(utc_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2004-03-01T12:30:00.000000Z"]}),
]


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


class Anomaly(BaseModel):
    """One anomalous reading, as the stream trainer stored it."""

    id: str = Field(description="`{device_id}:{ts}`: the reading's natural key (the Kafka event's event_id).")
    device_id: str
    ts: UtcTime = Field(description="Event time of the reading (UTC, to the microsecond).")
    score: float | None = None
    threshold: float | None = Field(None, description="The threshold it was judged against (null: none).")
    reason: str | None = Field(None, description="`model` or `out_of_range` (a physical limit).")
    values: dict[str, float | None] | None = Field(None, description="The reading's values by feature.")
    model_version: int | None = Field(None, description="The global version its device's model came from.")
    model_lineage: str | None = None
    partition: int | None = None
    offset: int | None = Field(None, description="Its record's offset in the partition.")
    trainer: str | None = None
    detected_at: UtcTime | None = Field(None, description="Wall-clock time the trainer flagged it (UTC).")


class AnomalyPage(Page[Anomaly]):
    """A page of anomalous readings, newest first."""


def anomaly_item(doc: dict) -> Anomaly:
    """The item of an anomaly document: no storage fields (``_id``, ``ts_text``, ``ts_us``), and ``ts``
    to the microsecond from ``ts_us`` (a BSON date keeps milliseconds)."""
    fields = {k: v for k, v in doc.items() if k in Anomaly.model_fields and k != "id"}
    fields["ts"] = exact_time(doc, "ts", "ts_us")
    return Anomaly(id=str(doc["_id"]), **jsonable(fields))


def exact_time(doc: dict, name: str, micros: str) -> Any:
    """``doc[name]`` to the microsecond from ``doc[micros]`` (epoch microseconds) when that is there: a
    BSON date keeps milliseconds."""
    value = doc.get(micros)
    if isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            return EPOCH + timedelta(microseconds=value)
    return doc.get(name)


class DeviceAnomalies(BaseModel):
    count: int = Field(description="Anomalous readings stored (as of the page's `anomalies_as_of`).")
    last_ts: UtcTime | None = Field(None, description="Event time of the latest one.")
    max_score: float | None = None


class DeviceStats(BaseModel):
    """The stream trainer's statistics of the device, as it last wrote them (other fields it writes
    are passed on as they are)."""

    model_config = ConfigDict(extra="allow")

    partition: int | None = None
    readings: int | None = Field(None, description="Readings scored.")
    buffered: int | None = None
    anomalies: int | None = None
    judged: int | None = Field(None, description="Readings judged against a threshold.")
    unjudged: int | None = Field(None, description="Readings scored before any calibration existed.")
    unjudged_reasons: dict[str, int] | None = None
    threshold_source: str | None = Field(None, description="`own`, `fleet` or `none`.")
    recalibrating: bool | None = Field(None, description="After an accepted new normal, until refitted.")
    late: int | None = None
    last_seen: UtcTime | None = None
    last_score: float | None = None
    last_threshold: float | None = None
    model_version: int | None = None
    model_lineage: str | None = None
    trainer: str | None = None
    updated_at: UtcTime | None = Field(None, description="Wall-clock time of the trainer's last write.")


class DevicePrivacy(BaseModel):
    """The device's differential privacy spent (docs/privacy.md)."""

    mode: Literal["off", "local", "central"] = Field(description="The deployment's DP mode.")
    epsilon: float | None = Field(
        description="Epsilon of everything the device released, at `delta` (null: DP is off, no bound)."
    )
    delta: float | None = None
    releases: int = Field(description="Gaussian releases the accountant counted for it.")
    budget: float | None = Field(None, description="The epsilon budget (null: none).")
    budget_exhausted: bool = Field(
        description="One more release at the deployment's noise multiplier would pass the budget: its "
        "updates are refused (it keeps detecting with its personal model)."
    )


class Device(BaseModel):
    device_id: str
    status: Literal["active", "idle", "unknown"] = Field(
        description="`active`: heard from (trainer or update) in the last 10 minutes; else `idle`."
    )
    last_contact: UtcTime | None = Field(None, description="Wall-clock time it was last heard from.")
    last_seen: UtcTime | None = Field(None, description="Event time of its latest reading.")
    readings: int | None = None
    n_samples: int = Field(description="Samples its updates federated.")
    n_updates: int
    n_refused_updates: int
    last_update_at: UtcTime | None = None
    anomalies: DeviceAnomalies
    privacy: DevicePrivacy
    stats: DeviceStats


class DevicePage(Page[Device]):
    """A page of devices, by device id."""

    anomalies_as_of: UtcTime = Field(description="Time of the anomaly summary the counts come from.")


DEVICE_CURSOR = KeyCursor("device", str)


class Monitoring:
    def __init__(
        self,
        devices: Collection,
        anomalies: Collection,
        updates: UpdateStore,
        *,
        summary_max_age_s: float,
        privacy: PrivacyStore,
        privacy_config: PrivacyConfig,
    ) -> None:
        self._devices = devices
        self._anomalies = anomalies
        self._updates = updates
        self._privacy = privacy
        self._privacy_config = privacy_config
        self.summaries = AnomalySummaries(anomalies, max_age_s=summary_max_age_s)

    def ensure_indexes(self) -> None:
        """The trainer owns the collection: if it made an equivalent index under another name, that
        one serves."""
        for keys in ANOMALY_INDEXES:
            try:
                self._anomalies.create_index(keys)
            except OperationFailure as exc:
                log.info("anomaly index %s not created: %s", keys, exc)

    def anomalies(self, where: AnomalyFilter, *, limit: int, after: PageKey | None = None) -> AnomalyPage:
        """A page of anomalies, newest first, after ``after``."""
        scope = self.summaries.get().scope(where.device_id)
        walk = read_events(self._anomalies, where.query(), scope, after=after, want=limit + 1)
        page = walk.docs[:limit]
        following = PageKey.of(page[-1]) if len(walk.docs) > limit else walk.resume
        return AnomalyPage(
            items=[anomaly_item(doc) for doc in page],
            limit=limit,
            next=None if following is None else following.encode(),
        )

    def device_page(self, *, limit: int, after: str | None = None) -> DevicePage:
        """A page of `devices` by device id, after the device ``after``."""
        rows, anomalies_as_of = self.devices()
        rest = [row for row in rows if after is None or row["device_id"] > after]
        page = rest[:limit]
        return DevicePage(
            items=[Device.model_validate(row) for row in page],
            limit=limit,
            next=DEVICE_CURSOR.encode(page[-1]["device_id"]) if len(rest) > limit else None,
            anomalies_as_of=anomalies_as_of,
        )

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
        spent = self._privacy.devices(self._privacy_config.delta)
        rows = []
        for device_id in sorted(set(stats) | set(updates) | set(summary.devices) | set(spent)):
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
                        "privacy": device_privacy(spent.get(device_id), self._privacy_config),
                        "stats": trainer,
                    }
                )
            )
        return rows, summary.computed_at


def device_status(last_contact: datetime | None, now: datetime) -> str:
    if last_contact is None:
        return "unknown"
    return "active" if now - last_contact <= IDLE_AFTER else "idle"
