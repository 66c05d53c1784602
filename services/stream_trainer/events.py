"""One device's alarms grouped into events online (`flead.model.events.EventBuilder`), as the
documents of ``collection_events``.

A flagged reading is a model alarm (severity > 1) or a rule alarm (a physical limit broken,
`flead.model.rules`); a rule alarm counts as at least ``min_severity``, so it is never pruned as
weak. An event is written once it meets ``min_duration`` and ``min_severity`` (``open``: true),
rewritten as it grows, and closed (``open``: false) once ``merge_gap`` readings pass without an alarm.
Its ``_id`` is ``f"{device_id}:{start}"`` (the first alarm's event time, ISO with microseconds), so
rewriting is idempotent and a restart, which replays the readings after its checkpoint from the
checkpointed builder state, writes the same documents again.

``top_features``: the features with the largest share of the squared reconstruction errors summed over
the event's alarms (`OnlineDetector.process_many(explain=True)`). ``reason``: "model", "rule" or
"model+rule" (both kinds of alarm in one event). ``severity_class``: "critical" (a rule alarm, or a
peak >= 10 times the threshold), "major" (>= 4), else "minor".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import numpy as np

from flead.model.events import EventBuilder, EventChange, EventConfig
from flead.schema import EPOCH
from services.stream_trainer.devices import DeviceSlot, ScoredChunk

TOP_FEATURES = 3
CRITICAL, MAJOR = 10.0, 4.0


@dataclass
class Aggregate:
    """What an event holds beyond the builder's indices (event times in epoch microseconds)."""

    start_us: int
    end_us: int
    peak_us: int
    peak_score: float
    model: int = 0  # model alarms
    rule: int = 0  # rule alarms
    errors: list[float] = field(default_factory=list)  # squared errors summed per feature


class DeviceEvents:
    def __init__(self, config: EventConfig | None = None) -> None:
        self.builder = EventBuilder(config)
        self.open: Aggregate | None = None  # of the builder's open group

    def configure(self, config: EventConfig) -> None:
        self.builder.config = config

    def push(self, slot: DeviceSlot, chunk: ScoredChunk) -> list[dict]:
        """The chunk's readings through the builder: the event documents to (re)write."""
        base = self.builder.position
        min_severity = self.builder.config.min_severity
        severity = np.where(chunk.out_of_range, np.maximum(chunk.severity, min_severity), chunk.severity)
        documents = []
        for change in self.builder.push(chunk.is_anomaly, severity):
            aggregate = self._aggregate(change, chunk, base)
            if change.kept:
                documents.append(event_document(slot, change, aggregate))
        return documents

    def _aggregate(self, change: EventChange, chunk: ScoredChunk, base: int) -> Aggregate:
        event, n = change.event, len(chunk.rows)
        lo, hi = max(event.start - base, 0), min(event.end - base + 1, n)
        ts = chunk.rows["ts"].astype("int64")
        aggregate = self.open if self.open is not None and event.start < base else None
        if aggregate is None:
            aggregate = Aggregate(int(ts[lo]), int(ts[lo]), int(ts[lo]), -np.inf)
            aggregate.errors = [0.0] * chunk.feature_errors.shape[1]
        if hi > lo:
            flagged = np.flatnonzero(chunk.is_anomaly[lo:hi]) + lo
            rule = chunk.out_of_range[flagged]
            aggregate.end_us = int(ts[hi - 1])
            aggregate.rule += int(rule.sum())
            aggregate.model += int((~rule).sum())
            if flagged.size:
                aggregate.peak_score = max(aggregate.peak_score, float(chunk.score[flagged].max()))
                sums = np.nansum(chunk.feature_errors[flagged], axis=0)
                aggregate.errors = [a + float(b) for a, b in zip(aggregate.errors, sums, strict=True)]
        if base <= event.peak < base + n:
            aggregate.peak_us = int(ts[event.peak - base])
        self.open = None if change.closed else aggregate
        return aggregate

    def state_dict(self) -> dict:
        return {
            "builder": self.builder.state_dict(),
            "open": None if self.open is None else asdict(self.open),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> DeviceEvents:
        events = cls()
        try:
            events.builder = EventBuilder.from_state_dict(state["builder"])
            if state["open"] is not None:
                events.open = Aggregate(**state["open"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad device events state: {exc!r}") from exc
        return events


def event_document(slot: DeviceSlot, change: EventChange, aggregate: Aggregate) -> dict:
    event = change.event
    start, end = _time(aggregate.start_us), _time(aggregate.end_us)
    total = sum(aggregate.errors)
    ranked = sorted(zip(slot.features, aggregate.errors, strict=True), key=lambda fe: -fe[1])
    top = [
        {"feature": f, "share": round(e / total, 4)} for f, e in ranked[:TOP_FEATURES] if total > 0 and e > 0
    ]
    reason = "model+rule" if aggregate.rule and aggregate.model else "rule" if aggregate.rule else "model"
    peak = event.peak_severity
    severity_class = (
        "critical" if aggregate.rule or peak >= CRITICAL else "major" if peak >= MAJOR else "minor"
    )
    start_text = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "_id": f"{slot.device_id}:{start_text}",
        "device_id": slot.device_id,
        "partition": slot.partition,
        "start": start,  # BSON dates keep milliseconds: start_us / end_us are exact
        "end": end,
        "start_us": aggregate.start_us,
        "end_us": aggregate.end_us,
        "start_text": start_text,
        "duration_s": (aggregate.end_us - aggregate.start_us) / 1e6,
        "readings": event.end - event.start + 1,  # from the first alarm to the last
        "flagged": event.flagged,
        "model_alarms": aggregate.model,
        "rule_alarms": aggregate.rule,
        "peak_score": aggregate.peak_score,
        "peak_severity": peak,
        "peak_ts": _time(aggregate.peak_us),
        "severity_class": severity_class,
        "reason": reason,
        "top_features": top,
        "open": not change.closed,
        "model_version": slot.client.base_version,
        "model_lineage": slot.lineage,
    }


def _time(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
