"""Operators' acknowledgements that a device's present behaviour is a new normal
(``collection_normal_acks``): the API records them, the stream trainer that owns the device applies
them (`OnlineDetector.accept_new_normal`: both thresholds recalibrate on the next readings) and marks
them applied once the recalibrating state is checkpointed (`services.stream_trainer.normal_acks`).

One document per ``(device_id, request_id)``, ``_id`` = ``{device_id}/{request_id}`` (a device id
holds no ``/``): recording the same request again is a no-op.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from services.global_api.anomaly_pages import PageKey
from services.global_api.codec import ID_PATTERN
from services.global_api.keys import Principal
from services.global_api.monitoring import UtcTime, utc
from services.global_api.pages import Page

MAX_REASON_CHARS = 1000
ORDER = [("requested_at", DESCENDING), ("_id", DESCENDING)]


class AcceptNormalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="Unique per device; sending the same id again is a no-op (omitted: a new one).",
    )
    reason: str | None = Field(None, max_length=MAX_REASON_CHARS, description="Why this is normal now.")


class NormalAck(BaseModel):
    id: str = Field(description="`{device_id}/{request_id}`: the acknowledgement's natural key.")
    device_id: str
    request_id: str
    reason: str | None = None
    requested_at: UtcTime
    requested_by: str = Field(description="Role and key of the token that asked (e.g. `admin:1f2e...`).")
    key_id: str
    applied: bool = Field(description="True once a trainer recalibrates the device and checkpointed it.")
    applied_at: UtcTime | None = None
    applied_by: str | None = Field(None, description="The trainer that applied it.")
    applied_partition: int | None = None
    applied_offset: int | None = Field(None, description="The partition's offset when it was applied.")
    applied_after_readings: int | None = Field(None, description="Readings the device had scored then.")


class NormalAckPage(Page[NormalAck]):
    """A page of a device's acknowledgements, newest first."""

    device_id: str


class NormalAckStore:
    def __init__(self, collection: Collection, devices: Collection) -> None:
        self._acks, self._devices = collection, devices

    def known(self, device_id: str) -> bool:
        """Whether a trainer has reported the device (`collection_devices`)."""
        return self._devices.find_one({"_id": device_id}, {"_id": 1}) is not None

    def ensure_indexes(self) -> None:
        self._acks.create_index([("device_id", ASCENDING), ("requested_at", ASCENDING)])
        self._acks.create_index([("applied", ASCENDING), ("device_id", ASCENDING)])

    def record(
        self, device_id: str, request: AcceptNormalRequest, principal: Principal
    ) -> tuple[NormalAck, bool]:
        """The acknowledgement, and True when it is new (False: this request id was recorded before)."""
        request_id = request.request_id or uuid.uuid4().hex
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as MongoDB stores it
        doc = {
            "_id": f"{device_id}/{request_id}",
            "device_id": device_id,
            "request_id": request_id,
            "reason": request.reason,
            "requested_at": now,
            "requested_by": principal.label,
            "key_id": principal.key_id,
            "applied": False,
        }
        try:
            self._acks.insert_one(doc)
            return _ack(doc), True
        except DuplicateKeyError:
            return _ack(self._acks.find_one({"_id": doc["_id"]})), False

    def page(self, device_id: str, *, limit: int, after: PageKey | None = None) -> NormalAckPage:
        """A page of the device's acknowledgements, newest first (``(requested_at, _id)`` descending),
        after ``after``."""
        query: dict = {"device_id": device_id}
        docs: list[dict] = []
        if after is not None:
            if after.id is not None:
                ties = {**query, "requested_at": after.ts, "_id": {"$lt": after.id}}
                docs += self._acks.find(ties).sort([("_id", DESCENDING)]).limit(limit + 1)
            query["requested_at"] = {"$lt": after.ts}
        if len(docs) <= limit:
            docs += self._acks.find(query).sort(ORDER).limit(limit + 1 - len(docs))
        page = docs[:limit]
        following = PageKey(utc(page[-1]["requested_at"]), page[-1]["_id"]) if len(docs) > limit else None
        return NormalAckPage(
            items=[_ack(doc) for doc in page],
            limit=limit,
            next=None if following is None else following.encode(),
            device_id=device_id,
        )


def _ack(doc: dict) -> NormalAck:
    fields = {k: v for k, v in doc.items() if k != "_id"}
    for key in ("requested_at", "applied_at"):
        if fields.get(key) is not None:
            fields[key] = utc(fields[key])
    return NormalAck(id=doc["_id"], **fields)
