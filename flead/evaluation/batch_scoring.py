"""Batch evaluation of a frozen global model over the Parquet lake (NumPy, polars, pyarrow only).

Every device is scored the way the stream trainer would score it with the global model's weights and
learning switched off: the device's readings in time order go through an `OnlineDetector` built from
the global model (``process_many(learn=False)``, micro-batches of ``TrainConfig.batch_size``), with

- the network frozen: the global weights, never trained here;
- the device's own normaliser, fitted on all of the device's readings in the call before scoring
  (the global model's normaliser is an average of nobody in particular);
- a per-device threshold: the evaluation quantile (``Settings.evaluation_threshold_quantile``) of the
  device's own scores over the call's days. A batch evaluation sees the whole range, so every reading
  is judged (no warm-up) and each device spends the same alarm budget: precision, recall and F1 then
  compare how well versions *rank* the labelled anomalies, which is what the version check needs.
  (An online-style adaptive threshold was tried first: its ~1,500-reading warm-up left 39 % of a
  3-day evaluation unjudged and it alarmed on 9 % of the rest.)
- readings outside the sensors' physical limits (the lake's fleet schema, `flead.model.rules`) ORed
  into the alarm, as the stream trainer does.

A device's results depend only on its own readings (sorted by time, ties broken by the values), so
they are the same whatever the row order of the input or how devices are split across batches or
Spark partitions; they do depend on which days are scored together (one call: the normaliser and the
threshold see all of them).

Scored rows (`SCORED_SCHEMA`): device_id, ts, date (UTC day), score (float32), threshold (float32, the
device's), is_anomaly, out_of_range, label (null without labels).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from flead.datasets import lake
from flead.evaluation.metrics import point_scores
from flead.fleet import INTEL_LAB
from flead.model import rules
from flead.model.anomaly_model import AnomalyModel
from flead.model.config import TrainConfig
from flead.model.detector import OnlineDetector
from flead.model.normalizer import RunningNormalizer

DEVICE, TS, DATE, LABEL, EVENT = "device_id", "ts", "date", "label", "event_id"
SCORED_SCHEMA = pa.schema(
    [
        pa.field(DEVICE, pa.string()),
        pa.field(TS, pa.timestamp("us", tz="UTC")),
        pa.field(DATE, pa.date32()),
        pa.field("score", pa.float32()),
        pa.field("threshold", pa.float32()),
        pa.field("is_anomaly", pa.bool_()),
        pa.field("out_of_range", pa.bool_()),
        pa.field(LABEL, pa.bool_()),
    ]
)
VERSION_COLUMN = "version"
SCORE_QUANTILE = 0.99  # score_p99


# ----------------------------------------------------------------------------------------- scoring


def score_table(
    table: pa.Table,
    model_bytes: bytes,
    *,
    quantile: float,
    train: TrainConfig | None = None,
    ranges: Mapping[str, tuple[float, float]] = INTEL_LAB.valid_ranges,
) -> pa.Table:
    """Score every reading of `table` with the frozen model `model_bytes` (`AnomalyModel.to_bytes`).

    `table` needs device_id, ts and the model's columns (features and inputs); ``label`` (bool or
    0/1) is carried over when present. `ranges`: the fleet schema's physical limits. Rows come back
    in `SCORED_SCHEMA`, one per input row, sorted by device and time. `train` sets the detector's
    micro-batch size and warm-up (default `TrainConfig()`, as the stream trainer runs); its learning
    settings are unused, nothing is learned.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be within (0, 1), got {quantile}")
    model = AnomalyModel.from_bytes(model_bytes)
    columns = model.config.columns
    frame = _prepare(table, columns)
    n = frame.height
    scores = np.zeros(n)
    thresholds = np.full(n, np.nan)
    alarms = np.zeros(n, bool)
    values = frame.select(columns).to_numpy().astype(np.float64, copy=False)
    ts = frame.get_column(TS).dt.replace_time_zone(None).to_numpy()
    device = frame.get_column(DEVICE)
    starts = np.flatnonzero(device.ne_missing(device.shift(1)).to_numpy()).tolist()
    for lo, hi in zip(starts, [*starts[1:], n], strict=True):
        detector = _device_detector(model, values[lo:hi], train)
        out = detector.process_many(values[lo:hi], ts=ts[lo:hi], learn=False)
        scores[lo:hi] = out.get_column("score").to_numpy()
        finite = np.isfinite(scores[lo:hi])
        if finite.any():
            thresholds[lo:hi] = np.quantile(scores[lo:hi][finite], quantile)
            alarms[lo:hi] = scores[lo:hi] > thresholds[lo:hi]
    out_of_range = rules.out_of_range(values, columns, ranges)
    return pa.table(
        [
            frame.get_column(DEVICE).cast(pl.String).to_arrow().cast(pa.string()),
            frame.get_column(TS).to_arrow().cast(pa.timestamp("us", tz="UTC")),
            frame.get_column(TS).dt.date().to_arrow(),
            pa.array(scores.astype(np.float32)),
            pa.array(thresholds.astype(np.float32)),
            pa.array(alarms | out_of_range),
            pa.array(out_of_range),
            frame.get_column(LABEL).to_arrow().cast(pa.bool_()),
        ],
        schema=SCORED_SCHEMA,
    )


def _prepare(table: pa.Table, features: tuple[str, ...]) -> pl.DataFrame:
    """The columns scoring needs, typed, sorted by device then time (ties broken by every value)."""
    frame = pl.from_arrow(table)
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"expected a pyarrow Table, got {type(table).__name__}")
    missing = [c for c in (DEVICE, TS, *features) if c not in frame.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; it has {frame.columns}")
    ts = frame.get_column(TS)
    if not isinstance(ts.dtype, pl.Datetime):
        raise ValueError(f"column {TS!r} must be a timestamp, got {ts.dtype}")
    ts_expr = pl.col(TS)
    if ts.dtype.time_zone is None:
        ts_expr = ts_expr.dt.replace_time_zone("UTC")  # naive times are read as UTC, like the lake's
    elif ts.dtype.time_zone != "UTC":
        ts_expr = ts_expr.dt.convert_time_zone("UTC")
    for column in (DEVICE, TS):
        if frame.get_column(column).null_count():
            raise ValueError(f"column {column!r} has {frame.get_column(column).null_count()} missing values")
    label = pl.col(LABEL).cast(pl.Boolean) if LABEL in frame.columns else pl.lit(None, pl.Boolean)
    frame = frame.select(
        pl.col(DEVICE).cast(pl.String),
        ts_expr.dt.cast_time_unit("us").alias(TS),
        *(pl.col(f).cast(pl.Float64) for f in features),
        label.alias(LABEL),
    )
    return frame.sort([DEVICE, TS, *features, LABEL], nulls_last=True)


def _device_detector(model: AnomalyModel, values: np.ndarray, train: TrainConfig | None) -> OnlineDetector:
    """A detector on the frozen global network with the device's own normaliser, fitted on all of the
    device's readings first (batch evaluation knows the device's history; the global model's
    normaliser is an average of nobody in particular)."""
    own = copy.deepcopy(model)
    own.normalizer = RunningNormalizer(own.config.n_columns, own.config.min_std)
    own.normalizer.update(values)
    return OnlineDetector(model=own, train=train)


# ------------------------------------------------------------------------------------ the lake


def lake_sources(
    lake_dir: Path | str, days: Iterable[date], labelled_dir: Path | str | None = None
) -> tuple[list[Path], bool]:
    """The Parquet files to score for `days` and whether they carry labels.

    The labelled copy is used when `labelled_dir` has a partition for every one of the days, else
    the lake itself; a day missing from the lake is an error (the lake writes a file, maybe empty,
    for every day it covers).
    """
    chosen = sorted(set(days))
    if not chosen:
        raise ValueError("no days to score")
    if labelled_dir is not None:
        labelled = [lake.partition_path(Path(labelled_dir), d) for d in chosen]
        if all(p.is_file() for p in labelled):
            return labelled, True
    paths = [lake.partition_path(Path(lake_dir), d) for d in chosen]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the lake has no partition for {len(missing)} of the days: {missing[:3]}")
    return paths, False


def source_columns(features: Iterable[str], labelled: bool) -> list[str]:
    """The columns score_table reads from lake files."""
    return [DEVICE, TS, *features, *([LABEL] if labelled else [])]


def model_columns(model_bytes: bytes) -> tuple[str, ...]:
    """What the model reads of each reading: its features, then its inputs."""
    return AnomalyModel.from_bytes(model_bytes).config.columns


def score_lake(
    lake_dir: Path | str,
    days: Iterable[date],
    model_bytes: bytes,
    *,
    quantile: float,
    labelled_dir: Path | str | None = None,
    train: TrainConfig | None = None,
) -> pl.DataFrame:
    """Score `days` of the lake (or of its labelled copy, see `lake_sources`) in-process."""
    paths, labelled = lake_sources(lake_dir, days, labelled_dir)
    columns = source_columns(model_columns(model_bytes), labelled)
    table = pl.read_parquet(paths, columns=columns).to_arrow()
    ranges = lake.lake_fleet(Path(lake_dir)).valid_ranges
    scored = pl.from_arrow(score_table(table, model_bytes, quantile=quantile, train=train, ranges=ranges))
    assert isinstance(scored, pl.DataFrame)
    return canonical_order(scored)


def canonical_order(scored: pl.DataFrame) -> pl.DataFrame:
    """Scored rows sorted by device and time, readings at the same time by their other columns: the
    order `score_lake` and the Spark path both return, so that equal results are equal frames."""
    return scored.sort(SCORED_SCHEMA.names, nulls_last=True)


# -------------------------------------------------------------------------------------- metrics


def device_metrics(scored: pl.DataFrame) -> pl.DataFrame:
    """Per device (sorted by id): readings, alarms, alarm_rate, out_of_range, score_mean, score_p99,
    and point-wise labelled, tp, fp, fn, precision, recall, f1 over its labelled, in-range readings (null
    where the device has none, or where a ratio is undefined: see `flead.evaluation.metrics`)."""
    rows = [
        {DEVICE: device, **_metrics(part)}
        for (device,), part in sorted(scored.partition_by(DEVICE, as_dict=True).items())
    ]
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def overall_metrics(scored: pl.DataFrame) -> dict:
    """The keys of `device_metrics` pooled over every reading (plus ``devices``); plain Python values."""
    return {"devices": scored.get_column(DEVICE).n_unique(), **_metrics(scored)}


METRICS_SCHEMA: dict[str, pl.DataType] = {
    DEVICE: pl.String(),
    "readings": pl.Int64(),
    "alarms": pl.Int64(),
    "alarm_rate": pl.Float64(),
    "out_of_range": pl.Int64(),
    "score_mean": pl.Float64(),
    "score_p99": pl.Float64(),
    "labelled": pl.Int64(),  # readings with a label (true or false)
    "tp": pl.Int64(),
    "fp": pl.Int64(),
    "fn": pl.Int64(),
    "precision": pl.Float64(),
    "recall": pl.Float64(),
    "f1": pl.Float64(),
}


def _metrics(part: pl.DataFrame) -> dict:
    readings = part.height
    alarms = int(part.get_column("is_anomaly").sum())
    score = part.get_column("score").cast(pl.Float64)
    out = {
        "readings": readings,
        "alarms": alarms,
        "alarm_rate": alarms / readings if readings else None,
        "out_of_range": int(part.get_column("out_of_range").sum()),
        "score_mean": float(score.mean()) if readings else None,  # type: ignore[arg-type]
        "score_p99": float(score.quantile(SCORE_QUANTILE, "linear")) if readings else None,  # type: ignore[arg-type]
    }
    # Out-of-range readings are the rule's alarms, not the model's: like `flead.evaluation.runner`, the
    # point metrics leave them out.
    judged = part.filter(pl.col(LABEL).is_not_null() & ~pl.col("out_of_range"))
    if judged.is_empty():
        return {**out, **dict.fromkeys(("labelled", "tp", "fp", "fn", "precision", "recall", "f1"))}
    point = point_scores(judged.get_column("is_anomaly").to_numpy(), judged.get_column(LABEL).to_numpy())
    return {
        **out,
        "labelled": judged.height,
        "tp": point.tp,
        "fp": point.fp,
        "fn": point.fn,
        "precision": point.precision,
        "recall": point.recall,
        "f1": point.f1,
    }


# -------------------------------------------------------------------------------------- output


def scored_path(evaluations_dir: Path | str, version: int, day: date) -> Path:
    return (
        Path(evaluations_dir)
        / f"{VERSION_COLUMN}={version}"
        / f"{DATE}={day.isoformat()}"
        / lake.PARTITION_FILE
    )


def write_scored(
    scored: pl.DataFrame, evaluations_dir: Path | str, version: int, days: Iterable[date] = ()
) -> list[Path]:
    """Write the scored rows of each day to ``evaluations_dir/version=V/date=YYYY-MM-DD/part-0.parquet``.

    Each day's file is replaced atomically; other days and versions are untouched. Every day in `days`
    gets a file too (empty when it has no rows). The hive columns (version, date) live in the path,
    not in the file, as in the lake; rows are sorted by device and time, so equal input gives equal
    files. Returns the paths written, by day.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an integer >= 0, got {version!r}")
    columns = [c for c in SCORED_SCHEMA.names if c != DATE]
    by_day = {key[0]: part for key, part in scored.partition_by(DATE, as_dict=True).items()}
    for day in days:
        by_day.setdefault(day, scored.clear())
    paths = []
    for day in sorted(by_day):
        path = scored_path(evaluations_dir, version, day)
        lake.write_parquet_atomic(canonical_order(by_day[day]).select(columns), path)
        paths.append(path)
    return paths
