"""Checkpoints in MongoDB, the source of truth for where each partition resumes.

Per partition one document in ``collection_checkpoints`` (``_id = "{group}|{topic}|{partition}"``):
the next offset to read, the partition's latest event time (its watermark), the ids of its devices'
state documents and of its buffer documents, its fleet calibration (`fleet`) and an ``epoch`` fencing
token. Each device has two state documents in ``collection_device_states`` (``_id = "{partition
id}|{device}|a"`` and ``...|b``): the committed one and the one the next save overwrites. The readings
devices hold waiting for a whole chunk are not in those: they live in the partition's *buffer*
documents (``kind = "buffers"``, a few thousand devices each, written anew at every save under ids
holding the epoch and gen), so a device that only received readings since the last checkpoint (most
of a large fleet, most of the time) costs a few bytes in one bulk document, not a state document.

Save (for the partitions that changed): upsert each changed device's state into its *uncommitted*
copy (guarded by ``epoch <= ours``, so an older owner can never overwrite what a newer one wrote; a
device's first state is inserted, the guarded upsert only where its id exists), insert the buffer
documents, then update each partition document *only if its epoch is still ours*: one atomic
single-document write that switches offset, watermark, state ids and buffer ids together; the
previous buffer documents are deleted after it. A crash or an error before that update leaves
the committed copies untouched; a member that lost the partition meanwhile (a newer epoch) is
refused: it drops its state and commits nothing.

Claim (on assignment): ``$inc`` the epoch (fencing off any previous owner), read offset, watermark
and the referenced states.

A checkpoint also records the topic's identity (Kafka's topic id). A topic deleted and created again
(e.g. a memory-only broker restarted under a MongoDB that kept its data) starts its offsets anew: a
checkpoint of the earlier topic, recognised by another topic id or by an offset beyond the end of an
empty partition, is reset (`stale_reason`, `reset`): the partition is read from its first offset,
with new device states, and the reset is logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bson.binary import Binary
from pymongo import ReplaceOne, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from flead.config import Settings
from flead.federated import GlobalState, LocalUpdate
from flead.federated.cohort import TrainingCohort
from flead.federated.wire import (
    global_state_fields,
    global_state_from_fields,
    read_legacy_global_state,
    weights_from_bytes,
    weights_to_bytes,
)
from flead.model.config import ModelConfig
from flead.storage.mongo import insert_new
from services.stream_trainer.devices import DeviceSlot, FleetCalibration, PendingReadings
from services.stream_trainer.outputs import duplicates_ignored, insert_ignoring_duplicates
from services.stream_trainer.state_codec import SharedWeights, slot_document, slot_from_document

log = logging.getLogger(__name__)

WRITE_BATCH_BYTES = 8 * 2**20


@dataclass(frozen=True)
class PartitionRecord:
    """What a partition's checkpoint document says (after our claim)."""

    partition: int
    epoch: int
    gen: int
    offset: int | None
    max_event_us: int | None
    state_ids: tuple[str, ...]
    topic_id: str | None = None  # of the topic the offsets belong to (None: not known)
    fleet: dict | None = None  # the partition's fleet calibration state (`devices.FleetCalibration`)
    buffer_ids: tuple[str, ...] = ()  # its buffer documents (the devices' waiting readings)
    cohort: dict | None = None  # its training cohort's state (`TrainingCohort.state_dict`)


def stale_reason(record: PartitionRecord, topic_id: str | None, bounds: tuple[int, int] | None) -> str | None:
    """Why `record`'s offsets cannot belong to the topic as it is now (`topic_id`, the partition's
    (first, next) offsets `bounds`), or None when they can (or nothing is known to tell)."""
    if record.offset is None:
        return None
    if record.topic_id is not None and topic_id is not None and record.topic_id != topic_id:
        return f"the topic was recreated (topic id {topic_id}, the checkpoint's {record.topic_id})"
    # Without topic ids: an empty partition cannot hold the records a checkpoint read. (Only empty:
    # Tansu reports the base offset of a partition's last batch + 1 as its end, so a partition that
    # holds records may report an end below a valid checkpoint's offset.)
    if bounds is not None and bounds[0] == bounds[1] < record.offset:
        return (
            f"the checkpoint's offset {record.offset} is beyond the end {bounds[1]} of the empty "
            "partition (the topic was recreated)"
        )
    return None


@dataclass(eq=False)
class OwnedPartition:
    """A partition this process owns: its devices and how far it got (`offset`: next to read)."""

    number: int
    epoch: int
    gen: int  # of the last committed checkpoint
    committed_offset: int | None
    offset: int | None
    slots: dict[str, DeviceSlot] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # devices whose state changed since the last checkpoint
    received: set[str] = field(default_factory=set)  # devices that received readings since then
    next_gen: int = 0
    fleet: FleetCalibration | None = None  # saved with the offset (None: a new, empty pool)
    cohort: TrainingCohort | None = None  # saved with the offset (None: a new, empty cohort)
    buffer_ids: tuple[str, ...] = ()  # the committed checkpoint's buffer documents

    def __post_init__(self) -> None:
        self.next_gen = max(self.next_gen, self.gen + 1)

    def changed(self) -> bool:
        return bool(self.dirty or self.received) or self.offset != self.committed_offset


@dataclass
class SaveCost:
    """What the checkpoints' device-state writes cost: the last save, the slowest and all of them; and
    the whole checkpoints' seconds (outputs flushed, states saved, offsets committed)."""

    last: dict = field(default_factory=dict)
    slowest: dict = field(default_factory=dict)
    devices: int = 0
    state_bytes: int = 0
    seconds: float = 0.0
    checkpoints: dict = field(default_factory=lambda: {"last": None, "slowest": None, "total": 0.0})

    def checkpointed(self, seconds: float) -> None:
        c = self.checkpoints
        c["last"], c["total"] = round(seconds, 3), c["total"] + seconds
        c["slowest"] = max(c["slowest"] or 0.0, c["last"])

    def record(
        self, devices: int, state_bytes: int, seconds: float, buffered: int, buffer_bytes: int
    ) -> None:
        self.last = {
            "devices": devices,
            "state_bytes": state_bytes,
            "buffered_devices": buffered,  # devices whose waiting readings went in buffer documents
            "buffer_bytes": buffer_bytes,
            "seconds": round(seconds, 4),
        }
        if seconds >= self.slowest.get("seconds", 0.0):
            self.slowest = self.last
        self.devices, self.state_bytes, self.seconds = (
            self.devices + devices,
            self.state_bytes + state_bytes,
            self.seconds + seconds,
        )

    def summary(self) -> dict:
        per_1000 = 1000 * self.seconds / self.devices if self.devices else None
        return {
            "last": self.last,
            "slowest": self.slowest,
            "devices_written": self.devices,
            "state_bytes_written": self.state_bytes,
            "seconds": round(self.seconds, 3),
            "seconds_per_1000_devices": None if per_1000 is None else round(per_1000, 4),
            "checkpoint_seconds": {**self.checkpoints, "total": round(self.checkpoints["total"], 3)},
        }


class CheckpointStore:
    def __init__(
        self, db: Database, settings: Settings, owner: Mapping[str, object], shared: SharedWeights
    ) -> None:
        self.checkpoints = db[settings.collection_checkpoints]
        self._durable_checkpoints = self.checkpoints.with_options(write_concern=WriteConcern(w=1, j=True))
        self.states = db[settings.collection_device_states]
        self.group, self.topic = settings.consumer_group, settings.topic_readings
        self.push_every = settings.trainer_push_every
        self.privacy = settings.privacy()
        self.owner = dict(owner)
        self.shared = shared
        self.topic_id: str | None = None  # the readings topic's id as last looked up, saved with offsets
        self._stored_digests: set[str] = set()
        self.cost = SaveCost()

    def partition_id(self, partition: int) -> str:
        return f"{self.group}|{self.topic}|{partition}"

    def ensure_indexes(self) -> None:
        self.states.create_index([("group", 1), ("topic", 1), ("partition", 1)])

    # ---------------------------------------------------------------------------------- claim

    def claim(self, partition: int) -> PartitionRecord:
        now = datetime.now(UTC)
        document = self.checkpoints.find_one_and_update(
            {"_id": self.partition_id(partition)},
            {
                "$inc": {"epoch": 1},
                "$set": {"claimed_by": self.owner, "claimed_at": now},
                "$setOnInsert": {
                    "kind": "partition",
                    "group": self.group,
                    "topic": self.topic,
                    "partition": partition,
                    "gen": 0,
                    "offset": None,
                    "max_event_us": None,
                    "states": [],
                },
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return PartitionRecord(
            partition=partition,
            epoch=int(document["epoch"]),
            gen=int(document["gen"]),
            offset=document["offset"],
            max_event_us=document["max_event_us"],
            state_ids=tuple(document["states"]),
            topic_id=document.get("topic_id"),
            fleet=document.get("fleet_calibration"),
            buffer_ids=tuple(document.get("buffers", ())),
            cohort=document.get("cohort"),
        )

    def reset(self, record: PartitionRecord, offset: int | None, reason: str) -> PartitionRecord:
        """Forget a stale checkpoint (see `stale_reason`): the partition resumes at `offset` (its first)
        with no device states; the states are deleted by `remove_orphans`. One atomic update of the
        partition document, only while the epoch is ours; the reset is kept in it (``last_reset``)."""
        gen = record.gen + 1  # a copy parked in memory at the old gen is never taken for this one
        self._durable_checkpoints.update_one(
            {"_id": self.partition_id(record.partition), "epoch": record.epoch},
            {
                "$set": {
                    "gen": gen,
                    "offset": offset,
                    "max_event_us": None,
                    "states": [],
                    "buffers": [],
                    "devices": 0,
                    "fleet_calibration": None,
                    "cohort": None,
                    "topic_id": self.topic_id,
                    "last_reset": {
                        "at": datetime.now(UTC),
                        "by": self.owner,
                        "reason": reason,
                        "offset_before": record.offset,
                        "devices_before": len(record.state_ids),
                        "topic_id_before": record.topic_id,
                    },
                }
            },
        )
        return PartitionRecord(record.partition, record.epoch, gen, offset, None, (), self.topic_id)

    def load_slots(self, record: PartitionRecord) -> tuple[dict[str, DeviceSlot], list[LocalUpdate]]:
        """The partition's devices as of its checkpoint, and their undelivered updates."""
        # Read by partition (indexed), not by an `$in` over the ids: SecantusDB takes quadratic time over a
        # long `$in` list (measured: 6,000 ids 40.6 s; the partition's 12,000 copies 0.5 s), and a member
        # restoring 50,000 devices that way overran the poll interval and was evicted from the group.
        referenced = set(record.state_ids)
        owner = {"group": self.group, "topic": self.topic, "partition": record.partition, "kind": "device"}
        documents = [d for d in self.states.find(owner) if d["_id"] in referenced]
        missing = set(record.state_ids) - {d["_id"] for d in documents}
        if missing:  # never expected: states are deleted only once no checkpoint references them
            log.error(
                "partition %d: %d checkpointed device states are missing (e.g. %s); those devices start over",
                record.partition,
                len(missing),
                sorted(missing)[0],
            )
        digests = {d["client"]["adopted"] for d in documents} - {None}
        self._load_weights(digests)
        slots, unsent = {}, []
        for document in documents:
            slot, updates = slot_from_document(
                document, adopted=self.shared.get, push_every=self.push_every, privacy=self.privacy
            )
            slots[slot.device_id] = slot
            unsent += updates
        self._load_buffers(record, slots)
        return slots, unsent

    def _load_buffers(self, record: PartitionRecord, slots: Mapping[str, DeviceSlot]) -> None:
        documents = list(self.states.find({"_id": {"$in": list(record.buffer_ids)}}))
        if len(documents) < len(record.buffer_ids):  # never expected, as for states
            log.error(
                "partition %d: %d of its %d buffer documents are missing; their devices' waiting "
                "readings are lost",
                record.partition,
                len(record.buffer_ids) - len(documents),
                len(record.buffer_ids),
            )
        for document in documents:
            for device_id, rows, last_event_us in zip(
                document["devices"], document["rows"], document["last_event_us"], strict=True
            ):
                slot = slots.get(device_id)
                if slot is None:  # never expected: a device's state is written before its buffer
                    log.error(
                        "partition %d: waiting readings of unknown device %s dropped",
                        record.partition,
                        device_id,
                    )
                    continue
                slot.pending = PendingReadings.from_bytes(bytes(rows), slot.pending.dtype)
                slot.last_event_us = last_event_us

    def remove_orphans(self, record: PartitionRecord) -> int:
        """Delete the state documents of devices the partition's checkpoint does not know (a device
        first seen after the last checkpoint of a crashed owner), and the buffer documents it does not
        reference (an interrupted save's, or the previous checkpoint's when the delete after it failed)."""
        known = {state_id.rsplit("|", 1)[0] for state_id in record.state_ids}
        buffers = set(record.buffer_ids)
        found = self.states.find(
            {
                "group": self.group,
                "topic": self.topic,
                "partition": record.partition,
                "kind": {"$in": ["device", "buffers"]},
            },
            {"_id": 1, "kind": 1},
        )
        orphans = [
            d["_id"]
            for d in found
            if (
                d["_id"] not in buffers if d["kind"] == "buffers" else d["_id"].rsplit("|", 1)[0] not in known
            )
        ]
        if orphans:
            self.states.delete_many({"_id": {"$in": orphans}})
        return len(orphans)

    def _load_weights(self, digests: Iterable[str]) -> None:
        wanted = [d for d in digests if self.shared.get(d) is None]
        if not wanted:
            return
        for document in self.states.find({"_id": {"$in": [_weights_id(d) for d in wanted]}}):
            self.shared.add(document["digest"], weights_from_bytes(bytes(document["weights"])))
            self._stored_digests.add(document["digest"])

    # ----------------------------------------------------------------------------------- save

    def save(
        self,
        parts: Iterable[OwnedPartition],
        max_event_us: Mapping[int, int],
        unsent: Mapping[str, list[LocalUpdate]],
    ) -> list[int]:
        """Checkpoint the partitions; returns those refused because another member claimed them."""
        now, started = datetime.now(UTC), time.perf_counter()
        writes = _StateWrites(self.states)
        plans, written, written_bytes, buffered, buffer_bytes = [], 0, 0, 0, 0
        for part in parts:
            gen = part.next_gen
            part.next_gen += 1
            targets = {}
            for device_id in part.dirty:
                slot = part.slots[device_id]
                target = self.state_id(part.number, device_id, _other_copy(slot.state_id))
                document = self._state_document(part, gen, slot, target, unsent.get(device_id, ()))
                writes.add(document, len(document["detector"]), new=slot.state_id is None)
                written, written_bytes = written + 1, written_bytes + len(document["detector"])
                targets[device_id] = target
            buffers = self._buffer_documents(part, gen)
            for document in buffers:
                size = sum(len(rows) for rows in document["rows"])
                writes.add(document, size, new=True)
                buffered, buffer_bytes = buffered + len(document["devices"]), buffer_bytes + size
            plans.append((part, gen, targets, tuple(d["_id"] for d in buffers)))
        writes.flush()
        fenced, superseded = [], []
        for part, gen, targets, buffer_ids in plans:
            ids = [targets.get(device_id) or slot.state_id for device_id, slot in part.slots.items()]
            result = self._durable_checkpoints.update_one(
                {"_id": self.partition_id(part.number), "epoch": part.epoch},
                {
                    "$set": {
                        "gen": gen,
                        "offset": part.offset,
                        "max_event_us": max_event_us.get(part.number),
                        "states": ids,
                        "buffers": list(buffer_ids),
                        "devices": len(ids),
                        "fleet_calibration": None if part.fleet is None else part.fleet.state_dict(),
                        "cohort": None if part.cohort is None else part.cohort.state_dict(),
                        **({"topic_id": self.topic_id} if self.topic_id is not None else {}),
                        "saved_by": self.owner,
                        "saved_at": now,
                    }
                },
            )
            if result.matched_count == 0:
                fenced.append(part.number)
                continue
            for device_id, target in targets.items():
                part.slots[device_id].state_id = target
            part.gen, part.committed_offset = gen, part.offset
            superseded += part.buffer_ids
            part.buffer_ids = buffer_ids
            part.dirty.clear()
            part.received.clear()
        if superseded:
            try:
                self.states.delete_many({"_id": {"$in": superseded}})
            except PyMongoError as exc:  # the checkpoint stands; the next claim removes them
                log.warning("could not delete %d superseded buffer documents: %s", len(superseded), exc)
        self.cost.record(written, written_bytes, time.perf_counter() - started, buffered, buffer_bytes)
        return fenced

    def _buffer_documents(self, part: OwnedPartition, gen: int) -> list[dict]:
        """The waiting readings of the partition's devices, in documents of at most
        ``WRITE_BATCH_BYTES`` of readings each."""
        owner = {"kind": "buffers", "group": self.group, "topic": self.topic, "partition": part.number}
        owner |= {"epoch": part.epoch, "gen": gen}
        documents: list[dict] = []
        size = WRITE_BATCH_BYTES
        for device_id, slot in part.slots.items():
            if not len(slot.pending):
                continue
            rows = slot.pending.to_bytes()
            if size + len(rows) > WRITE_BATCH_BYTES:
                _id = f"{self.partition_id(part.number)}|buffers|{part.epoch}.{gen}.{len(documents)}"
                documents.append({"_id": _id, **owner, "devices": [], "rows": [], "last_event_us": []})
                size = 0
            documents[-1]["devices"].append(device_id)
            documents[-1]["rows"].append(rows)
            documents[-1]["last_event_us"].append(slot.last_event_us)
            size += len(rows)
        return documents

    def state_id(self, partition: int, device_id: str, copy: str) -> str:
        return f"{self.partition_id(partition)}|{device_id}|{copy}"

    def _state_document(self, part: OwnedPartition, gen: int, slot, target: str, unsent) -> dict:
        adopted = slot.client.adopted
        digest = None if adopted is None else self.shared.digest_of(adopted)
        if digest is not None and digest not in self._stored_digests:
            weights = {"_id": _weights_id(digest), "kind": "weights", "digest": digest}
            weights["weights"] = Binary(weights_to_bytes(adopted))
            insert_ignoring_duplicates(self.states, [weights])
            self._stored_digests.add(digest)
        owner = {"group": self.group, "topic": self.topic, "partition": part.number}
        owner |= {"epoch": part.epoch, "gen": gen}
        return slot_document(slot, state_id=target, owner=owner, adopted_digest=digest, unsent=unsent)

    # ---------------------------------------------------------------------- in-process global model

    def global_id(self) -> str:
        return f"{self.group}|global-model"

    def save_global(self, state: GlobalState, model: ModelConfig, lineage: str) -> None:
        """Keep the local exchange's newest version (several processes: the highest version wins)."""
        document = {
            "kind": "global-model",
            "lineage": lineage,
            "version": state.version,
            "architecture": model.to_dict(),
            **global_state_fields(state),
            "saved_by": self.owner,
            "saved_at": datetime.now(UTC),
        }
        with contextlib.suppress(DuplicateKeyError):  # a newer version is stored already
            self.checkpoints.replace_one(
                {"_id": self.global_id(), "version": {"$lte": state.version}}, document, upsert=True
            )

    def load_global(self, lineage: str) -> GlobalState | None:
        document = self.checkpoints.find_one({"_id": self.global_id()})
        if document is None or document.get("lineage") != lineage:
            return None
        if "state" in document:  # saved before `global_state_fields`
            state, _ = read_legacy_global_state(bytes(document["state"]))
            return state
        return global_state_from_fields(document["version"], document)


def _weights_id(digest: str) -> str:
    return f"weights|{digest}"


def _other_copy(state_id: str | None) -> str:
    """Each device has two state documents, "a" and "b": a save writes the one the committed
    checkpoint does not reference, so a save that fails half-way never touches committed state."""
    return "a" if state_id is None or state_id.endswith("|b") else "b"


class _StateWrites:
    """The bulk writes of one save, sent every ``WRITE_BATCH_BYTES`` (bounded memory, whatever the fleet
    size). A document whose id cannot exist yet is inserted (the cheap path); the others, and those found
    to exist after all (an interrupted save's), are upserts guarded by ``epoch <= ours``: a copy already
    written by a newer owner is a duplicate key for us and left alone (our checkpoint will be refused)."""

    def __init__(self, collection: Collection) -> None:
        self._collection = collection
        self._new: list[dict] = []
        self._known: list[dict] = []
        self._bytes = 0

    def add(self, document: dict, size: int, *, new: bool) -> None:
        (self._new if new else self._known).append(document)
        self._bytes += size
        if self._bytes >= WRITE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        existing = [self._new[index] for index in insert_new(self._collection, self._new)]
        guarded = [
            ReplaceOne({"_id": d["_id"], "epoch": {"$lte": d["epoch"]}}, d, upsert=True)
            for d in self._known + existing
        ]
        if guarded:
            with duplicates_ignored():
                self._collection.bulk_write(guarded, ordered=False)
        self._new, self._known, self._bytes = [], [], 0
