"""Detection quality of alarms and scores against labelled readings.

Inputs are per-reading arrays in time order: ``labels`` (0/1 or bool, 1 = the reading is part of an
anomaly), ``alarms`` (bool, the detector fired), optionally ``scores`` (higher = more anomalous),
``ts`` (datetime64, read as UTC) and ``event_ids`` (int, -1 = no event).

Definitions
-----------
- **Point** precision / recall / F1 over readings: TP = alarm on a labelled reading, FP = alarm on
  an unlabelled one, FN = labelled reading without alarm, TN = unlabelled reading without alarm.
  **FAR** (false alarm rate) = FP / (FP + TN), the share of the actual negatives that alarm; **MAR**
  (missed alarm rate) = FN / (TP + FN) = 1 - recall, the share of the actual positives missed.
- **Event**: with ``event_ids``, each distinct id of a device is one event (its readings need not be
  consecutive, e.g. a dropout labels only the reading after the gap); without, a maximal run of
  consecutive labelled readings of one device. An event is **detected** if at least one of its
  readings has an alarm, and then counts once however many of them fire. A **false-positive run**
  is a maximal run of consecutive alarms of one device containing no labelled reading. Event
  precision = detected / (detected + false-positive runs), event recall = detected / events: the
  event-wise convention of Hundman et al. (KDD 2018) and the range-based view with existence reward.
- **Event (sequence)**, ``event_sequence``: the same counts with events always taken as the maximal
  runs of consecutive labelled readings of a device, whatever ``event_ids`` say — exactly the
  definition of the NASA SMAP/MSL benchmark (a labelled sequence is detected if any flagged reading
  falls inside it; a flagged run sharing no reading with a labelled sequence is one false positive).
  Without ``event_ids`` it equals **Event**; with them (an injected dropout labels readings apart)
  the two differ.
- F1 = 2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall (0 when TP = 0 but
  something fired or was missed). A ratio whose denominator is 0 is undefined and reported as
  ``None`` (precision without any alarm, recall without any positive), never as a made-up 0 or 1.
- **PR-AUC** is the average precision of the scores, step-wise as scikit-learn's
  ``average_precision_score``: AP = Σₙ (Rₙ - Rₙ₋₁) Pₙ over the distinct score thresholds, highest
  first, tied scores entering together. ``None`` without labelled readings; NaN scores are refused.
- **Detection delay** of a detected event: from its first reading to its first reading with an
  alarm, in readings (positions in the device's series) and, with ``ts``, in seconds.
- **Judged / unjudged**: a reading is unjudged when the detector could not judge it (no threshold
  yet, no training part, ...; the reason is counted). It raises no alarm and counts as not flagged
  in every metric above, as it would in service.
- **False alarms per device-day**: alarms on unlabelled readings / device-days, a device-day being
  a UTC day on which the device has readings (the unit of the injection rates in
  `flead.datasets.inject`).

Pooled (micro-averaged) numbers over many devices pool the readings for point metrics and PR-AUC,
sum event counts (events, detected, false-positive runs: sums over devices, never means), and pool
the delays of all detected events; ``macro`` averages per-device values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

NO_EVENT = -1


@dataclass(frozen=True)
class PointScores:
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    false_alarm_rate: float | None  # FAR = fp / (fp + tn)
    missed_alarm_rate: float | None  # MAR = fn / (tp + fn)


@dataclass(frozen=True)
class EventScores:
    events: int
    detected: int
    false_positive_runs: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class DelayStats:
    detected: int  # events with a delay
    mean_readings: float | None
    median_readings: float | None
    mean_seconds: float | None  # None without timestamps
    median_seconds: float | None


@dataclass(frozen=True)
class DetectionReport:
    readings: int
    labelled: int
    alarms: int
    judged: int
    unjudged: dict[str, int]  # reason -> readings
    point: PointScores
    event: EventScores
    event_sequence: EventScores  # events = runs of labelled readings (the NASA SMAP/MSL definition)
    pr_auc: float | None  # None without scores or without labelled readings
    delay: DelayStats
    false_alarms: int
    device_days: int | None  # None without timestamps
    false_alarms_per_device_day: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    pooled: DetectionReport
    devices: dict[str, DetectionReport]
    macro: dict[str, float | None]

    def to_dict(self) -> dict:
        return {
            "pooled": self.pooled.to_dict(),
            "macro": dict(self.macro),
            "devices": {device: report.to_dict() for device, report in self.devices.items()},
        }


def point_scores(alarms: npt.ArrayLike, labels: npt.ArrayLike) -> PointScores:
    alarm, label = _as_bool(alarms, "alarms"), _as_bool(labels, "labels")
    _same_length(alarm=alarm, labels=label)
    tp = int(np.count_nonzero(alarm & label))
    fp = int(np.count_nonzero(alarm & ~label))
    fn = int(np.count_nonzero(~alarm & label))
    tn = int(alarm.size) - tp - fp - fn
    return PointScores(tp, fp, fn, tn, *_ratios(tp, fp, fn), _rate(fp, fp + tn), _rate(fn, tp + fn))


def event_index(
    labels: npt.ArrayLike, event_ids: npt.ArrayLike | None = None, devices: npt.ArrayLike | None = None
) -> np.ndarray:
    """Per reading, a dense event number 0..k-1 in order of first reading, or NO_EVENT.

    Without `event_ids`, events are maximal runs of labelled readings; runs never cross a change of
    `devices` (a per-reading device code, readings grouped by device). With `event_ids`, an event is
    one (device, id) pair, and ids must be set exactly on the labelled readings.
    """
    label = _as_bool(labels, "labels")
    device = _device_codes(devices, label.size)
    if event_ids is None:
        starts = label & ~(_previous(label) & _same_as_previous(device))
        return np.where(label, np.cumsum(starts) - 1, NO_EVENT)
    ids = np.asarray(event_ids)
    _same_length(event_ids=ids, labels=label)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"event_ids must be integers (NO_EVENT = {NO_EVENT} for none), got {ids.dtype}")
    has_id = ids >= 0
    if np.any(has_id != label):
        bad = int(np.count_nonzero(has_id != label))
        raise ValueError(f"event_ids must be set exactly on the labelled readings; {bad} readings disagree")
    out = np.full(label.size, NO_EVENT, dtype=np.int64)
    if label.any():
        dense_ids = np.unique(ids[label], return_inverse=True)[1].ravel()
        keys = device[label] * (dense_ids.max() + 1) + dense_ids
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        # Number events by their first reading, so numbering follows time within a device.
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        out[label] = rank[inverse.ravel()]
    return out


def event_scores(
    alarms: npt.ArrayLike,
    labels: npt.ArrayLike,
    event_ids: npt.ArrayLike | None = None,
    devices: npt.ArrayLike | None = None,
) -> EventScores:
    alarm, label = _as_bool(alarms, "alarms"), _as_bool(labels, "labels")
    _same_length(alarms=alarm, labels=label)
    device = _device_codes(devices, label.size)
    event = event_index(label, event_ids, device)
    n_events = int(event.max(initial=NO_EVENT)) + 1
    detected = int(np.count_nonzero(np.bincount(event[alarm & label], minlength=n_events)))
    run_starts = alarm & ~(_previous(alarm) & _same_as_previous(device))
    run = np.cumsum(run_starts) - 1
    n_runs = int(np.count_nonzero(run_starts))
    touching = np.unique(run[alarm & label]).size
    false_runs = n_runs - touching
    return EventScores(n_events, detected, false_runs, *_ratios(detected, false_runs, n_events - detected))


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """Step-wise area under the precision-recall curve; None when no reading is labelled."""
    score = np.asarray(scores, dtype=np.float64)
    label = _as_bool(labels, "labels")
    _same_length(scores=score, labels=label)
    if np.isnan(score).any():
        raise ValueError(
            f"scores contain {int(np.isnan(score).sum())} NaN values; fill them (e.g. with 0.0 for "
            "'not anomalous') or drop those readings before computing PR-AUC"
        )
    positives = int(label.sum())
    if positives == 0:
        return None
    order = np.argsort(-score, kind="stable")
    ranked, hit = score[order], label[order]
    tps = np.cumsum(hit)
    # Last position of each group of tied scores: a threshold admits the whole group at once.
    ends = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1]
    tp = tps[ends]
    precision = tp / (ends + 1)
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def detection_delays(
    alarms: npt.ArrayLike,
    labels: npt.ArrayLike,
    ts: npt.ArrayLike | None = None,
    event_ids: npt.ArrayLike | None = None,
    devices: npt.ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per detected event (in event order): delay in readings and, with `ts`, in seconds."""
    alarm, label = _as_bool(alarms, "alarms"), _as_bool(labels, "labels")
    _same_length(alarms=alarm, labels=label)
    event = event_index(label, event_ids, _device_codes(devices, label.size))
    positions = np.arange(label.size)
    _, start = np.unique(event[label], return_index=True)
    start = positions[label][start]
    fired = alarm & label
    detected, first = np.unique(event[fired], return_index=True)
    first = positions[fired][first]
    start = start[detected]
    readings = first - start
    if ts is None:
        return readings, None
    time = _as_datetime(ts, label.size)
    return readings, (time[first] - time[start]) / np.timedelta64(1, "s")


def delay_stats(readings: np.ndarray, seconds: np.ndarray | None) -> DelayStats:
    def mean(values: np.ndarray | None) -> float | None:
        return float(np.mean(values)) if values is not None and values.size else None

    def median(values: np.ndarray | None) -> float | None:
        return float(np.median(values)) if values is not None and values.size else None

    return DelayStats(int(readings.size), mean(readings), median(readings), mean(seconds), median(seconds))


def count_device_days(ts: npt.ArrayLike, devices: npt.ArrayLike | None = None) -> int:
    """Distinct (device, UTC day) pairs with readings."""
    time = _as_datetime(ts)
    device = _device_codes(devices, time.size)
    if np.isnat(time).any():
        raise ValueError("ts contains missing times (NaT); device-days need a time for every reading")
    if not time.size:
        return 0
    days = time.astype("datetime64[D]").astype(np.int64)
    days -= days.min()
    return int(np.unique(device * (days.max() + 1) + days).size)


def evaluate_device(
    labels: npt.ArrayLike,
    alarms: npt.ArrayLike,
    scores: npt.ArrayLike | None = None,
    ts: npt.ArrayLike | None = None,
    event_ids: npt.ArrayLike | None = None,
    unjudged: npt.ArrayLike | None = None,
) -> DetectionReport:
    """Every metric for one device's readings in time order.

    `unjudged`: per reading, why it was not judged (a non-empty text), or None / "" when judged.
    """
    return _report(labels, alarms, scores, ts, event_ids, unjudged, devices=None)


def evaluate_frame(
    frame: pl.DataFrame,
    *,
    alarm: str = "alarm",
    score: str | None = "score",
    label: str = "label",
    device: str = "device_id",
    ts: str | None = "ts",
    event_id: str | None = None,
    unjudged: str | None = None,
) -> Evaluation:
    """Per-device reports, their micro-averaged (pooled) report and macro averages.

    `frame` holds one row per reading; rows are ordered by device, then by `ts` when that column
    exists (else the frame's row order is each device's time order). `score` and `ts` are skipped
    when None or absent; `event_id` (nulls = no event) is used when given; `unjudged` (text, null =
    judged) names why a reading was not judged.
    """
    wanted = (alarm, label, device, event_id, unjudged)
    missing = [c for c in wanted if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; it has {frame.columns}")
    score = score if score is not None and score in frame.columns else None
    ts = ts if ts is not None and ts in frame.columns else None
    keys = [device, ts] if ts is not None else [device]
    frame = frame.sort(keys, maintain_order=True)
    if frame[alarm].null_count():
        raise ValueError(f"column {alarm!r} has {frame[alarm].null_count()} missing alarms")
    if score is not None and frame[score].null_count():
        raise ValueError(
            f"column {score!r} has {frame[score].null_count()} missing scores; fill them (e.g. with 0.0) "
            "or drop those readings before evaluating"
        )

    device_col = frame[device].cast(pl.String)
    if device_col.null_count():
        raise ValueError(f"column {device!r} has {device_col.null_count()} missing device ids")
    codes = device_col.rank("dense").to_numpy().astype(np.int64)
    arrays = {
        "labels": _label_array(frame[label]),
        "alarms": frame[alarm].to_numpy(),
        "scores": frame[score].cast(pl.Float64).to_numpy() if score is not None else None,
        "ts": _ts_array(frame[ts]) if ts is not None else None,
        "event_ids": frame[event_id].fill_null(NO_EVENT).to_numpy() if event_id is not None else None,
        "unjudged": frame[unjudged].cast(pl.String).to_numpy() if unjudged is not None else None,
    }
    pooled = _report(**arrays, devices=codes)
    starts = np.flatnonzero(~_same_as_previous(codes))
    devices = {}
    for a, b in zip(starts, np.r_[starts[1:], codes.size], strict=True):
        part = {name: None if values is None else values[a:b] for name, values in arrays.items()}
        devices[str(device_col[int(a)])] = _report(**part, devices=None)
    return Evaluation(pooled=pooled, devices=devices, macro=macro_average(devices))


def macro_average(reports: Mapping[str, DetectionReport]) -> dict[str, float | None]:
    """Unweighted mean over devices of each headline metric, skipping devices where it is undefined."""
    values = {
        "point_f1": [r.point.f1 for r in reports.values()],
        "event_f1": [r.event.f1 for r in reports.values()],
        "event_sequence_f1": [r.event_sequence.f1 for r in reports.values()],
        "pr_auc": [r.pr_auc for r in reports.values()],
        "false_alarms_per_device_day": [r.false_alarms_per_device_day for r in reports.values()],
    }
    return {
        name: float(np.mean(defined)) if (defined := [v for v in vs if v is not None]) else None
        for name, vs in values.items()
    }


def _report(
    labels: npt.ArrayLike,
    alarms: npt.ArrayLike,
    scores: npt.ArrayLike | None,
    ts: npt.ArrayLike | None,
    event_ids: npt.ArrayLike | None,
    unjudged: npt.ArrayLike | None,
    devices: np.ndarray | None,
) -> DetectionReport:
    label, alarm = _as_bool(labels, "labels"), _as_bool(alarms, "alarms")
    _same_length(labels=label, alarms=alarm)
    reasons = _unjudged_counts(unjudged, alarm)
    time = _as_datetime(ts, label.size) if ts is not None else None
    delays = detection_delays(alarm, label, time, event_ids, devices)
    false_alarms = int(np.count_nonzero(alarm & ~label))
    device_days = count_device_days(time, devices) if time is not None else None
    return DetectionReport(
        readings=int(label.size),
        labelled=int(label.sum()),
        alarms=int(alarm.sum()),
        judged=int(label.size) - sum(reasons.values()),
        unjudged=reasons,
        point=point_scores(alarm, label),
        event=event_scores(alarm, label, event_ids, devices),
        event_sequence=event_scores(alarm, label, None, devices),
        pr_auc=average_precision(scores, label) if scores is not None else None,
        delay=delay_stats(*delays),
        false_alarms=false_alarms,
        device_days=device_days,
        false_alarms_per_device_day=false_alarms / device_days if device_days else None,
    )


def _unjudged_counts(unjudged: npt.ArrayLike | None, alarm: np.ndarray) -> dict[str, int]:
    """Readings per reason of not being judged; an alarm on an unjudged reading is refused."""
    if unjudged is None:
        return {}
    reason = np.asarray(unjudged, dtype=object)
    _same_length(unjudged=reason, alarms=alarm)
    missing = np.array([r is not None and r != "" for r in reason], dtype=bool)
    if np.any(missing & alarm):
        raise ValueError(f"{int(np.count_nonzero(missing & alarm))} unjudged readings have an alarm")
    names, counts = np.unique(reason[missing].astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _ratios(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return precision, recall, f1


def _as_bool(values: npt.ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be booleans or 0/1, got dtype {array.dtype}")
    return array.astype(bool)


def _as_datetime(values: npt.ArrayLike, size: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.datetime64):
        raise ValueError(f"ts must be datetime64 values, got dtype {array.dtype}")
    if size is not None:
        _same_length(ts=array, labels=np.empty(size))
    return array.astype("datetime64[us]")


def _label_array(series: pl.Series) -> np.ndarray:
    if series.null_count():
        raise ValueError(f"column {series.name!r} has {series.null_count()} missing labels")
    return series.to_numpy()


def _ts_array(series: pl.Series) -> np.ndarray:
    if isinstance(series.dtype, pl.Datetime) and series.dtype.time_zone is not None:
        series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return series.to_numpy()


def _device_codes(devices: npt.ArrayLike | None, size: int) -> np.ndarray:
    if devices is None:
        return np.zeros(size, dtype=np.int64)
    codes = np.asarray(devices)
    _same_length(devices=codes, labels=np.empty(size))
    return np.unique(codes, return_inverse=True)[1].ravel()


def _previous(values: np.ndarray) -> np.ndarray:
    return np.r_[False, values[:-1]] if values.size else values


def _same_as_previous(values: np.ndarray) -> np.ndarray:
    return np.r_[False, values[1:] == values[:-1]] if values.size else np.zeros(0, dtype=bool)


def _same_length(**arrays: np.ndarray) -> None:
    sizes = {name: len(array) for name, array in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays differ in length: {sizes}")
