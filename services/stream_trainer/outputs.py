"""Every output of the trainer, each a sink with ``add`` and ``flush``: Kafka (dead letters to
topic_dlq, late readings to topic_late, anomaly events to topic_anomalies), anomaly documents
(collection_anomalies), alarms grouped into events (collection_events, see `events`) and per-device
statistics (collection_devices). A checkpoint flushes every sink first (`Outputs.flush`); a flush
that fails raises, and the checkpoint commits nothing until every output it covers is stored.

Kafka sends are asynchronous and kept until acknowledged; anomaly documents go to MongoDB from a
background thread (`AnomalyStore`) within about a second. Anomaly documents are keyed by
``f"{device_id}:{ts}"`` (ts in ISO form with microseconds) and carry the event time as ``ts`` (a BSON
date, for queries: milliseconds only) and ``ts_us`` (integer microseconds since the epoch): a replay or
a restart never duplicates them in MongoDB, and readings microseconds apart stay apart. The anomaly
topic is at-least-once: after a restart, events since the last checkpoint are sent again with the same
``event_id``. Dead letters too large to send whole are sent truncated (`flead.bus.dlq`). Event
documents are upserted on their ``_id`` (device and start) by every checkpoint, before it commits:
an open event is rewritten as it grows, and a restart rewrites the same documents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from kafka import KafkaProducer
from kafka.errors import InvalidRecordError, MessageSizeTooLargeError, RecordListTooLargeError
from kafka.future import Future
from pymongo import ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from flead.bus.codec import Rejected
from flead.bus.dlq import dead_letter, truncated, value_limit
from flead.config import Settings
from flead.model.events import EventConfig
from flead.schema import EPOCH, SCHEMA_VERSION
from flead.storage.mongo import DUPLICATE_KEY
from services.stream_trainer.backoff import Backoff
from services.stream_trainer.devices import DeviceSlot, ScoredChunk, privacy_stats, threshold_source
from services.stream_trainer.events import DeviceEvents
from services.stream_trainer.health import Counters
from services.stream_trainer.normal_acks import recalibrating

log = logging.getLogger(__name__)

SEND_ATTEMPTS = 3
# what Kafka refuses for the record itself (retrying it unchanged cannot help)
REFUSED_RECORD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
REFUSED_PREFIX_BYTES = 1024  # a dead letter refused even so is resent with this much of its value
ANOMALY_WRITE_EVERY_S = 1.0


class OutputError(RuntimeError):
    """Outputs could not be delivered: the checkpoint that needs them must not be committed."""


class Outputs:
    """The sinks, fed by the consume loop and flushed, in this order, by every checkpoint."""

    def __init__(
        self, settings: Settings, producer: KafkaProducer, db: Database, counters: Counters, trainer_id: str
    ) -> None:
        self.settings, self.counters, self.trainer_id = settings, counters, trainer_id
        self.kafka = KafkaSink(producer, counters, min(settings.max_message_bytes, value_limit(producer)))
        # one attempt may take the server selection timeout: leave room for two
        flush_timeout_s = max(10.0, 2 * settings.mongo_server_selection_timeout_ms / 1000)
        self.anomalies = AnomalyStore(db[settings.collection_anomalies], counters, flush_timeout_s)
        self.events = EventStore(db[settings.collection_events], counters, trainer_id)
        self.device_stats = DeviceStatsStore(db[settings.collection_devices], trainer_id)
        self.event_config = EventConfig(
            settings.events_merge_gap, settings.events_min_duration, settings.events_min_severity
        )

    def flush(self) -> None:
        """Every output so far delivered and stored, or an exception (the checkpoint must not commit)."""
        try:
            self.kafka.flush()
            self.anomalies.flush()
            self.events.flush()
            self.device_stats.flush()
        except BaseException:
            # the checkpoint's next attempt adds the devices still changed then (those of a partition
            # dropped meanwhile are not written)
            self.device_stats.discard()
            raise

    def close(self) -> None:
        self.anomalies.close()

    def dead_letters(self, rejected: Iterable[Rejected]) -> None:
        self.kafka.add_rejected(self.settings.topic_dlq, rejected)

    def late_readings(self, late: Iterable[Rejected]) -> None:
        self.kafka.add_rejected(self.settings.topic_late, late)

    def failed_readings(self, slot: DeviceSlot, rows: np.ndarray, exc: Exception) -> None:
        """Readings a device failed to score, re-encoded as Reading JSON, to the dead-letter topic."""
        stamps = np.datetime_as_string(rows["ts"], unit="us")
        reason = f"processing failed: {type(exc).__name__}: {exc}"
        out = []
        for stamp, offset, values in zip(stamps, rows["offset"], rows["values"], strict=True):
            reading = {
                "schema_version": SCHEMA_VERSION,
                "fleet": self.settings.fleet.ref,
                "device_id": slot.device_id,
                "ts": f"{stamp}Z",
                "values": {
                    c: (None if np.isnan(v) else float(v)) for c, v in zip(slot.columns, values, strict=True)
                },
            }
            out.append(
                Rejected(
                    self.settings.topic_readings,
                    slot.partition,
                    int(offset),
                    slot.device_id.encode(),
                    json.dumps(reading).encode(),
                    reason,
                )
            )
        self.dead_letters(out)

    def anomaly_events(self, slot: DeviceSlot, chunk: ScoredChunk) -> None:
        unjudged = int(np.isinf(chunk.threshold).sum())
        self.counters.add("judged", len(chunk.threshold) - unjudged)
        self.counters.add("unjudged", unjudged)
        self._alarm_events(slot, chunk)
        index = np.flatnonzero(chunk.is_anomaly)
        if not len(index):
            return
        rows = chunk.rows[index]
        stamps = np.datetime_as_string(rows["ts"], unit="us").tolist()
        ts_us = rows["ts"].astype("int64").tolist()
        offsets = rows["offset"].tolist()
        values = rows["values"].tolist()
        scores, thresholds = chunk.score[index].tolist(), chunk.threshold[index].tolist()
        reasons = np.where(chunk.out_of_range[index], "out_of_range", "model").tolist()
        detected_at = datetime.now(UTC)
        detected_text = detected_at.isoformat()
        key, topic, columns = slot.device_id.encode(), self.settings.topic_anomalies, slot.columns
        common = {
            "device_id": slot.device_id,
            "partition": slot.partition,
            "model_version": slot.client.base_version,
            "model_lineage": slot.lineage,
            "trainer": self.trainer_id,
        }
        documents = []
        for k in range(len(index)):
            ts_text = f"{stamps[k]}Z"
            fields = {
                **common,
                "ts_text": ts_text,
                "ts_us": ts_us[k],  # the event time to the microsecond (`ts`, a BSON date, keeps ms)
                "score": scores[k],
                "threshold": thresholds[k],
                "reason": reasons[k],
                "values": dict(zip(columns, (None if math.isnan(v) else v for v in values[k]), strict=True)),
                "offset": offsets[k],
            }
            event_id = f"{slot.device_id}:{ts_text}"
            documents.append(
                {
                    "_id": event_id,
                    **fields,
                    "ts": EPOCH + timedelta(microseconds=ts_us[k]),
                    "detected_at": detected_at,
                }
            )
            event = {"event_id": event_id, **fields, "ts": ts_text, "detected_at": detected_text}
            self.kafka.add((topic, key, json.dumps(event).encode(), [], None))
        self.anomalies.add(documents)
        self.counters.add("anomalies", len(index))

    def _alarm_events(self, slot: DeviceSlot, chunk: ScoredChunk) -> None:
        if slot.events is None:
            slot.events = DeviceEvents(self.event_config)
        slot.events.configure(self.event_config)
        self.events.add(slot.events.push(slot, chunk))


# ------------------------------------------------------------------------------------------ Kafka


class KafkaSink:
    """Every message sent is kept until Kafka acknowledges it; `flush` resends the failed ones."""

    def __init__(self, producer: KafkaProducer, counters: Counters, dlq_prefix_bytes: int) -> None:
        self.producer, self.counters = producer, counters
        # (future, (topic, key, value, headers, the Rejected of a side output or None))
        self._in_flight: list[tuple[Future, tuple]] = []
        self._dlq_limit = value_limit(producer)
        self._dlq_prefix = dlq_prefix_bytes

    def add_rejected(self, topic: str, rejected: Iterable[Rejected]) -> None:
        """A side output: the original bytes (truncated if too large to send), with the reason and
        the source in headers (`flead.bus.dlq`)."""
        for r in rejected:
            letter = dead_letter(r, self._dlq_limit, self._dlq_prefix)
            if letter.truncated:
                self.counters.add("dlq_truncated")
            self.add((topic, letter.key, letter.value, letter.headers, r))

    def add(self, message: tuple) -> None:
        topic, key, value, headers, _ = message
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except REFUSED_RECORD as exc:  # refused by the producer itself: settled like a refusal by Kafka
            future = Future().failure(exc)
        self._in_flight.append((future, message))
        if len(self._in_flight) > 50_000:
            self._in_flight = [(f, m) for f, m in self._in_flight if not f.succeeded()]

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every message sent so far is acknowledged, resending failures; OutputError if
        some still fail. A side output Kafka refuses for itself (e.g. too large) is resent truncated,
        and dropped (logged, counted ``dlq_undeliverable``) if even that is refused: one record never
        blocks the checkpoints."""
        for attempt in range(SEND_ATTEMPTS + 1):
            self.producer.flush(timeout=timeout_s)
            failed = [(f, m) for f, m in self._in_flight if not f.succeeded()]
            if not failed:
                self._in_flight = []
                return
            resend = [m for m in (self._after_failure(f, m) for f, m in failed) if m is not None]
            if not resend:
                self._in_flight = []
                return
            if attempt == SEND_ATTEMPTS:
                raise OutputError(
                    f"{len(resend)} Kafka messages (first to {resend[0][0]}) could not be delivered"
                )
            log.warning(
                "%d Kafka messages not acknowledged (attempt %d); resending", len(resend), attempt + 1
            )
            self._in_flight = []
            for message in resend:
                self.add(message)

    def _after_failure(self, future: Future, message: tuple) -> tuple | None:
        """What to resend for a message that was not acknowledged: itself, a truncated copy of a side
        output Kafka refused for its own sake, or nothing (a truncated copy refused too)."""
        topic, _, value, headers, rejected = message
        refused = future.failed() and isinstance(future.exception, REFUSED_RECORD)
        if not refused or rejected is None:
            return message
        is_truncated = any(name == "flead.truncated" for name, _ in headers)
        if not is_truncated and len(value or b"") <= REFUSED_PREFIX_BYTES:
            return message  # small already: refused with a large neighbour in its batch
        if len(value or b"") > REFUSED_PREFIX_BYTES:
            log.warning(
                "%s: the record of %s offset %d was refused (%s); resending it truncated",
                topic,
                rejected.partition,
                rejected.offset,
                future.exception,
            )
            self.counters.add("dlq_truncated")
            why = f"refused by Kafka: {type(future.exception).__name__}"
            letter = truncated(rejected, REFUSED_PREFIX_BYTES, why)
            return (topic, letter.key, letter.value, letter.headers, rejected)
        self.counters.add("dlq_undeliverable")
        log.error(
            "%s: dropped the record of partition %d offset %d (%s), refused even truncated: %s",
            topic,
            rejected.partition,
            rejected.offset,
            dict(headers).get("flead.error", b"").decode(errors="replace"),
            future.exception,
        )
        return None


# ---------------------------------------------------------------------------------------- MongoDB


class AnomalyStoreError(RuntimeError):
    pass


class AnomalyStore:
    """Anomaly documents to MongoDB from a background thread, so the consume loop never waits for
    them: written about once a second (``insert_many(ordered=False)`` on their natural ``_id``,
    duplicates ignored), retried with backoff while MongoDB is away; `flush` waits until everything
    added so far is stored, or raises: a checkpoint never covers an anomaly that is not in MongoDB."""

    def __init__(self, collection: Collection, counters: Counters, flush_timeout_s: float = 10.0) -> None:
        self._collection = collection
        self._flush_timeout_s = flush_timeout_s
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

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every document added so far is stored; AnomalyStoreError if that does not happen
        within `timeout_s` (MongoDB away): the caller must not checkpoint."""
        deadline = time.monotonic() + (self._flush_timeout_s if timeout_s is None else timeout_s)
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
                deadline = time.monotonic() + ANOMALY_WRITE_EVERY_S
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


class EventStore:
    """Event documents, upserted on their ``_id`` at the next flush (the latest form of an event wins)."""

    def __init__(self, collection: Collection, counters: Counters, trainer_id: str) -> None:
        self._collection, self.counters, self.trainer_id = collection, counters, trainer_id
        self._waiting: dict[str, dict] = {}

    def add(self, documents: Iterable[dict]) -> None:
        for document in documents:
            self._waiting[document["_id"]] = document

    def flush(self) -> None:
        if not self._waiting:
            return
        now = datetime.now(UTC)
        writes = [
            ReplaceOne({"_id": key}, {**doc, "trainer": self.trainer_id, "updated_at": now}, upsert=True)
            for key, doc in self._waiting.items()
        ]
        self._collection.bulk_write(writes, ordered=False)
        self.counters.add("event_writes", len(writes))
        self.counters.add("events_closed", sum(not doc["open"] for doc in self._waiting.values()))
        self._waiting = {}


class DeviceStatsStore:
    """The dashboard's per-device documents, written at the next flush from the devices as they are then."""

    def __init__(self, collection: Collection, trainer_id: str) -> None:
        self._collection, self.trainer_id = collection, trainer_id
        self._waiting: dict[str, DeviceSlot] = {}

    def add(self, slots: Iterable[DeviceSlot]) -> None:
        for slot in slots:
            self._waiting[slot.device_id] = slot

    def flush(self) -> None:
        now = datetime.now(UTC)
        # whole documents (the trainer is their only writer): a replace costs half a `$set` on SecantusDB
        writes = [
            ReplaceOne({"_id": slot.device_id}, device_stats(slot, self.trainer_id, now), upsert=True)
            for slot in self._waiting.values()
        ]
        if writes:
            self._collection.bulk_write(writes, ordered=False)
        self._waiting = {}

    def discard(self) -> None:
        self._waiting = {}


def device_stats(slot: DeviceSlot, trainer_id: str, now: datetime) -> dict:
    """The dashboard's view of a device (absolute values: rewriting them is idempotent)."""
    return {
        "device_id": slot.device_id,
        "partition": slot.partition,
        "readings": slot.readings,
        "buffered": len(slot.pending),
        "anomalies": slot.anomalies,
        # readings judged against a threshold, and those scored before any calibration existed
        "judged": slot.readings - slot.unjudged,
        "unjudged": slot.unjudged,
        "unjudged_reasons": {"no calibration yet": slot.unjudged},
        "threshold_source": threshold_source(slot.client.detector),  # own, fleet or none
        "recalibrating": recalibrating(slot.client.detector),  # after an accepted new normal
        "late": slot.late,
        "last_seen": None
        if slot.last_event_us is None
        else EPOCH + timedelta(microseconds=slot.last_event_us),
        "last_score": slot.last_score,
        "last_threshold": slot.last_threshold,
        "model_version": slot.client.base_version,
        "model_lineage": slot.lineage,
        **privacy_stats(slot.client),
        "trainer": trainer_id,
        "updated_at": now,
    }


# ---------------------------------------------------------------------------- idempotent writes


@contextlib.contextmanager
def duplicates_ignored() -> Iterator[None]:
    """Around an ``ordered=False`` bulk write: a duplicate key leaves that document as it is (already
    written, or guarded against us); any other write error is raised."""
    try:
        yield
    except BulkWriteError as exc:
        if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
            raise


def insert_ignoring_duplicates(collection: Collection, documents: Sequence[dict]) -> None:
    """Insert documents with natural ``_id``s; ones already there are left as they are (a replay or a
    retried write). The fast idempotent path: ``insert_many(ordered=False)``."""
    if documents:
        with duplicates_ignored():
            collection.insert_many(list(documents), ordered=False)
