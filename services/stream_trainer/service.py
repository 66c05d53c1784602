"""The stream trainer process: consume readings in micro-batches, keep per-device state, checkpoint.

The consume loop, in one thread: poll up to ``trainer_max_poll_records`` records -> `intake.take_in`
(validate, split late readings, group by device) -> each device (`devices`) buffers its readings and
scores whole chunks in one detector call -> the sinks of `outputs` -> every
``trainer_checkpoint_records`` records or ``trainer_checkpoint_seconds``, a checkpoint
(`StreamTrainer._checkpoint_once`): sinks flushed, device states and offsets to MongoDB
(`checkpoints`), *then* the offsets committed to Kafka. Assignment changes arrive through
`rebalance.ThreadedRebalanceListener` while the loop waits in ``poll()``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

import psutil
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from pymongo.errors import PyMongoError

from flead.bus.clients import make_consumer, make_producer
from flead.bus.lag import log_bounds
from flead.bus.topics import ensure_topics, output_topics, topic_id
from flead.config import Settings
from flead.federated.cohort import TrainingCohort
from flead.model.config import model_for_fleet
from flead.storage.mongo import get_database, make_mongo_client
from services.stream_trainer.backoff import Backoff
from services.stream_trainer.checkpoints import CheckpointStore, OwnedPartition, PartitionRecord, stale_reason
from services.stream_trainer.devices import (
    DeviceSlot,
    Federation,
    FleetCalibration,
    privacy_summary,
    threshold_sources,
)
from services.stream_trainer.exchange import InProcessExchange, ModelExchange
from services.stream_trainer.exchange_http import HttpExchange
from services.stream_trainer.health import Counters, HealthServer, Heartbeat
from services.stream_trainer.intake import Watermarks, take_in
from services.stream_trainer.normal_acks import NormalAcks
from services.stream_trainer.options import TrainerOptions
from services.stream_trainer.outputs import AnomalyStoreError, OutputError, Outputs
from services.stream_trainer.rebalance import RebalanceHandler, ThreadedRebalanceListener
from services.stream_trainer.state_codec import SharedWeights

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOT_CHECKPOINTED = 3  # stopped, but the final checkpoint could not be written
IDLE_CHECK_S = 0.5
SNAPSHOT_S = 1.0
UNSENT_FLUSH_S = 2.0
CAUGHT_UP_CHECKPOINT_S = 1.0  # at most this often when caught up
TOPIC_CHECK_S = 10.0  # how often a running trainer checks that its topic was not recreated
NORMAL_ACKS_S = 1.0  # how often it looks for operators' new-normal acknowledgements


class StreamTrainer(RebalanceHandler):
    def __init__(
        self, settings: Settings, options: TrainerOptions, exchange: ModelExchange | None = None
    ) -> None:
        if options.model is None:
            options = replace(options, model=model_for_fleet(settings.fleet))
        unknown = [c for c in options.model.columns if c not in settings.fleet.columns]
        if unknown:
            raise ValueError(
                f"model reads {unknown}, which readings of the fleet schema {settings.fleet.ref} "
                "do not carry "
                f"(they carry {list(settings.fleet.columns)})"
            )
        self.settings, self.options = settings, options
        self.counters = Counters()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.trainer_id = f"{options.name}:{self.host}:{self.pid}"
        self.stop_requested = threading.Event()
        self._retry_wait = threading.Event()  # never set: an interruptible sleep between retries
        self.owned: dict[int, OwnedPartition] = {}
        self._parked: dict[int, OwnedPartition] = {}  # checkpointed at revocation, reused if re-assigned
        self.watermarks = Watermarks(settings.trainer_allowed_lateness_s, settings.trainer_max_future_s)
        self.exchange = exchange
        self.status = "starting"
        self.started_at = datetime.now(UTC)
        self.last_checkpoint_at: datetime | None = None
        self.first_record_at: datetime | None = None
        self.mongo_ok = True
        self._final_checkpoint_done = False
        self._records_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_idle_check = 0.0
        self._last_snapshot = 0.0
        self._last_topic_check = time.monotonic()
        self._last_acks_check = 0.0
        self._lag: dict[int, int | None] = {}
        self._view: dict = {
            "partitions": [],
            "devices": 0,
            "buffered": 0,
            "lag": {},
            "lag_total": None,
            "offsets": {},
            "checkpointed_offsets": {},
            "thresholds": {"own": 0, "fleet": 0, "none": 0},
            "fleet_calibration": {},
            "training_cohort": {},
            "privacy": {"mode": settings.dp_mode},
        }
        self._persisted_global: int | None = None
        self._process = psutil.Process()
        self.resets: list[dict] = []  # checkpoints found stale (a recreated topic), newest last
        # MongoDB and the health endpoint: the client connects in the background, `run` starts the threads
        self.mongo = make_mongo_client(settings)
        self.db = db = get_database(self.mongo, settings)
        owner = {"trainer": self.trainer_id, "host": self.host, "pid": self.pid}
        self.shared = SharedWeights()
        self.store = CheckpointStore(db, settings, owner, self.shared)
        self.normal_acks = NormalAcks(db[settings.collection_normal_acks], self.trainer_id)
        self.health = HealthServer(settings.trainer_health_port, self.health_status)
        self.heartbeat = Heartbeat(
            db, settings.collection_services, self.trainer_id, self.health_status, options.heartbeat_s
        )
        # Kafka and the federation: opened by `run` once MongoDB, the topics and the exchange are ready
        self.federation: Federation | None = None
        self.producer: KafkaProducer | None = None
        self.outputs: Outputs | None = None
        self.consumer: KafkaConsumer | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def request_stop(self, *_: object) -> None:
        if not self.stop_requested.is_set():
            log.info("stop requested: finishing the current batch, then a final checkpoint")
        self.stop_requested.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        settings, options = self.settings, self.options
        self.health.start()
        self.heartbeat.start()
        log.info("%s: /health on port %d", self.trainer_id, self.health.port)
        try:
            self._retry("create indexes", self.store.ensure_indexes)
            ensure_topics(settings, output_topics(settings))
            if self.exchange is None:
                self.exchange = self._open_exchange()
            if self.exchange is None:  # stopped while waiting for the global model
                return EXIT_OK
            self.federation = Federation(settings, options, self.exchange, self.counters)
            # kafka-python checksums what it sends in pure Python: gzip leaves fewer bytes to checksum,
            # and a longer linger fewer requests (a checkpoint flushes whatever waits)
            self.producer = make_producer(
                settings, compression_type="gzip", batch_size=256 * 1024, linger_ms=50
            )
            self.outputs = Outputs(settings, self.producer, self.db, self.counters, self.trainer_id)
            self.consumer = make_consumer(
                settings, group_id=settings.consumer_group, max_poll_records=settings.trainer_max_poll_records
            )
            self.consumer.subscribe([settings.topic_readings], listener=ThreadedRebalanceListener(self))
            self.status = "running"
            code = self._consume()
        finally:
            self.status = "stopping"
            self._close()
            self.heartbeat.stop(status="stopped", healthy=False)
            self.health.stop()
            self.mongo.close()
        return code

    def _open_exchange(self) -> ModelExchange | None:
        settings, options = self.settings, self.options
        if settings.trainer_exchange == "http":
            exchange = HttpExchange(settings, options)
            return exchange if exchange.open(self.stop_requested.is_set) else None
        local = InProcessExchange(settings, options.model, seed=options.seed)
        restored = self._retry("load the global model", lambda: self.store.load_global(local.lineage))
        if restored is not None:
            local = InProcessExchange(settings, options.model, seed=options.seed, initial=restored)
            log.info("local exchange continues from global version %d", restored.version)
        self._persisted_global = restored.version if restored is not None else None
        return local

    def _close(self) -> None:
        self._final_checkpoint_done = True
        if self.consumer is not None:
            try:
                self.consumer.close()
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
        if self.producer is not None:
            self.producer.close(timeout=10)
        if self.outputs is not None:
            self.outputs.close()
        if self.exchange is not None:
            self.exchange.close()

    # ---------------------------------------------------------------------------------- consume loop

    def _consume(self) -> int:
        backoff = Backoff(0.5, 10.0)
        while not self.stop_requested.is_set():
            try:
                batch = self.consumer.poll(timeout_ms=self.options.poll_timeout_ms)
            except KafkaError as exc:
                log.warning("poll failed: %s", exc)
                self._retry_wait.wait(backoff.next_delay())
                continue
            backoff.reset()
            if batch:
                self._handle(batch)
            self._housekeeping()
            if self._checkpoint_due():
                self.checkpoint(list(self.owned.values()))
        self.status = "stopping"
        ok = self.checkpoint(list(self.owned.values()), grace_s=self.options.stop_grace_s)
        self._final_checkpoint_done = True
        if not ok:
            log.error("stopping without a final checkpoint: the next owner resumes from the last one")
        return EXIT_OK if ok else EXIT_NOT_CHECKPOINTED

    def _handle(self, batch: dict) -> None:
        intake = take_in(
            batch,
            max_bytes=self.settings.max_message_bytes,
            watermarks=self.watermarks,
            columns=self.federation.columns,
            fleet=self.settings.fleet,
        )
        self.counters.add("records_in", intake.records)
        if self.first_record_at is None:
            self.first_record_at = datetime.now(UTC)
        self.counters.add("dlq", len(intake.invalid))
        self.counters.add("late", len(intake.late))
        self.counters.add("valid", intake.records - len(intake.invalid))
        self.outputs.dead_letters(intake.invalid)
        self.outputs.late_readings(intake.late)
        self._records_since_checkpoint += intake.records
        for number, offset in intake.next_offsets.items():
            part = self.owned.get(number)
            if part is not None:
                part.offset = offset
        for number, device_id, count in intake.late_by_device:
            part = self.owned.get(number)
            if part is not None:
                self._slot(part, device_id).late += count
                part.dirty.add(device_id)
        received: dict[int, list[DeviceSlot]] = defaultdict(list)
        for run in intake.runs:
            part = self.owned.get(run.partition)
            if part is None:  # not (or no longer) ours: the owner reads it from its checkpoint
                continue
            slot = self._slot(part, run.device_id)
            slot.receive(run.rows, run.max_event_us)
            part.received.add(run.device_id)  # its state changes when a whole chunk is scored
            received[run.partition].append(slot)
        for number, slots in received.items():  # whole chunks, in the order `FleetCalibration.schedule` needs
            for slot, n in self._fleet(self.owned[number]).schedule(slots):
                self._score(slot, n)

    def _fleet(self, part: OwnedPartition) -> FleetCalibration:
        if part.fleet is None:
            part.fleet = FleetCalibration(self.options.train, self.settings.trainer_fleet_warmup)
        return part.fleet

    def _cohort(self, part: OwnedPartition) -> TrainingCohort:
        if part.cohort is None:
            part.cohort = self.federation.new_cohort()
        return part.cohort

    def _slot(self, part: OwnedPartition, device_id: str) -> DeviceSlot:
        slot = part.slots.get(device_id)
        if slot is None:
            slot = part.slots[device_id] = self.federation.new_slot(device_id, part.number)
            part.dirty.add(device_id)  # its first state document: its buffered readings refer to it
        return slot

    def _score(self, slot: DeviceSlot, n: int) -> None:
        rows = slot.pending.take(n)
        part = self.owned.get(slot.partition)
        if part is not None:
            part.dirty.add(slot.device_id)
        cohort = self.federation.new_cohort() if part is None else self._cohort(part)
        self.federation.before_scoring(slot, cohort)
        try:
            chunk = slot.score(
                rows, None if part is None else self._fleet(part), self.settings.fleet.valid_ranges
            )
        except Exception as exc:  # one device's failure must never stop the service
            self.counters.add("errors")
            log.exception("device %s: scoring %d readings failed; dead-lettered", slot.device_id, n)
            self.outputs.failed_readings(slot, rows, exc)
            return
        self.counters.add("scored", n)
        self.outputs.anomaly_events(slot, chunk)
        self.federation.after_scoring(slot, chunk, cohort)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_idle_check >= IDLE_CHECK_S:
            self._last_idle_check = now
            self._refresh_lag()
            self._flush_idle(now)
        if now - self._last_snapshot >= SNAPSHOT_S:
            self._last_snapshot = now
            self._refresh_view()
        if now - self._last_topic_check >= TOPIC_CHECK_S:
            self._last_topic_check = now
            self._check_topic()
        if now - self._last_acks_check >= NORMAL_ACKS_S:
            self._last_acks_check = now
            self.counters.add("normal_acks_applied", self.normal_acks.apply(self.owned))

    def _check_topic(self) -> None:
        """A topic deleted and created again while we read it (no rebalance need follow): reset every
        owned partition as an assignment would (`partitions_assigned`)."""
        known = self.store.topic_id
        try:
            current = topic_id(self.settings, self.settings.topic_readings)
        except KafkaError as exc:
            log.warning("could not look up topic %s: %s", self.settings.topic_readings, exc)
            return
        if known is None or current is None or current == known:
            return
        _, bounds = self._topic_log()
        reason = f"the topic was recreated while it was read (topic id {current}, before {known})"
        for number, part in list(self.owned.items()):
            state_ids = tuple(s.state_id for s in part.slots.values() if s.state_id is not None)
            record = PartitionRecord(number, part.epoch, part.gen, part.committed_offset, None, state_ids)
            record = self._reset(record, bounds.get(number), reason)
            try:
                self.store.remove_orphans(record)
            except PyMongoError as exc:
                log.warning("could not remove unreferenced device states: %s", exc)
            self.watermarks.drop(number)
            self.owned[number] = OwnedPartition(
                number, record.epoch, record.gen, record.offset, record.offset
            )
            tp = TopicPartition(self.settings.topic_readings, number)
            if record.offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, record.offset)

    def _refresh_lag(self) -> None:
        lag = {}
        for number, part in list(self.owned.items()):
            try:
                high = self.consumer.highwater(TopicPartition(self.settings.topic_readings, number))
            except (KafkaError, AssertionError):
                high = None
            if high is None:
                lag[number] = None
            else:
                lag[number] = max(0, high - (part.offset or 0))
        self._lag = lag

    def _flush_idle(self, now: float) -> None:
        """Score readings short of a whole chunk once their partition is caught up and they have
        waited `flush_idle_s` (a backlog is always processed in whole chunks)."""
        for number, part in list(self.owned.items()):
            if self._lag.get(number) != 0:
                continue
            for slot in part.slots.values():
                waiting = len(slot.pending)
                if (
                    waiting
                    and slot.pending.since is not None
                    and now - slot.pending.since >= self.options.flush_idle_s
                ):
                    self._score(slot, waiting)

    def _refresh_view(self) -> None:
        parts = list(self.owned.values())
        lag = dict(self._lag)
        known = [v for v in lag.values() if v is not None]
        self._view = {
            "partitions": sorted(p.number for p in parts),
            "devices": sum(len(p.slots) for p in parts),
            "buffered": sum(len(s.pending) for p in parts for s in p.slots.values()),
            "lag": {str(k): v for k, v in sorted(lag.items())},
            "lag_total": sum(known) if known else None,
            "offsets": {str(p.number): p.offset for p in parts},
            "checkpointed_offsets": {str(p.number): p.committed_offset for p in parts},
            "thresholds": threshold_sources(s for p in parts for s in p.slots.values()),
            "privacy": privacy_summary((s for p in parts for s in p.slots.values()), self.federation.privacy),
            "fleet_calibration": {str(p.number): self._fleet(p).summary() for p in parts},
            "training_cohort": cohort_summary(parts, self.federation.cohort_size),
        }

    # ---------------------------------------------------------------------------------- checkpoints

    def _checkpoint_due(self) -> bool:
        """Every `trainer_checkpoint_records` records or `trainer_checkpoint_seconds` seconds, and as soon
        as a backlog is drained (every owned partition caught up), if anything changed."""
        if self._records_since_checkpoint >= self.settings.trainer_checkpoint_records:
            return True
        elapsed = time.monotonic() - self._last_checkpoint
        if elapsed < min(CAUGHT_UP_CHECKPOINT_S, self.settings.trainer_checkpoint_seconds):
            return False
        if not any(p.changed() for p in self.owned.values()):
            return False
        caught_up = bool(self._lag) and all(lag == 0 for lag in self._lag.values())
        return caught_up or elapsed >= self.settings.trainer_checkpoint_seconds

    def checkpoint(self, parts: list[OwnedPartition], grace_s: float | None = None) -> bool:
        """Checkpoint, retrying with backoff: until it succeeds, or for `grace_s` (None: until a stop is
        requested, then for the stop grace). False when it gave up: nothing was committed."""
        deadline = None if grace_s is None else time.monotonic() + grace_s
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                self._checkpoint_once(parts)
                self.mongo_ok = True
                return True
            except (PyMongoError, OutputError, AnomalyStoreError, KafkaError) as exc:
                self.counters.add("checkpoint_failures")
                if isinstance(exc, PyMongoError | AnomalyStoreError):
                    self.mongo_ok = False
                    self.counters.add("mongo_errors")
                if deadline is None and self.stop_requested.is_set():
                    deadline = time.monotonic() + self.options.stop_grace_s
                if deadline is not None and time.monotonic() >= deadline:
                    log.error("checkpoint failed, giving up (nothing committed): %s", exc)
                    return False
                delay = backoff.next_delay()
                log.warning("checkpoint failed (nothing committed), retrying in %.1f s: %s", delay, exc)
                self._retry_wait.wait(delay)

    def _checkpoint_once(self, parts: list[OwnedPartition]) -> None:
        """One checkpoint of the partitions that changed. A step that fails raises: the steps after it
        do not run, nothing is committed, and the next attempt starts again at step 1.

        1. flush every sink: Kafka outputs acknowledged, anomaly, event and device documents stored;
        2. save the device states, watermarks and offsets to MongoDB (the source of truth; a partition
           another member claimed meanwhile is refused, and its state here dropped);
        3. commit the saved offsets to Kafka (for lag monitoring only: a failure is logged);
        4. what follows a stored checkpoint: acknowledged new normals marked applied, unused global
           weights forgotten, the in-process exchange's global version kept.
        """
        started = time.perf_counter()
        parts = [p for p in parts if self.owned.get(p.number) is p and p.changed()]
        self.outputs.device_stats.add(p.slots[d] for p in parts for d in p.dirty | p.received)
        self.outputs.flush()  # 1.
        if parts:
            fenced = self.store.save(parts, self.watermarks.max_event_us, self._unsent_by_device())  # 2.
            self._commit([p for p in parts if p.number not in fenced])  # 3.
            for number in fenced:
                log.warning("partition %d belongs to another member now: its state here is dropped", number)
                self.counters.add("fenced")
                self._drop(number)
            self.normal_acks.checkpointed((p.number for p in parts if p.number not in fenced), self.owned)
            # forget the global weights no device holds any more (every adopted version stays known
            # otherwise: memory growing with the versions)
            self.shared.retain({id(s.client.adopted) for p in self.owned.values() for s in p.slots.values()})
        self._save_global()  # 4.
        self.store.cost.checkpointed(time.perf_counter() - started)
        self.counters.add("checkpoints")
        self._records_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.last_checkpoint_at = datetime.now(UTC)

    def _unsent_by_device(self) -> dict[str, list]:
        self.exchange.flush(UNSENT_FLUSH_S)
        unsent = defaultdict(list)
        for update in self.exchange.unsent():
            unsent[update.device_id].append(update)
        if unsent:  # their devices' documents carry them: make sure those are written
            for part in self.owned.values():
                part.dirty.update(d for d in unsent if d in part.slots)
        return unsent

    def _commit(self, parts: list[OwnedPartition]) -> None:
        offsets = {
            TopicPartition(self.settings.topic_readings, p.number): OffsetAndMetadata(p.offset, "", -1)
            for p in parts
            if p.offset is not None
        }
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # MongoDB holds the truth; the Kafka commit serves lag monitoring
            log.warning("checkpoint stored, but the Kafka offset commit failed: %s", exc)

    def _save_global(self) -> None:
        if not isinstance(self.exchange, InProcessExchange):
            return
        state = self.exchange.buffer.state
        if state.version != self._persisted_global:
            self.store.save_global(state, self.exchange.model_config, self.exchange.lineage)
            self._persisted_global = state.version

    def _drop(self, number: int) -> None:
        self.owned.pop(number, None)
        self._parked.pop(number, None)
        self.watermarks.drop(number)

    # ------------------------------------------------------------------------------------ rebalance

    def partitions_revoked(self, partitions: set) -> None:
        parts = [self.owned[tp.partition] for tp in partitions if tp.partition in self.owned]
        if not parts:
            return
        ok = self._final_checkpoint_done or self.checkpoint(parts, grace_s=self.options.revoke_grace_s)
        for part in parts:
            self._drop(part.number)
            if ok and not self._final_checkpoint_done:
                self._parked[part.number] = part
        log.info(
            "partitions %s revoked (%s)",
            sorted(p.number for p in parts),
            "checkpointed" if ok else "NOT checkpointed",
        )

    def partitions_lost(self, partitions: set) -> None:
        for tp in partitions:
            self._drop(tp.partition)
        log.warning(
            "partitions %s lost (evicted from the group): state dropped uncommitted",
            sorted(tp.partition for tp in partitions),
        )

    def partitions_assigned(self, partitions: set) -> None:
        current_id, bounds = self._topic_log()
        for tp in sorted(partitions):
            if self.stop_requested.is_set():
                return
            record = self._retry(
                f"claim partition {tp.partition}", lambda tp=tp: self.store.claim(tp.partition)
            )
            reason = stale_reason(record, current_id, bounds.get(tp.partition))
            if reason is not None:
                record = self._reset(record, bounds.get(tp.partition), reason)
            parked = self._parked.pop(tp.partition, None)
            kept = (
                parked is not None and parked.gen == record.gen and parked.committed_offset == record.offset
            )
            if kept:
                slots, unsent = parked.slots, []
            else:
                slots, unsent = self._retry(
                    f"restore partition {tp.partition}", lambda record=record: self.store.load_slots(record)
                )
                try:
                    self.store.remove_orphans(record)
                except PyMongoError as exc:
                    log.warning("could not remove unreferenced device states: %s", exc)
            for update in unsent:
                self.exchange.push(update)
            part = OwnedPartition(
                number=tp.partition,
                epoch=record.epoch,
                gen=record.gen,
                committed_offset=record.offset,
                offset=record.offset,
                slots=slots,
                buffer_ids=record.buffer_ids,
                cohort=parked.cohort if kept else self.federation.new_cohort(record.cohort, tp.partition),
                fleet=parked.fleet
                if kept
                else FleetCalibration.restore(
                    record.fleet, self.options.train, self.settings.trainer_fleet_warmup, tp.partition
                ),
            )
            self.watermarks.restore(tp.partition, record.max_event_us)
            if record.offset is not None:
                self.consumer.seek(tp, record.offset)
            elif reason is not None:  # reset, the first offset unknown
                self.consumer.seek_to_beginning(tp)
            self.owned[tp.partition] = part
            log.info(
                "partition %d assigned: epoch %d, offset %s, %d devices %s",
                tp.partition,
                record.epoch,
                record.offset,
                len(slots),
                "kept from before the rebalance" if kept else "restored from the checkpoint",
            )
        self._parked.clear()

    def _topic_log(self) -> tuple[str | None, dict[int, tuple[int, int]]]:
        """The readings topic's id and its partitions' (first, next) offsets: what tells whether a
        checkpoint belongs to the topic as it is now. Unknown (None, {}) if Kafka cannot say."""
        topic = self.settings.topic_readings
        try:
            current = topic_id(self.settings, topic)
            if current is not None:  # (None: deleted, perhaps being created again)
                self.store.topic_id = current
            return current, log_bounds(self.settings, topic)
        except KafkaError as exc:
            log.warning("could not look up topic %s (%s): checkpoints are taken as they are", topic, exc)
            return None, {}

    def _reset(self, record: PartitionRecord, bounds: tuple[int, int] | None, reason: str) -> PartitionRecord:
        """Discard a checkpoint of an earlier incarnation of the topic: the partition starts over from
        its first offset with new device states."""
        start = None if bounds is None else bounds[0]
        log.warning(
            "partition %d: %s: its checkpoint (offset %s, %d devices) is discarded; reading it from "
            "offset %s with new device states",
            record.partition,
            reason,
            record.offset,
            len(record.state_ids),
            "the beginning" if start is None else start,
        )
        reset = self._retry(
            f"reset partition {record.partition}", lambda: self.store.reset(record, start, reason)
        )
        self.counters.add("partition_resets")
        entry = {"partition": record.partition, "reason": reason, "offset_before": record.offset}
        self.resets = [*self.resets[-9:], {**entry, "offset": start, "at": datetime.now(UTC)}]
        return reset

    def _retry(self, what: str, action: Callable[[], T]) -> T:
        """Run a MongoDB action until it succeeds; gives up (raises) only once a stop is requested."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                result = action()
                self.mongo_ok = True
                return result
            except PyMongoError as exc:
                self.mongo_ok = False
                self.counters.add("mongo_errors")
                if self.stop_requested.is_set():
                    raise
                delay = backoff.next_delay()
                log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc)
                self._retry_wait.wait(delay)

    # ------------------------------------------------------------------------------------ health

    def health_status(self) -> dict:
        view = self._view
        exchange = self.exchange.stats() if self.exchange is not None else {}
        return {
            "service": self.options.name,
            "trainer_id": self.trainer_id,
            "host": self.host,
            "pid": self.pid,
            "health_port": self.health.port,
            "group": self.settings.consumer_group,
            "topic": self.settings.topic_readings,
            "status": self.status,
            "healthy": self.status == "running" and self.mongo_ok,
            "mongo_ok": self.mongo_ok,
            "started_at": self.started_at,
            "first_record_at": self.first_record_at,
            "last_checkpoint_at": self.last_checkpoint_at,
            "records_per_s": round(self.counters.records_per_s(), 1),
            "counters": self.counters.snapshot(),
            "exchange": exchange,
            "partition_resets": self.resets,
            "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
            "checkpoint_writes": self.store.cost.summary(),
            **view,
        }


def cohort_summary(parts: list[OwnedPartition], per_partition: int | None) -> dict:
    """The training cohorts of the owned partitions, summed."""
    cohorts = [p.cohort for p in parts if p.cohort is not None]
    return {
        "size": None if per_partition is None else per_partition * len(parts),
        "per_partition": per_partition,
        "training": sum(len(c.training) for c in cohorts),
        "waiting": sum(len(c.waiting) for c in cohorts),
    }
