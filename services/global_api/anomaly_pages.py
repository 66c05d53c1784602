"""Pages of anomaly events, newest first, at a cost set by the page, not by the events before it.

The order is ``(ts, _id)`` descending: a total order (``_id`` separates events stored at the same
millisecond). A page continues after a cursor, the opaque form of the last event's ``(ts, _id)``
(``PageKey``), so a deep page costs what the first one does.

A page is read as a walk over time windows ``[lo, hi)``, newest first, each one range query on the
indexed ``ts`` (with ``device_id`` in front when filtered by device) with the page's limit. Why not one
open range ``ts < cursor``: some MongoDB-compatible servers (SecantusDB) fetch every document an index
range selects before they sort and limit, so that range costs the whole history older than the
cursor; a window selects about what the page needs. The first window's width comes from the density
of the events in the anomaly summary, and each next one doubles. The newest window is open above and
the oldest (once it passes the summary's first event) open below, so events written after the summary
was made are found too: the walk is complete whatever the summary's age. A walk that examined about
``SCAN_BUDGET`` events (a selective ``min_score``) stops early and answers a cursor at the window
boundary it reached (``PageKey.id`` None): the page then holds fewer events than asked, and continuing
from its cursor goes on from there.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.collection import Collection

from flead.schema import EPOCH
from services.global_api.anomaly_summary import Scope

ORDER = [("ts", -1), ("_id", -1)]
SCAN_BUDGET = 20_000  # events a walk may examine (estimated from the density) before it stops early
MAX_WINDOWS = 64
MIN_WIDTH = timedelta(milliseconds=1)
MAX_CURSOR_CHARS = 512


class PageError(ValueError):
    """A page that cannot be asked for (a malformed cursor, too deep an offset): the client's error."""


class InvalidCursor(PageError):
    pass


@dataclass(frozen=True)
class PageKey:
    """A position in the order: events strictly after it (older, or as old with a smaller ``_id``).
    ``id`` None: every event at ``ts`` is before the position (a window boundary)."""

    ts: datetime
    id: str | int | ObjectId | None = None

    @classmethod
    def of(cls, doc: dict) -> PageKey:
        return cls(doc["ts"], doc["_id"])

    def encode(self) -> str:
        ts_us = (self.ts - EPOCH) // timedelta(microseconds=1)
        if self.id is None:
            ident = None
        elif isinstance(self.id, ObjectId):
            ident = ["o", str(self.id)]
        else:
            ident = ["s" if isinstance(self.id, str) else "i", self.id]
        raw = json.dumps([ts_us, ident], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> PageKey:
        problem = "is not a cursor this API made (use the `next` of a previous page)"
        if len(text) > MAX_CURSOR_CHARS:
            raise InvalidCursor(f"cursor of {len(text)} characters {problem}")
        try:
            ts_us, ident = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            ts = EPOCH + timedelta(microseconds=_integer(ts_us))
            if ident is None:
                return cls(ts)
            kind, value = ident
            if kind == "o":
                return cls(ts, ObjectId(value))
            if (kind == "s" and isinstance(value, str)) or kind == "i":
                return cls(ts, value if kind == "s" else _integer(value))
        except (ValueError, TypeError, OverflowError, binascii.Error, InvalidId):
            pass
        raise InvalidCursor(f"cursor {text[:40]!r} {problem}")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


@dataclass(frozen=True)
class Walk:
    docs: list[dict]
    resume: PageKey | None  # where an early stop left off (None when the walk was complete)


def read_events(
    anomalies: Collection,
    query: dict,
    scope: Scope,
    *,
    after: PageKey | None,
    want: int,
    budget: int = SCAN_BUDGET,
) -> Walk:
    """Up to ``want`` events matching ``query`` after ``after``, in ``ORDER``."""
    ts_clause = query.get("ts", {})
    others = {k: v for k, v in query.items() if k != "ts"}
    since, until = ts_clause.get("$gte"), ts_clause.get("$lt")
    hi = until
    docs: list[dict] = []
    if after is not None:
        if hi is not None and after.ts >= hi:
            after = PageKey(hi)  # the cursor is past the filter's end: all of it is after the cursor
        hi = after.ts
        if after.id is not None and (since is None or after.ts >= since):
            ties = {**others, "ts": after.ts, "_id": {"$lt": after.id}}
            docs.extend(anomalies.find(ties).sort([("_id", -1)]).limit(want))
    if len(docs) >= want:
        return Walk(docs[:want], None)
    for lo, top, examined in windows(scope, since=since, hi=hi, want=want - len(docs)):
        ts_range = {k: v for k, v in (("$gte", lo), ("$lt", top)) if v is not None}
        window = {**others, "ts": ts_range} if ts_range else others
        docs.extend(anomalies.find(window).sort(ORDER).limit(want - len(docs)))
        if len(docs) >= want or lo is None or lo == since:
            return Walk(docs, None)
        if examined >= budget:
            return Walk(docs, PageKey(lo))
    return Walk(docs, None)  # not reached: the last window is open below


def windows(
    scope: Scope, *, since: datetime | None, hi: datetime | None, want: int
) -> Iterator[tuple[datetime | None, datetime | None, float]]:
    """``(lo, hi, events examined so far, estimated)`` windows, newest first; ``lo`` None or ``since``
    for the last one (open below, or down to the filter's start), ``hi`` None for an open top."""
    if scope.last is None or scope.first is None:
        yield since, hi, 0.0  # nothing known: one range, which holds only what came after the summary
        return
    span_s = max((scope.last - scope.first).total_seconds(), 1.0)
    per_s = max(scope.count, 1) / span_s
    width = max(timedelta(seconds=want / per_s), MIN_WIDTH)
    anchor = scope.last if hi is None or hi > scope.last else hi
    top, examined = hi, 0.0
    for _ in range(MAX_WINDOWS):
        try:
            lo = anchor - width
        except OverflowError:
            lo = None
        if lo is None or lo <= scope.first or (since is not None and lo <= since):
            yield since, top, examined  # the last window: down to the start
            return
        examined += per_s * width.total_seconds()
        yield lo, top, examined
        top, anchor, width = lo, lo, width * 2
    yield since, top, examined
