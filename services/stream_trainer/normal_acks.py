"""Operators' new-normal acknowledgements (recorded by the API in ``collection_normal_acks``), applied
to the devices this trainer owns: `OnlineDetector.accept_new_normal` recalibrates both thresholds on
the next readings (the old ones judge meanwhile).

An acknowledgement is marked applied only once a checkpoint has stored the recalibrating state (the
detector's thresholds carry their ``collecting`` flag): a trainer killed in between leaves it pending,
and the next owner applies it to the state it resumes from. So none is lost, and one applied twice
only restarts a calibration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from flead.model.detector import OnlineDetector
from flead.model.thresholds import CalibratedThreshold

if TYPE_CHECKING:
    from services.stream_trainer.checkpoints import OwnedPartition

log = logging.getLogger(__name__)


def recalibrating(detector: OnlineDetector) -> bool:
    """Whether a fitted threshold is being calibrated anew (after an accepted new normal)."""
    return any(
        isinstance(t, CalibratedThreshold) and t.fitted is not None and t.collecting
        for t in (detector.threshold, detector.sustained)
    )


class NormalAcks:
    def __init__(self, collection: Collection, trainer_id: str) -> None:
        self._acks, self.trainer_id = collection, trainer_id
        self._applied: dict[str, dict] = {}  # ack id -> what to record, until its state is checkpointed
        self._saved: dict[str, dict] = {}  # checkpointed: to be marked applied

    def apply(self, owned: Mapping[int, OwnedPartition]) -> int:
        """Apply the pending acknowledgements of owned devices; mark the checkpointed ones applied."""
        try:
            self._mark_saved()
            slots = {d: p for p in owned.values() for d in p.slots}
            if not slots:
                return 0
            query = {"applied": False, "device_id": {"$in": list(slots)}}
            pending = list(self._acks.find(query).sort("requested_at", 1))
        except PyMongoError as exc:
            log.warning("could not read or mark new-normal acknowledgements (retried): %s", exc)
            return 0
        applied = 0
        for doc in pending:
            if doc["_id"] in self._applied or doc["_id"] in self._saved:
                continue
            part = slots[doc["device_id"]]
            slot = part.slots[doc["device_id"]]
            slot.client.detector.accept_new_normal()
            part.dirty.add(slot.device_id)
            self._applied[doc["_id"]] = {
                "applied_at": datetime.now(UTC),
                "applied_by": self.trainer_id,
                "applied_partition": part.number,
                "applied_offset": part.offset,
                "applied_after_readings": slot.readings,
            }
            applied += 1
            log.info("device %s: new normal accepted (%s), recalibrating", slot.device_id, doc["_id"])
        return applied

    def checkpointed(self, partitions: Iterable[int], owned: Iterable[int]) -> None:
        """The device states of `partitions` are stored; forget what was applied on partitions no longer
        `owned` (their next owner applies it)."""
        stored, kept = set(partitions), set(owned)
        for ack_id, fields in list(self._applied.items()):
            if fields["applied_partition"] in stored:
                self._saved[ack_id] = self._applied.pop(ack_id)
            elif fields["applied_partition"] not in kept:
                del self._applied[ack_id]

    def _mark_saved(self) -> None:
        for ack_id, fields in list(self._saved.items()):
            self._acks.update_one({"_id": ack_id, "applied": False}, {"$set": {"applied": True, **fields}})
            del self._saved[ack_id]
