"""Measure detection quality on labelled readings: federated, local-only, centralized or z-score.

Every mode judges readings the same way (a per-device adaptive quantile threshold on its scores,
calibrated on the training part first), so the comparison is between scorers and training regimes,
not between thresholding schemes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from flead.datasets import lake
from flead.datasets.inject import EVENTS_FILE
from flead.evaluation.loader import DEVICE, EVENT, LABEL, TS, LabelledSeries, split_series
from flead.evaluation.metrics import Evaluation, evaluate_frame
from flead.evaluation.zscore import rolling_zscore
from flead.federated.simulate import SimulationConfig, simulate
from flead.model.config import ModelConfig
from flead.model.thresholds import QuantileThreshold
from flead.schema import MEASUREMENTS

EVALUATION_MODES = ("federated", "local", "centralized", "zscore")


@dataclass(frozen=True)
class EvaluationPlan:
    mode: str = "federated"
    train_fraction: float | None = None
    train_rows: int | None = None
    online: bool = False
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    threshold_quantile: float = 0.98  # every mode alarms above this per-device quantile of its scores
    zscore_window: int = 100

    def __post_init__(self) -> None:
        if self.mode not in EVALUATION_MODES:
            raise ValueError(f"mode must be one of {EVALUATION_MODES}, got {self.mode!r}")
        chosen = (self.train_fraction is not None) + (self.train_rows is not None) + self.online
        if chosen != 1:
            raise ValueError("choose exactly one of train_fraction, train_rows and online")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be within (0, 1), got {self.threshold_quantile}")


@dataclass
class EvaluationOutcome:
    mode: str
    evaluation: Evaluation
    readings_trained: int
    readings_scored: int
    seconds: float
    history: list[dict]

    @property
    def seconds_per_million(self) -> float:
        total = self.readings_trained + self.readings_scored
        return self.seconds / total * 1e6 if total else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "readings_trained": self.readings_trained,
            "readings_scored": self.readings_scored,
            "seconds": round(self.seconds, 3),
            "seconds_per_million_readings": round(self.seconds_per_million, 3),
            "global_versions": len(self.history),
            **self.evaluation.to_dict(),
        }


def load_lake_benchmark(labelled_dir: Path) -> tuple[LabelledSeries, int]:
    """The labelled benchmark as a LabelledSeries, and how many out-of-range readings were left out.

    Readings the lake already flags `out_of_range` (a dying battery's 122 C) are rule-detected
    failures, not what the injected labels describe: they are dropped rather than counted as false
    alarms of every detector.
    """
    days = lake.list_partitions(labelled_dir)
    if not days:
        raise FileNotFoundError(
            f"no labelled benchmark under {labelled_dir}: run `flead data ingest` then `flead data inject`"
        )
    frame = pl.read_parquet([lake.partition_path(labelled_dir, d) for d in days])
    dropped = int(frame["out_of_range"].sum())
    frame = (
        frame.filter(~pl.col("out_of_range"))
        .select(DEVICE, TS, *MEASUREMENTS, pl.col("label").cast(pl.Int8).alias(LABEL), EVENT)
        .sort(DEVICE, TS, maintain_order=True)
    )
    files = (*(lake.partition_path(labelled_dir, d) for d in days), labelled_dir / EVENTS_FILE)
    return LabelledSeries(frame=frame, features=MEASUREMENTS, files=files), dropped


def evaluate(
    series: LabelledSeries,
    plan: EvaluationPlan,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationOutcome:
    frame = series.frame.with_row_index("_i")
    order = series.order_column
    if plan.online:
        train, scored = frame, None
    else:
        train, scored = split_series(frame, train_fraction=plan.train_fraction, train_rows=plan.train_rows)
    judged = scored if scored is not None else train
    if judged.is_empty():
        raise ValueError("nothing left to score: lower --train-fraction / --train-rows")

    started = time.perf_counter()
    history: list[dict] = []
    if plan.mode == "zscore":
        outputs = _zscore(
            frame, series.features, plan.zscore_window, plan.simulation.batch_size, plan.threshold_quantile
        )
        decisions = outputs[judged["_i"].to_numpy()]
    else:
        model = _model_config(plan.simulation.model, series.features, order == TS)
        config = SimulationConfig(
            **{**plan.simulation.__dict__, "model": model, "threshold_quantile": plan.threshold_quantile}
        )
        result = simulate(
            _streams(train, series.features, order),
            _streams(scored, series.features, order) if scored is not None else None,
            plan.mode,
            config,
            progress,
        )
        history = result.history
        decisions = result.outputs.select("score", "is_anomaly")
    seconds = time.perf_counter() - started

    evaluated = judged.select(
        DEVICE, order, LABEL, *([EVENT] if EVENT in judged.columns else [])
    ).with_columns(decisions)
    evaluation = evaluate_frame(
        evaluated,
        alarm="is_anomaly",
        score="score",
        ts=TS if order == TS else None,
        event_id=EVENT if EVENT in judged.columns else None,
    )
    return EvaluationOutcome(
        mode=plan.mode,
        evaluation=evaluation,
        readings_trained=train.height if scored is not None else 0,
        readings_scored=judged.height,
        seconds=seconds,
        history=history,
    )


def _model_config(base: ModelConfig, features: tuple[str, ...], has_time: bool) -> ModelConfig:
    if tuple(base.features) == tuple(features) and base.time_features == has_time:
        return base
    return ModelConfig(**{**base.to_dict(), "features": features, "time_features": has_time, "min_std": ()})


def _streams(frame: pl.DataFrame, features: tuple[str, ...], order: str) -> dict[str, pl.DataFrame]:
    columns = [*features, *([TS] if order == TS else [])]
    return {key[0]: part.select(columns) for key, part in frame.partition_by(DEVICE, as_dict=True).items()}


def _zscore(frame: pl.DataFrame, features, window: int, batch_size: int, quantile: float) -> pl.DataFrame:
    """Rolling z-scores over each device's whole series, judged by the same adaptive threshold as the
    neural detectors (micro-batch by micro-batch, from the state before each batch)."""
    scores = rolling_zscore(frame, features, window=window).fill_null(0.0).to_numpy()
    flags = np.zeros(frame.height, bool)
    rows = frame.select(DEVICE).with_row_index("_i").group_by(DEVICE, maintain_order=True).agg("_i")
    for _device, index in rows.iter_rows():
        threshold = QuantileThreshold(q=quantile)
        for lo in range(0, len(index), batch_size):
            chunk = np.asarray(index[lo : lo + batch_size])
            _, flags[chunk] = threshold.process_many(scores[chunk])
    return pl.DataFrame({"score": scores, "is_anomaly": flags})
