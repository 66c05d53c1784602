"""One device over a time range: what the dashboard's device page and ``flead plot`` draw.

Sources (each read for this device and range only):

- the lake (`flead.datasets.lake.scan_lake`, only the days of the range, filtered by device): every
  reading, each of the fleet schema's features;
- the newest batch evaluation (`flead.reporting.anomaly_report.evaluation_versions`) that scored
  this device in the range: a score and a threshold for every reading (the frozen global model of
  that version; the threshold is the evaluation's per-device quantile, not the stream trainer's
  live one). Without one, scores are known only where the stream trainer alarmed (its anomaly
  documents), and the view says so;
- MongoDB, when given: the stream trainer's anomaly documents (score, threshold, reason — ``model``
  or a rule such as ``out_of_range`` — and the global model version the device held) and its event
  documents (runs of alarms: start, end, reason). The model version *adoptions* are where that
  version changes along the device's alarms and events (first seen): the trainer keeps no history
  of adoptions beyond them.

Readings are thinned to at most ``max_points`` (every n-th, and the view says n); alarms are capped at
``MAX_ALARMS`` (the newest) and events at ``MAX_EVENTS``. No web framework, no plotting here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pymongo.database import Database

from flead.datasets.lake import lake_fleet, scan_lake
from flead.reporting.anomaly_report import evaluation_versions
from flead.schema import EPOCH

MAX_POINTS = 5000
MAX_ALARMS = 5000
MAX_EVENTS = 1000


class DeviceViewError(ValueError):
    """Bad input: a malformed time, or a start not before the end."""


class NoDeviceData(LookupError):
    """Nothing is known of the device in the range (no reading, alarm or event)."""


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    start: datetime | None  # inclusive, UTC (None: from the first reading)
    end: datetime | None  # exclusive, UTC (None: to the last)
    features: tuple[str, ...]
    readings: pl.DataFrame  # ts (UTC) + the features (+ score, threshold from the evaluation), thinned
    readings_total: int  # readings in the range before thinning
    stride: int  # every stride-th reading is kept
    evaluation_version: int | None  # the batch evaluation the scores come from, or None
    alarms: pl.DataFrame  # ts, score, threshold, reason, rule (bool), model_version
    alarms_capped: bool
    events: list[dict[str, Any]]  # start, end, reason, rule (bool), peak_severity, severity_class
    adoptions: list[tuple[datetime, int]]  # (first seen, global model version)
    notes: list[str] = field(default_factory=list)

    @property
    def score_source(self) -> str:
        if self.evaluation_version is not None:
            return f"batch evaluation of global model version {self.evaluation_version}"
        if self.alarms.height:
            return "the stream trainer's anomaly documents (scores at alarms only)"
        return "none"


def parse_time(text: str | None, *, end: bool = False) -> datetime | None:
    """An ISO 8601 date or time (UTC if naive). A date alone as an end means the end of that day."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise DeviceViewError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    first, last = parse_time(start), parse_time(end, end=True)
    if first is not None and last is not None and first >= last:
        raise DeviceViewError(f"the start ({start}) is not before the end ({end})")
    return first, last


def range_text(start: datetime | None, end: datetime | None) -> str:
    if start is None and end is None:
        return "over all days"
    a = "the beginning" if start is None else f"{start:%Y-%m-%d %H:%M:%S}"
    b = "the end" if end is None else f"{end:%Y-%m-%d %H:%M:%S}"
    return f"between {a} and {b} UTC"


def build_device_view(
    device_id: str,
    *,
    lake_dir: Path,
    evaluations_dir: Path,
    db: Database | None = None,
    anomalies_collection: str = "anomalies",
    events_collection: str = "anomaly_events",
    start: datetime | None = None,
    end: datetime | None = None,
    max_points: int = MAX_POINTS,
) -> DeviceView:
    """The device's view (NoDeviceData when it has no reading, alarm or event in the range)."""
    if start is not None and end is not None and start >= end:
        raise DeviceViewError("the start is not before the end")
    features = lake_fleet(Path(lake_dir)).feature_names
    notes: list[str] = []
    readings = _lake_readings(Path(lake_dir), device_id, features, start, end)
    version, scores = _evaluation_scores(Path(evaluations_dir), device_id, start, end)
    if scores is not None and readings.height:
        readings = readings.join(scores, on="ts", how="left")
    total = readings.height
    stride = max(1, math.ceil(total / max_points)) if max_points > 0 else 1
    if stride > 1:
        readings = readings.gather_every(stride)
        notes.append(f"showing every {stride}th of {total:,} readings (at most {max_points:,} points)")
    alarms, capped = _alarms(db, anomalies_collection, device_id, start, end)
    if capped:
        notes.append(f"showing the newest {MAX_ALARMS:,} alarms of more")
    events = _events(db, events_collection, device_id, start, end)
    if len(events) >= MAX_EVENTS:
        notes.append(f"showing the newest {MAX_EVENTS:,} events of more")
    if db is None:
        notes.append("MongoDB not read: no alarms, events or model versions")
    if version is None:
        notes.append(
            "no batch evaluation scored this device in this range: scores and thresholds are known "
            "only at the stream trainer's alarms"
        )
    if not total and not alarms.height and not events:
        raise NoDeviceData(f"no readings, alarms or events for device {device_id!r} {range_text(start, end)}")
    if not total:
        notes.append("no readings of this device in the lake for this range")
    return DeviceView(
        device_id=device_id,
        start=start,
        end=end,
        features=features,
        readings=readings,
        readings_total=total,
        stride=stride,
        evaluation_version=version,
        alarms=alarms,
        alarms_capped=capped,
        events=events,
        adoptions=_adoptions(alarms, events),
        notes=notes,
    )


def _utc(frame: pl.DataFrame, column: str = "ts") -> pl.DataFrame:
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return frame.with_columns(pl.col(column).dt.replace_time_zone("UTC"))
    return frame.with_columns(pl.col(column).dt.convert_time_zone("UTC"))


def _in_range(frame: pl.DataFrame, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    if start is not None:
        frame = frame.filter(pl.col("ts") >= start)
    if end is not None:
        frame = frame.filter(pl.col("ts") < end)
    return frame


def _days(start: datetime | None, end: datetime | None) -> tuple[date | None, date | None]:
    last = None if end is None else (end - timedelta(microseconds=1)).date()
    return (None if start is None else start.date()), last


def _lake_readings(
    root: Path, device_id: str, features: tuple[str, ...], start: datetime | None, end: datetime | None
) -> pl.DataFrame:
    first, last = _days(start, end)
    frame = scan_lake(root, first, last, devices=[device_id]).select("ts", *features).collect()
    return _in_range(_utc(frame), start, end).sort("ts")


def _evaluation_scores(
    root: Path, device_id: str, start: datetime | None, end: datetime | None
) -> tuple[int | None, pl.DataFrame | None]:
    """(version, ts/score/threshold) of the newest evaluation that scored the device in the range."""
    first, last = _days(start, end)
    for version, days in sorted(evaluation_versions(root).items(), reverse=True):
        files = [p for d, p in days.items() if (first is None or d >= first) and (last is None or d <= last)]
        if not files:
            continue
        frames = [
            pl.scan_parquet(path)
            .filter(pl.col("device_id") == device_id)
            .select("ts", pl.col("score").cast(pl.Float64), pl.col("threshold").cast(pl.Float64))
            .collect()
            for path in files
        ]
        frame = _in_range(pl.concat([_utc(f) for f in frames]), start, end)
        if frame.height:
            return version, frame.unique(subset="ts", keep="first").sort("ts")
    return None, None


def _exact(doc: dict, key: str, us_key: str) -> datetime:
    us = doc.get(us_key)
    if isinstance(us, int):
        return EPOCH + timedelta(microseconds=us)
    value = doc[key]
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def is_rule(reason: str | None) -> bool:
    """A rule alarm (a physical limit broken, e.g. ``out_of_range``) rather than the model's."""
    return reason not in (None, "model")


ALARM_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "score": pl.Float64(),
    "threshold": pl.Float64(),
    "reason": pl.String(),
    "rule": pl.Boolean(),
    "model_version": pl.Int64(),
}


def _time_query(key: str, start: datetime | None, end: datetime | None) -> dict:
    bounds = {}
    if start is not None:
        bounds["$gte"] = start
    if end is not None:
        bounds["$lt"] = end
    return {key: bounds} if bounds else {}


def _alarms(
    db: Database | None, name: str, device_id: str, start: datetime | None, end: datetime | None
) -> tuple[pl.DataFrame, bool]:
    if db is None:
        return pl.DataFrame(schema=ALARM_SCHEMA), False
    query = {"device_id": device_id, **_time_query("ts", start, end)}
    projection = {"ts": 1, "ts_us": 1, "score": 1, "threshold": 1, "reason": 1, "model_version": 1}
    docs = list(db[name].find(query, projection).sort([("ts", -1), ("_id", -1)]).limit(MAX_ALARMS + 1))
    capped = len(docs) > MAX_ALARMS
    rows = [
        {
            "ts": _exact(d, "ts", "ts_us"),
            "score": _finite(d.get("score")),
            "threshold": _finite(d.get("threshold")),
            "reason": d.get("reason") or "model",
            "rule": is_rule(d.get("reason")),
            "model_version": d.get("model_version") if isinstance(d.get("model_version"), int) else None,
        }
        for d in docs[:MAX_ALARMS]
    ]
    return pl.DataFrame(rows, schema=ALARM_SCHEMA).sort("ts"), capped


def _events(
    db: Database | None, name: str, device_id: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Events that overlap the range (end >= start, start < end), oldest first."""
    if db is None:
        return []
    query: dict[str, Any] = {"device_id": device_id}
    if start is not None:
        query["end"] = {"$gte": start}
    if end is not None:
        query["start"] = {"$lt": end}
    docs = db[name].find(query).sort([("start", -1), ("_id", -1)]).limit(MAX_EVENTS)
    events = [
        {
            "start": _exact(d, "start", "start_us"),
            "end": _exact(d, "end", "end_us"),
            "reason": d.get("reason") or "model",
            "rule": bool(d.get("rule_alarms")) or is_rule(d.get("reason")),
            "peak_severity": _finite(d.get("peak_severity")),
            "severity_class": d.get("severity_class") or "",
            "open": bool(d.get("open")),
            "model_version": d.get("model_version") if isinstance(d.get("model_version"), int) else None,
        }
        for d in docs
    ]
    return sorted(events, key=lambda e: e["start"])


def _adoptions(alarms: pl.DataFrame, events: list[dict[str, Any]]) -> list[tuple[datetime, int]]:
    """Where the global model version the device held changes (first seen in its alarms and events)."""
    seen = [(ts, v) for ts, v in alarms.select("ts", "model_version").iter_rows() if v is not None]
    seen += [(e["start"], e["model_version"]) for e in events if e["model_version"] is not None]
    changes: list[tuple[datetime, int]] = []
    for ts, version in sorted(seen):
        if not changes or changes[-1][1] != version:
            changes.append((ts, version))
    return changes
