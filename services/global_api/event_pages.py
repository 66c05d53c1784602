"""Pages of anomaly events (``collection_events``, written by the stream trainer: runs of alarms with a
start, an end, a peak, a reason and the features that contributed most), newest start first.

The order is ``(start, _id)`` descending and a page continues after a cursor, the opaque form of the
last event's ``(start, _id)`` (`anomaly_pages.PageKey`, the same cursors as ``/api/anomalies``), so a
deep page costs what the first one does. Events are runs of alarms, orders of magnitude fewer than the
anomalous readings, so one indexed range query per page serves (no time windows as for anomalies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from services.global_api.anomaly_pages import PageKey
from services.global_api.monitoring import UtcTime, exact_time, jsonable, utc
from services.global_api.pages import Page

log = logging.getLogger(__name__)

ORDER = [("start", DESCENDING), ("_id", DESCENDING)]
EVENT_INDEXES = (
    [("start", DESCENDING), ("_id", DESCENDING)],
    [("device_id", ASCENDING), ("start", DESCENDING), ("_id", DESCENDING)],
)


class TopFeature(BaseModel):
    feature: str
    share: float = Field(description="Share of the event's squared errors on this feature (0..1).")


class AnomalyEvent(BaseModel):
    id: str = Field(description="`{device_id}:{start}`: the event's natural key.")
    device_id: str
    start: UtcTime = Field(description="Event time of its first alarm (UTC, to the microsecond).")
    end: UtcTime = Field(description="Event time of its last alarm so far (UTC, to the microsecond).")
    duration_s: float
    open: bool = Field(
        description="True while alarms may still join it (fewer than merge_gap quiet readings)."
    )
    readings: int = Field(description="Readings from its first alarm to its last.")
    flagged: int = Field(description="Readings flagged inside it.")
    model_alarms: int = 0
    rule_alarms: int = Field(0, description="Readings outside their sensor's physical limits.")
    reason: str = Field(description="model, rule or model+rule.")
    peak_score: float | None = None
    peak_severity: float = Field(
        description="Times over its threshold at its peak (a rule alarm counts >= min_severity)."
    )
    peak_ts: UtcTime | None = None
    severity_class: str = Field(description="minor, major or critical.")
    top_features: list[TopFeature] = []
    model_version: int | None = None
    partition: int | None = None
    trainer: str | None = None
    updated_at: UtcTime | None = None


class EventPage(Page[AnomalyEvent]):
    """A page of events, newest start first."""


@dataclass(frozen=True)
class EventFilter:
    device_id: str | None = None
    since: datetime | None = None  # events still going at or after this time (end >= since)
    until: datetime | None = None  # events that started before this time
    min_severity: float | None = None
    open: bool | None = None

    def query(self) -> dict:
        query: dict[str, Any] = {}
        if self.device_id is not None:
            query["device_id"] = self.device_id
        if self.since is not None:
            query["end"] = {"$gte": utc(self.since)}
        if self.until is not None:
            query["start"] = {"$lt": utc(self.until)}
        if self.min_severity is not None:
            query["peak_severity"] = {"$gte": self.min_severity}
        if self.open is not None:
            query["open"] = self.open
        return query


class EventPages:
    def __init__(self, events: Collection) -> None:
        self._events = events

    def ensure_indexes(self) -> None:
        for keys in EVENT_INDEXES:
            try:
                self._events.create_index(keys)
            except OperationFailure as exc:
                log.info("event index %s not created: %s", keys, exc)

    def page(self, where: EventFilter, *, limit: int, after: PageKey | None = None) -> EventPage:
        query = where.query()
        docs: list[dict] = []
        if after is not None:
            until = query.get("start", {}).get("$lt")
            if after.id is not None and (until is None or after.ts < until):
                ties = {**query, "start": after.ts, "_id": {"$lt": after.id}}
                docs += self._events.find(ties).sort([("_id", DESCENDING)]).limit(limit + 1)
            bound = after.ts if until is None else min(after.ts, until)
            query = {**query, "start": {"$lt": bound}}
        if len(docs) <= limit:
            docs += self._events.find(query).sort(ORDER).limit(limit + 1 - len(docs))
        page = docs[:limit]
        following = PageKey(page[-1]["start"], page[-1]["_id"]) if len(docs) > limit else None
        return EventPage(
            items=[AnomalyEvent(id=str(d["_id"]), **jsonable(_fields(d))) for d in page],
            limit=limit,
            next=None if following is None else following.encode(),
        )


def _fields(doc: dict) -> dict:
    """The item's fields of an event document: ``start`` and ``end`` to the microsecond from
    ``start_us`` / ``end_us`` (a BSON date keeps milliseconds), which are not repeated."""
    known = AnomalyEvent.model_fields
    fields = {k: v for k, v in doc.items() if k in known and k != "id"}
    for name in ("start", "end"):
        if name in fields:
            fields[name] = exact_time(doc, name, f"{name}_us")
    return fields
