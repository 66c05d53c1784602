"""What the trainer produces: dead letters (topic_dlq), late readings (topic_late), anomaly events
(topic_anomalies and collection_anomalies), alarms grouped into events (collection_events, see
`events`) and per-device statistics (collection_devices).

Kafka sends are asynchronous and kept until acknowledged; anomaly documents go to MongoDB from a
background thread (`anomaly_store`) within about a second. A checkpoint first settles both, and fails
(so commits nothing) until every output it covers is stored. Anomaly documents are keyed by
``f"{device_id}:{ts}"`` (ts in ISO form with microseconds) and carry the event time as ``ts`` (a BSON
date, for queries: milliseconds only) and ``ts_us`` (integer microseconds since the epoch): a replay or
a restart never duplicates them in MongoDB, and readings microseconds apart stay apart. The anomaly
topic is at-least-once: after a restart, events since the last checkpoint are sent again with the same
``event_id``. Dead letters too large to send whole are sent truncated (`flead.bus.dlq`). Event
documents are upserted on their ``_id`` (device and start) by every checkpoint, before it commits:
an open event is rewritten as it grows, and a restart rewrites the same documents.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import numpy as np
from kafka import KafkaProducer
from kafka.errors import InvalidRecordError, MessageSizeTooLargeError, RecordListTooLargeError
from kafka.future import Future
from pymongo import ReplaceOne, UpdateOne
from pymongo.database import Database

from flead.bus.codec import Rejected
from flead.bus.dlq import dead_letter, truncated, value_limit
from flead.config import Settings
from flead.model.events import EventConfig
from services.stream_trainer.anomaly_store import AnomalyStore
from services.stream_trainer.events import DeviceEvents
from services.stream_trainer.fleet import threshold_source
from services.stream_trainer.health import Counters
from services.stream_trainer.normal_acks import recalibrating
from services.stream_trainer.slot import DeviceSlot, ScoredChunk

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEND_ATTEMPTS = 3
# what Kafka refuses for the record itself (retrying it unchanged cannot help)
REFUSED_RECORD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
REFUSED_PREFIX_BYTES = 1024  # a dead letter refused even so is resent with this much of its value


class OutputError(RuntimeError):
    """Outputs could not be delivered: the checkpoint that needs them must not be committed."""


class Outputs:
    def __init__(
        self, settings: Settings, producer: KafkaProducer, db: Database, counters: Counters, trainer_id: str
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.anomalies = db[settings.collection_anomalies]
        self.devices = db[settings.collection_devices]
        self.events = db[settings.collection_events]
        self.event_config = EventConfig(
            settings.events_merge_gap, settings.events_min_duration, settings.events_min_severity
        )
        self._events: dict[str, dict] = {}  # event documents to write at the next checkpoint, by _id
        self.counters = counters
        self.trainer_id = trainer_id
        # (future, (topic, key, value, headers, the Rejected of a side output or None))
        self._in_flight: list[tuple[Future, tuple]] = []
        self._dlq_limit = value_limit(producer)
        self._dlq_prefix = min(settings.max_message_bytes, self._dlq_limit)
        self.anomaly_store = AnomalyStore(self.anomalies, counters)
        # one attempt may take the server selection timeout: leave room for two
        self._flush_timeout_s = max(10.0, 2 * settings.mongo_server_selection_timeout_ms / 1000)

    def close(self) -> None:
        self.anomaly_store.close()

    # ------------------------------------------------------------------------------------- Kafka

    def dead_letters(self, rejected: Iterable[Rejected]) -> None:
        self._side_output(self.settings.topic_dlq, rejected)

    def late_readings(self, late: Iterable[Rejected]) -> None:
        self._side_output(self.settings.topic_late, late)

    def _side_output(self, topic: str, rejected: Iterable[Rejected]) -> None:
        """The original bytes (truncated if too large to send), with the reason and the source in
        headers (`flead.bus.dlq`)."""
        for r in rejected:
            letter = dead_letter(r, self._dlq_limit, self._dlq_prefix)
            if letter.truncated:
                self.counters.add("dlq_truncated")
            self._send((topic, letter.key, letter.value, letter.headers, r))

    def _send(self, message: tuple) -> None:
        topic, key, value, headers, _ = message
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except REFUSED_RECORD as exc:  # refused by the producer itself: settled like a refusal by Kafka
            future = Future().failure(exc)
        self._in_flight.append((future, message))
        if len(self._in_flight) > 50_000:
            self._in_flight = [(f, m) for f, m in self._in_flight if not f.succeeded()]

    def settle_kafka(self, timeout_s: float = 30.0) -> None:
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
                self._send(message)

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

    # ----------------------------------------------------------------------------------- anomalies

    def anomaly_events(self, slot: DeviceSlot, chunk: ScoredChunk) -> None:
        unjudged = int(np.isinf(chunk.threshold).sum())
        self.counters.add("judged", len(chunk.threshold) - unjudged)
        self.counters.add("unjudged", unjudged)
        self.alarm_events(slot, chunk)
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
            self._send((topic, key, json.dumps(event).encode(), [], None))
        self.anomaly_store.add(documents)
        self.counters.add("anomalies", len(index))

    def store_anomalies(self) -> None:
        """Wait until every anomaly document so far is in MongoDB (AnomalyStoreError if not), then
        write the event documents (PyMongoError if that fails: the checkpoint is retried)."""
        self.anomaly_store.flush(self._flush_timeout_s)
        self.store_events()

    # ------------------------------------------------------------------------------------- events

    def alarm_events(self, slot: DeviceSlot, chunk: ScoredChunk) -> None:
        if slot.events is None:
            slot.events = DeviceEvents(self.event_config)
        slot.events.configure(self.event_config)
        for document in slot.events.push(slot, chunk):
            self._events[document["_id"]] = document  # the latest form of an event wins

    def store_events(self) -> None:
        if not self._events:
            return
        now = datetime.now(UTC)
        writes = [
            ReplaceOne({"_id": key}, {**doc, "trainer": self.trainer_id, "updated_at": now}, upsert=True)
            for key, doc in self._events.items()
        ]
        self.events.bulk_write(writes, ordered=False)
        self.counters.add("event_writes", len(writes))
        self.counters.add("events_closed", sum(not doc["open"] for doc in self._events.values()))
        self._events = {}

    # ------------------------------------------------------------------------------ device statistics

    def store_device_stats(self, slots: Iterable[DeviceSlot]) -> None:
        now = datetime.now(UTC)
        writes = [
            UpdateOne(
                {"_id": slot.device_id}, {"$set": device_stats(slot, self.trainer_id, now)}, upsert=True
            )
            for slot in slots
        ]
        if writes:
            self.devices.bulk_write(writes, ordered=False)


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
        "trainer": trainer_id,
        "updated_at": now,
    }
