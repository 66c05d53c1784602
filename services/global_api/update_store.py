"""Local updates in ``collection_local_updates``: the persistent FedBuff buffer every replica shares.

One small document per ``(device_id, update_id)`` (its ``_id``, unique: a resubmission cannot be
stored twice) with a status: ``pending`` until an aggregation consumes it (``aggregated``, with the
version), or ``refused`` when an aggregation found it unusable (e.g. too stale by then), with the
reason.

The arrays (a ``flead-update`` container, ~40 kB for the default model) live apart, in
``<collection_local_updates>.arrays`` (the GridFS naming convention): one *blob* document per
submission holding the containers of its updates (a batch's split into blobs of at most
``MAX_BLOB_BYTES``), each status document naming its ``blob`` and ``blob_index``. Counting and
summarising updates therefore never reads arrays (some MongoDB-compatible servers fetch whole
documents to count an index range), and a batch costs one arrays write and one delete instead of one
per update (the embedded server's cost is per document).

A submission writes its blobs, then its status documents (whose insertion is what accepts an
update), then a *seal* per blob of several updates in ``<collection_local_updates>.seals``: the blob's
status documents are all written (a blob of one update is complete once its status document exists).
After an aggregation, `release` deletes every sealed blob, and every blob of one whose update it read,
that no pending update names (seals read first, so a blob whose updates are still being inserted is
never deleted), and any other blob older than ``ORPHAN_AGE_S`` (its submission stopped between its
writes) no pending update names.
A pending update whose blob is missing is refused at aggregation with the reason. Arrays stored one
per update under the update's ``_id`` (before blobs) are still read, but not deleted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np
from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

from flead.federated import LocalUpdate
from flead.federated.wire import UPDATE_FORMAT, UPDATE_FORMAT_VERSION, local_update, update_fields
from flead.model.serialization import pack, unpack
from flead.storage.mongo import insert_new

IN_CHUNK = 100
MAX_BLOB_BYTES = 8_000_000  # well under MongoDB's 16 MB document limit
ORPHAN_AGE_S = 3600.0
ORPHAN_CHECK_S = 60.0  # how often (per process) `release` looks for them
# BLOB_COMMANDS: an aggregation reads and marks blobs in commands of at most IN_CHUNK updates (a batch's
# blob alone, many single updates' together). On the embedded server (one Python process) one command
# over every pending blob (tens of MB, hundreds of statuses) held the submissions' writes behind it:
# p99 of a 100-update batch 1.0-1.2 s, 0.8 s with one blob per command (measured).
MISSING_ARRAYS = "its arrays were not stored (the submission did not complete); resubmit with a new update_id"


class UpdateStatus(StrEnum):
    PENDING = "pending"
    AGGREGATED = "aggregated"
    REFUSED = "refused"


@dataclass(frozen=True)
class PendingUpdates:
    updates: list[LocalUpdate]  # in arrival order
    # Per blob sealed before the read, or of one update: the keys of its updates that were pending (all
    # that can be).
    sealed_groups: dict[str, set[str]]


def update_key(device_id: str, update_id: str) -> str:
    """The document id of an update: unambiguous whatever characters the ids hold."""
    return json.dumps([device_id, update_id], separators=(",", ":"))


def arrays_collection(updates: Collection) -> Collection:
    return updates.database[f"{updates.name}.arrays"]


def seals_collection(updates: Collection) -> Collection:
    return updates.database[f"{updates.name}.seals"]


class UpdateStore:
    def __init__(self, collection: Collection) -> None:
        self._updates = collection
        self._arrays = arrays_collection(collection)
        self._seals = seals_collection(collection)
        self._lock = threading.Lock()
        self._pending: int | None = None  # the last count, kept in step with this process's own writes
        self._pending_at = 0.0
        self._orphans_at = -ORPHAN_CHECK_S  # when `release` last looked for orphan blobs

    def ensure_indexes(self) -> None:
        self._updates.create_index([("status", ASCENDING), ("received_at", ASCENDING)])
        self._updates.create_index([("device_id", ASCENDING)])
        self._arrays.create_index([("created_at", ASCENDING)])

    def exists(self, device_id: str, update_id: str) -> bool:
        return self._updates.count_documents({"_id": update_key(device_id, update_id)}, limit=1) > 0

    def insert_pending(self, update: LocalUpdate, *, norm: float, submitted_by: str) -> bool:
        """Store a validated update as pending; False when it was stored before (a duplicate)."""
        return bool(self.insert_pending_many([(update, norm)], submitted_by=submitted_by))

    def insert_pending_many(self, items: list[tuple[LocalUpdate, float]], *, submitted_by: str) -> set[str]:
        """Store validated ``(update, norm)`` of distinct keys as pending: their arrays in blobs, then
        their status documents in one bulk write, then the seals; returns the keys accepted (the others
        were stored before: duplicates)."""
        if not items:
            return set()
        now = datetime.now(UTC)
        keyed = [(update_key(update.device_id, update.update_id), update, norm) for update, norm in items]
        keys = [key for key, _, _ in keyed]
        refs = self._insert_blobs([_container(update) for _, update, _ in keyed], now)
        docs = [
            {
                "_id": key,
                **update_fields(update),
                "norm": float(norm),
                "status": str(UpdateStatus.PENDING),
                "received_at": now,
                "submitted_by": submitted_by,
                "blob": blob,
                "blob_index": index,
            }
            for (key, update, norm), (blob, index) in zip(keyed, refs, strict=True)
        ]
        known = set(insert_new(self._updates, docs))
        accepted = [index for index in range(len(keys)) if index not in known]
        used = list(dict.fromkeys(refs[index][0] for index in accepted))
        sizes = Counter(blob for blob, _ in refs)
        unused = [blob for blob in sizes if blob not in used]
        if unused:  # every update in them a duplicate
            self._arrays.delete_many({"_id": {"$in": unused}})
        sealed = [blob for blob in used if sizes[blob] > 1]  # a blob of one is complete with its status
        if sealed:
            self._seals.insert_many([{"_id": blob, "sealed_at": now} for blob in sealed])
        self._counted(len(accepted))
        return {keys[index] for index in accepted}

    def _insert_blobs(self, containers: list[bytes], now: datetime) -> list[tuple[str, int]]:
        """The containers in as few blobs as fit ``MAX_BLOB_BYTES``; each one's (blob, index)."""
        blobs: list[dict] = []
        refs: list[tuple[str, int]] = []
        size = 0
        for container in containers:
            if not blobs or size + len(container) > MAX_BLOB_BYTES:
                blobs.append({"_id": uuid.uuid4().hex, "items": [], "created_at": now})
                size = 0
            blob = blobs[-1]
            refs.append((blob["_id"], len(blob["items"])))
            blob["items"].append(Binary(container))
            size += len(container)
        self._arrays.insert_many(blobs)
        return refs

    def existing(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` that were stored (whatever their status)."""
        return {
            doc["_id"]
            for chunk in _chunks(list(keys))
            for doc in self._updates.find({"_id": {"$in": chunk}}, {"_id": 1})
        }

    def pending_count(self, *, max_age_s: float = 0.0) -> int:
        """How many updates are pending. With ``max_age_s`` > 0 possibly from memory: counted that long
        ago at most, and since then kept in step with what this process stored and marked (another
        replica's writes are seen at the next count). A count costs a read of every pending update's
        status on some MongoDB-compatible servers (SecantusDB)."""
        checked_at = time.monotonic()
        with self._lock:
            if self._pending is not None and checked_at - self._pending_at <= max_age_s:
                return self._pending
        count = self._updates.count_documents({"status": str(UpdateStatus.PENDING)})
        with self._lock:
            if checked_at >= self._pending_at:
                self._pending, self._pending_at = count, checked_at
        return count

    def _counted(self, change: int) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending = max(0, self._pending + change)

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

    def pending(self) -> PendingUpdates:
        """Every pending update with its arrays, in arrival order. A pending update whose arrays are
        missing is refused with the reason."""
        sealed = {doc["_id"] for doc in self._seals.find({}, {"_id": 1})}  # read before the statuses
        docs = list(
            self._updates.find({"status": str(UpdateStatus.PENDING)}).sort(
                [("received_at", ASCENDING), ("_id", ASCENDING)]
            )
        )
        if not docs:
            return PendingUpdates([], {})
        # Per blob, how many pending updates it holds (before blobs: the update's own _id, one each).
        sizes = Counter(d.get("blob", d["_id"]) for d in docs)
        blobs = {
            blob["_id"]: blob
            for chunk in _groups(sizes)  # see BLOB_COMMANDS
            for blob in self._arrays.find({"_id": {"$in": chunk}})
        }
        containers = {d["_id"]: _container_of(d, blobs) for d in docs}
        self.mark_refused(
            [(d["_id"], MISSING_ARRAYS) for d in docs if containers[d["_id"]] is None], at_version=None
        )
        updates = []
        sealed_groups: dict[str, set[str]] = {}
        for doc in docs:
            container = containers[doc["_id"]]
            if container is None:
                continue
            _, arrays = unpack(container, UPDATE_FORMAT, (UPDATE_FORMAT_VERSION,))
            updates.append(local_update(doc, arrays))
            if doc.get("blob") in sealed or len(blobs[doc.get("blob", doc["_id"])].get("items", ())) == 1:
                sealed_groups.setdefault(doc["blob"], set()).add(doc["_id"])
        return PendingUpdates(updates, sealed_groups)

    def mark_aggregated(
        self, keys: Iterable[str], version: int, *, sealed_groups: Mapping[str, set[str]] | None = None
    ) -> int:
        """Idempotent: marks those of ``keys`` still pending as consumed by ``version``.

        ``sealed_groups`` (from the `pending` read these keys were chosen from): a blob whose every
        pending update is among ``keys`` is marked with one filter on the blob instead of its keys (the
        embedded server's ``$in`` over ids costs more than linear time). Its blob was sealed before that
        read, so no update of it became pending since, and the filter marks only updates of ``keys``.
        """
        keys = list(keys)
        remaining = set(keys)
        whole = [blob for blob, members in (sealed_groups or {}).items() if members <= remaining]
        for blob in whole:
            remaining -= sealed_groups[blob]
        modified = 0
        consumed = {"$set": {"status": str(UpdateStatus.AGGREGATED), "version": version}}
        for chunk in _groups({blob: len(sealed_groups[blob]) for blob in whole}):  # see BLOB_COMMANDS
            modified += self._updates.update_many(
                {"status": str(UpdateStatus.PENDING), "blob": {"$in": chunk}}, consumed
            ).modified_count
        for chunk in _chunks([key for key in keys if key in remaining]):
            modified += self._updates.update_many(
                {"_id": {"$in": chunk}, "status": str(UpdateStatus.PENDING)}, consumed
            ).modified_count
        self._counted(-modified)
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
        self._counted(-modified)
        return modified

    def release(self, complete: Iterable[str] = ()) -> int:
        """Delete the blobs no pending update needs any more (see the module docstring); how many.
        ``complete``: blobs known to have all their status documents written (``sealed_groups``)."""
        # Seals and orphans first: a blob sealed by then has all its status documents written.
        candidates = [*complete, *(doc["_id"] for doc in self._seals.find({}, {"_id": 1}))]
        checked_at = time.monotonic()
        if checked_at - self._orphans_at >= ORPHAN_CHECK_S:
            cutoff = datetime.now(UTC) - timedelta(seconds=ORPHAN_AGE_S)
            candidates += [d["_id"] for d in self._arrays.find({"created_at": {"$lt": cutoff}}, {"_id": 1})]
            self._orphans_at = checked_at
        needed = {
            doc.get("blob") for doc in self._updates.find({"status": str(UpdateStatus.PENDING)}, {"blob": 1})
        }
        free = [blob for blob in dict.fromkeys(candidates) if blob not in needed]
        for chunk in _chunks(free):
            self._arrays.delete_many({"_id": {"$in": chunk}})
            self._seals.delete_many({"_id": {"$in": chunk}})
        return len(free)

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


def _groups(sizes: Mapping[str, int]) -> Iterator[list[str]]:
    """The names of ``sizes`` in lists whose sizes add up to at most ``IN_CHUNK`` (a bigger one alone)."""
    group: list[str] = []
    total = 0
    for name, size in sizes.items():
        if group and total + size > IN_CHUNK:
            yield group
            group, total = [], 0
        group.append(name)
        total += size
    if group:
        yield group


def _container_of(doc: dict, blobs: dict[str, dict]) -> bytes | None:
    """The arrays container of the status document ``doc`` in the ``blobs`` read (None: missing)."""
    if "blob" not in doc:  # stored before blobs: one arrays document under the update's _id
        blob = blobs.get(doc["_id"])
        return None if blob is None or "arrays" not in blob else blob["arrays"]
    blob = blobs.get(doc["blob"])
    if blob is None or doc["blob_index"] >= len(blob["items"]):
        return None
    return blob["items"][doc["blob_index"]]


def _container(update: LocalUpdate) -> bytes:
    header = {"format": UPDATE_FORMAT, "format_version": UPDATE_FORMAT_VERSION}
    return pack(header, {name: np.asarray(value, dtype=np.float32) for name, value in update.arrays.items()})
