"""Local updates in ``collection_local_updates``: the persistent FedBuff buffer every replica shares.

One small document per ``(device_id, update_id)`` (its ``_id``, unique: a resubmission cannot be
stored twice) with a status: ``pending`` until an aggregation consumes it (``aggregated``, with the
version), or ``refused`` when an aggregation found it unusable (e.g. too stale by then), with the
reason.

The arrays (a ``flead-update`` container, ~40 kB for the default model) live beside it, under the
same ``_id``, in ``<collection_local_updates>.arrays`` (the GridFS naming convention), and are deleted
once the update is aggregated or refused: the version holds the result. Counting and summarising
updates therefore never reads arrays (some MongoDB-compatible servers fetch whole documents to count
an index range), and the arrays collection holds only what is pending.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from flead.federated import LocalUpdate
from flead.federated.wire import UPDATE_FORMAT, UPDATE_FORMAT_VERSION, local_update, update_fields
from flead.model.serialization import pack, unpack

DUPLICATE_KEY = 11000
IN_CHUNK = 100
MISSING_ARRAYS = "its arrays were not stored (the submission did not complete); resubmit with a new update_id"


class UpdateStatus(StrEnum):
    PENDING = "pending"
    AGGREGATED = "aggregated"
    REFUSED = "refused"


def update_key(device_id: str, update_id: str) -> str:
    """The document id of an update: unambiguous whatever characters the ids hold."""
    return json.dumps([device_id, update_id], separators=(",", ":"))


def arrays_collection(updates: Collection) -> Collection:
    return updates.database[f"{updates.name}.arrays"]


class UpdateStore:
    def __init__(self, collection: Collection) -> None:
        self._updates = collection
        self._arrays = arrays_collection(collection)

    def ensure_indexes(self) -> None:
        self._updates.create_index([("status", ASCENDING), ("received_at", ASCENDING)])
        self._updates.create_index([("device_id", ASCENDING)])

    def exists(self, device_id: str, update_id: str) -> bool:
        return self._updates.count_documents({"_id": update_key(device_id, update_id)}, limit=1) > 0

    def insert_pending(self, update: LocalUpdate, *, norm: float, submitted_by: str) -> bool:
        """Store a validated update as pending; False when it was stored before (a duplicate).

        The arrays go first (an upsert: it also replaces what an interrupted submission left), then
        the status document, whose insertion is what accepts the update.
        """
        key = update_key(update.device_id, update.update_id)
        self._arrays.replace_one({"_id": key}, {"arrays": Binary(_container(update))}, upsert=True)
        try:
            self._updates.insert_one(
                {
                    "_id": key,
                    **update_fields(update),
                    "norm": float(norm),
                    "status": str(UpdateStatus.PENDING),
                    "received_at": datetime.now(UTC),
                    "submitted_by": submitted_by,
                }
            )
        except DuplicateKeyError:
            # Known already. If it was consumed, its arrays were deleted: drop the copy just written.
            if self._updates.count_documents({"_id": key, "status": str(UpdateStatus.PENDING)}, limit=1) == 0:
                self._arrays.delete_one({"_id": key})
            return False
        return True

    def insert_pending_many(self, items: list[tuple[LocalUpdate, float]], *, submitted_by: str) -> set[str]:
        """`insert_pending` for many validated ``(update, norm)`` of distinct keys in two bulk writes;
        returns the keys accepted (the others were stored before: duplicates)."""
        if not items:
            return set()
        now = datetime.now(UTC)
        keyed = [(update_key(update.device_id, update.update_id), update, norm) for update, norm in items]
        keys = [key for key, _, _ in keyed]
        blobs = [{"_id": key, "arrays": Binary(_container(update))} for key, update, _ in keyed]
        for index in _insert_new(self._arrays, blobs):
            # Arrays under this key already: a pending duplicate or what an interrupted submission left.
            self._arrays.replace_one({"_id": keys[index]}, blobs[index], upsert=True)
        docs = [
            {
                "_id": key,
                **update_fields(update),
                "norm": float(norm),
                "status": str(UpdateStatus.PENDING),
                "received_at": now,
                "submitted_by": submitted_by,
            }
            for key, update, norm in keyed
        ]
        known = [keys[index] for index in _insert_new(self._updates, docs)]
        if known:  # as in insert_pending: drop the arrays copies of those already consumed
            still_pending = {
                doc["_id"]
                for doc in self._updates.find(
                    {"_id": {"$in": known}, "status": str(UpdateStatus.PENDING)}, {"_id": 1}
                )
            }
            consumed = [key for key in known if key not in still_pending]
            if consumed:
                self._arrays.delete_many({"_id": {"$in": consumed}})
        return set(keys) - set(known)

    def existing(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` that were stored (whatever their status)."""
        return {
            doc["_id"]
            for chunk in _chunks(list(keys))
            for doc in self._updates.find({"_id": {"$in": chunk}}, {"_id": 1})
        }

    def pending_count(self) -> int:
        return self._updates.count_documents({"status": str(UpdateStatus.PENDING)})

    def newest_pending(self) -> dict | None:
        """The ``_id`` and ``received_at`` of the newest pending update (None when none is pending)."""
        return self._updates.find_one(
            {"status": str(UpdateStatus.PENDING)},
            projection={"_id": 1, "received_at": 1},
            sort=[("received_at", DESCENDING), ("_id", DESCENDING)],
        )

    def status_counts(self) -> dict[str, int]:
        return {
            str(status): self._updates.count_documents({"status": str(status)}) for status in UpdateStatus
        }

    def pending(self) -> list[LocalUpdate]:
        """Every pending update with its arrays, in arrival order. A pending update whose arrays are
        missing (a submission interrupted between its two writes) is refused with the reason."""
        docs = list(
            self._updates.find({"status": str(UpdateStatus.PENDING)}).sort(
                [("received_at", ASCENDING), ("_id", ASCENDING)]
            )
        )
        if not docs:
            return []
        blobs = {
            blob["_id"]: blob["arrays"]
            for keys in _chunks([d["_id"] for d in docs])
            for blob in self._arrays.find({"_id": {"$in": keys}})
        }
        self.mark_refused(
            [(d["_id"], MISSING_ARRAYS) for d in docs if d["_id"] not in blobs], at_version=None
        )
        updates = []
        for doc in docs:
            if doc["_id"] not in blobs:
                continue
            _, arrays = unpack(blobs[doc["_id"]], UPDATE_FORMAT, (UPDATE_FORMAT_VERSION,))
            updates.append(local_update(doc, arrays))
        return updates

    def mark_aggregated(self, keys: Iterable[str], version: int) -> int:
        """Idempotent: marks those of ``keys`` still pending as consumed by ``version``."""
        modified = 0
        for chunk in _chunks(list(keys)):
            modified += self._updates.update_many(
                {"_id": {"$in": chunk}, "status": str(UpdateStatus.PENDING)},
                {"$set": {"status": str(UpdateStatus.AGGREGATED), "version": version}},
            ).modified_count
            self._arrays.delete_many({"_id": {"$in": chunk}})
        return modified

    def mark_refused(self, refusals: Iterable[tuple[str, str]], *, at_version: int | None) -> int:
        """``refusals``: (key, reason) of pending updates an aggregation could not use."""
        refusals = list(refusals)
        modified = 0
        for key, reason in refusals:
            modified += self._updates.update_one(
                {"_id": key, "status": str(UpdateStatus.PENDING)},
                {"$set": {"status": str(UpdateStatus.REFUSED), "reason": reason, "version": at_version}},
            ).modified_count
        if refusals:
            self._arrays.delete_many({"_id": {"$in": [key for key, _ in refusals]}})
        return modified

    def per_device(self) -> dict[str, dict]:
        """Per device: updates received (by status), samples in accepted updates, last update time."""
        pipeline = [
            {
                "$group": {
                    "_id": "$device_id",
                    "n_updates": {"$sum": 1},
                    "n_refused": {"$sum": {"$cond": [{"$eq": ["$status", "refused"]}, 1, 0]}},
                    "n_samples": {"$sum": {"$cond": [{"$eq": ["$status", "refused"]}, 0, "$n_samples"]}},
                    "last_update_at": {"$max": "$received_at"},
                }
            }
        ]
        return {doc["_id"]: doc for doc in self._updates.aggregate(pipeline)}


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    """``keys`` in lists of at most ``IN_CHUNK``: some MongoDB-compatible servers (SecantusDB) take
    more than linear time over a long ``$in`` list (measured: 100 keys 0.12 s, 500 keys 0.9 s)."""
    for start in range(0, len(keys), IN_CHUNK):
        yield keys[start : start + IN_CHUNK]


def _container(update: LocalUpdate) -> bytes:
    header = {"format": UPDATE_FORMAT, "format_version": UPDATE_FORMAT_VERSION}
    return pack(header, {name: np.asarray(value, dtype=np.float32) for name, value in update.arrays.items()})


def _insert_new(collection: Collection, docs: list[dict]) -> list[int]:
    """``insert_many(ordered=False)``: every document whose ``_id`` is new goes in; returns the indexes of
    those whose ``_id`` existed (any other write error is raised)."""
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return sorted(error["index"] for error in errors)
    return []
