"""Measure detection quality on labelled readings: the detector (federated, local-only or
centralized training) and the references (`flead.evaluation.references`), on the same split.

The split: each device's train part (its first fraction or first N rows, or the data's own split
from separate files or a split column) trains and calibrates, the rest is scored; or online, every
reading is scored, then learned. The train part is taken as normal: its labels only feed
`describe_split`. Every mode's threshold is calibrated per device on normal scores at the same
`false_alarm_rate`: the detector's own calibration (`flead.federated.simulate`), the references'
`calibrated_threshold` of their scores of the train part; `threshold_quantile` gives the detector
modes the old alarm budget instead (the q-quantile of a device's scores so far).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from flead.datasets import lake
from flead.datasets.inject import EVENTS_FILE
from flead.evaluation.loader import DEVICE, EVENT, IS_TRAIN, LABEL, TS, LabelledSeries, split_series
from flead.evaluation.metrics import Evaluation, evaluate_frame
from flead.evaluation.references import REFERENCES, ReferenceConfig, score_reference
from flead.federated.simulate import MODES as DETECTOR_MODES
from flead.federated.simulate import SimulationConfig, SimulationResult, simulate
from flead.model.config import ModelConfig
from flead.model.events import EventConfig, group_events
from flead.privacy.config import PrivacyConfig

EVALUATION_MODES = (*DETECTOR_MODES, *REFERENCES)
ANOMALY_TYPE = "anomaly_type"
RANKED_BY = "ranked_by"  # what PR-AUC ranks: a detector's severity, a reference's score
NO_THRESHOLD = "detector: no threshold yet (no calibration of its own or the fleet's)"


@dataclass(frozen=True)
class EvaluationPlan:
    mode: str = "federated"
    train_fraction: float | None = None
    train_rows: int | None = None
    online: bool = False
    given_split: bool = False  # the series' own train/test split (`LabelledSeries.has_split`)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    threshold_quantile: float | None = None  # a number: the detector modes' old alarm budget instead
    false_alarm_rate: float = 1e-3  # every calibrated threshold's per-reading false-alarm target
    zscore_window: int = 100
    pca_variance: float = 0.95
    # Columns of the series that the detector modes take as inputs (they explain the features but are
    # not scored: `ModelConfig.inputs`); every mode and reference scores only the other features.
    inputs: tuple[str, ...] = ()
    # The detector modes' alarms grouped into events (merged, weak ones pruned) before they are
    # scored, as the stream trainer reports them; None: every flagged reading counts as it is.
    events: EventConfig | None = field(default_factory=EventConfig)

    def __post_init__(self) -> None:
        if self.mode not in EVALUATION_MODES:
            raise ValueError(f"mode must be one of {EVALUATION_MODES}, got {self.mode!r}")
        chosen = (self.train_fraction is not None) + (self.train_rows is not None) + self.online
        if chosen + self.given_split != 1:
            raise ValueError("choose exactly one of train_fraction, train_rows, online and given_split")
        if self.threshold_quantile is not None and not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be within (0, 1), got {self.threshold_quantile}")
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must be within (0, 1), got {self.false_alarm_rate}")


@dataclass
class EvaluationOutcome:
    mode: str
    evaluation: Evaluation
    readings_trained: int
    readings_scored: int
    seconds: float
    history: list[dict]
    # Injected benchmarks: per anomaly type, the share of its labelled readings that alarmed.
    recall_by_type: dict[str, float] = field(default_factory=dict)
    # One row per judged reading: device, time or row, label(, event_id, anomaly_type), score,
    # is_anomaly (after the event grouping, if any) and unjudged (why not, or null).
    readings: pl.DataFrame | None = field(default=None, repr=False)
    # Federated mode: the updates each device sent and, with differential privacy, the epsilons
    # (`privacy_summary`).
    privacy: dict | None = None

    @property
    def seconds_per_million(self) -> float:
        total = self.readings_trained + self.readings_scored
        return self.seconds / total * 1e6 if total else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "kind": "reference" if self.mode in REFERENCES else "detector",
            "readings_trained": self.readings_trained,
            "readings_scored": self.readings_scored,
            "seconds": round(self.seconds, 3),
            "seconds_per_million_readings": round(self.seconds_per_million, 3),
            "global_versions": len(self.history),
            **self.evaluation.to_dict(),
            "recall_by_type": self.recall_by_type,
            **({"privacy": self.privacy} if self.privacy is not None else {}),
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
    columns = lake.lake_fleet(labelled_dir).columns
    frame = pl.read_parquet([lake.partition_path(labelled_dir, d) for d in days])
    dropped = int(frame["out_of_range"].sum())
    frame = (
        frame.filter(~pl.col("out_of_range"))
        .select(DEVICE, TS, *columns, pl.col("label").cast(pl.Int8).alias(LABEL), EVENT, ANOMALY_TYPE)
        .sort(DEVICE, TS, maintain_order=True)
    )
    files = (*(lake.partition_path(labelled_dir, d) for d in days), labelled_dir / EVENTS_FILE)
    return LabelledSeries(frame=frame, features=columns, files=files), dropped


def split(series: LabelledSeries, plan: EvaluationPlan) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(train, scored) rows of `series` (with a row index ``_i``); scored is None when online."""
    frame = series.frame.with_row_index("_i")
    if plan.given_split != series.has_split:
        raise ValueError(
            "the data carries its own train/test split: evaluate with given_split"
            if series.has_split
            else "the data has no train/test split of its own: choose a train fraction, train rows or online"
        )
    if plan.online:
        return frame, None
    if plan.given_split:
        return frame.filter(pl.col(IS_TRAIN)), frame.filter(~pl.col(IS_TRAIN))
    return split_series(frame, train_fraction=plan.train_fraction, train_rows=plan.train_rows)


def describe_split(series: LabelledSeries, plan: EvaluationPlan) -> dict:
    """Readings of each part; the labelled readings of the train part (taken as normal) per device."""
    train, scored = split(series, plan)
    if scored is None:
        return {"online": True, "scored_readings": train.height}
    labelled = train.filter(pl.col(LABEL) != 0).group_by(DEVICE).len().sort(DEVICE)
    return {
        "train_readings": train.height,
        "train_labelled": int(labelled["len"].sum()),
        "train_labelled_by_device": dict(labelled.iter_rows()),
        "scored_readings": scored.height,
        "scored_devices_without_train_part": sorted(set(scored[DEVICE]) - set(train[DEVICE])),
    }


def evaluate(
    series: LabelledSeries,
    plan: EvaluationPlan,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationOutcome:
    train, scored = split(series, plan)
    frame = pl.concat([train, scored]).sort("_i") if scored is not None else train
    order = series.order_column
    judged = scored if scored is not None else train
    if judged.is_empty():
        raise ValueError("nothing left to score: lower --train-fraction / --train-rows")

    unknown = set(plan.inputs) - set(series.features)
    if unknown:
        raise ValueError(f"inputs {sorted(unknown)} are not columns of the data ({list(series.features)})")
    scored_features = tuple(f for f in series.features if f not in plan.inputs)
    if not scored_features:
        raise ValueError("every column is an input: nothing left to score")
    started = time.perf_counter()
    history: list[dict] = []
    privacy = None
    if plan.mode in REFERENCES:
        config = ReferenceConfig(
            false_alarm_rate=plan.false_alarm_rate,
            zscore_window=plan.zscore_window,
            pca_variance=plan.pca_variance,
            batch_size=plan.simulation.batch_size,
        )
        normal = frame["_i"].is_in(train["_i"].implode()).to_numpy() if scored is not None else None
        known = (frame[LABEL] != 0).to_numpy() if scored is not None else None
        outputs = score_reference(plan.mode, frame, scored_features, normal, config, known)
        decisions = outputs[judged["_i"].to_numpy()].with_columns(pl.col("score").alias(RANKED_BY))
    else:
        model = _model_config(plan.simulation.model, scored_features, plan.inputs, order == TS)
        config = replace(
            plan.simulation,
            model=model,
            train=replace(plan.simulation.train, false_alarm_rate=plan.false_alarm_rate),
            threshold_quantile=plan.threshold_quantile,
        )
        devices = frame[DEVICE].unique().to_list()
        result = simulate(
            _streams(train, model.columns, order, devices),
            _streams(scored, model.columns, order, devices) if scored is not None else None,
            plan.mode,
            config,
            progress,
            calibration_exclude=_labelled(train) if scored is not None else None,
        )
        history = result.history
        privacy = privacy_summary(result, config.aggregation.privacy) if plan.mode == "federated" else None
        outputs = result.outputs
        if plan.events is not None:
            outputs = outputs.with_columns(
                is_anomaly=pl.Series(_event_flags(outputs, plan.events), dtype=pl.Boolean)
            )
        # PR-AUC ranks by severity (times over the threshold, on whichever channel or check is
        # highest): the raw network score alone would rank the stuck, silence and subspace alarms low.
        decisions = outputs.select(
            "score",
            pl.col("severity").alias(RANKED_BY),
            "is_anomaly",
            pl.when(pl.col("threshold").is_infinite()).then(pl.lit(NO_THRESHOLD)).alias("unjudged"),
        )
    seconds = time.perf_counter() - started

    evaluated = judged.select(
        DEVICE, order, LABEL, *(c for c in (EVENT, ANOMALY_TYPE) if c in judged.columns)
    ).with_columns(decisions)
    evaluation = evaluate_frame(
        evaluated,
        alarm="is_anomaly",
        score=RANKED_BY,
        ts=TS if order == TS else None,
        event_id=EVENT if EVENT in judged.columns else None,
        unjudged="unjudged",
    )
    return EvaluationOutcome(
        recall_by_type=_recall_by_type(evaluated),
        mode=plan.mode,
        evaluation=evaluation,
        readings_trained=train.height if scored is not None else 0,
        readings_scored=judged.height,
        seconds=seconds,
        history=history,
        readings=evaluated,
        privacy=privacy,
    )


def privacy_summary(result: SimulationResult, config: PrivacyConfig) -> dict:
    """What a federated run released: its DP settings, the epsilon its final global model carries,
    its devices' epsilons (largest, median), the updates each sent (largest) and their delta norms."""
    epsilons = sorted(result.device_epsilons.values())
    norms = np.asarray(result.update_norms)
    return {
        **config.to_dict(),
        "model_epsilon": result.model_epsilon,
        "max_device_epsilon": epsilons[-1] if epsilons else None,
        "median_device_epsilon": float(np.median(epsilons)) if epsilons else None,
        "max_updates_per_device": max(result.updates_sent.values(), default=0),
        "median_update_norm": float(np.median(norms)) if norms.size else None,
    }


def _labelled(train: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per device, in stream order, the train readings labelled anomalous: known faults in the part
    taken as normal, left out of its calibration (the evaluation reports how many there were)."""
    return {
        key[0]: (part[LABEL] != 0).to_numpy()
        for key, part in train.partition_by(DEVICE, as_dict=True).items()
    }


def _recall_by_type(evaluated: pl.DataFrame) -> dict[str, float]:
    if ANOMALY_TYPE not in evaluated.columns:
        return {}
    rows = (
        evaluated.filter(pl.col(LABEL) == 1)
        .group_by(ANOMALY_TYPE)
        .agg(pl.col("is_anomaly").mean())
        .sort(ANOMALY_TYPE)
    )
    return {kind: round(float(recall), 4) for kind, recall in rows.iter_rows()}


def _event_flags(outputs: pl.DataFrame, config: EventConfig) -> np.ndarray:
    """Per device (outputs sorted by device and position), the readings inside a kept event."""
    flags = outputs["is_anomaly"].to_numpy().copy()
    severity = outputs["severity"].to_numpy()
    devices = outputs["device_id"].to_numpy()
    bounds = np.flatnonzero(devices[1:] != devices[:-1]) + 1
    for lo, hi in itertools.pairwise([0, *bounds.tolist(), len(flags)]):
        flags[lo:hi] = group_events(flags[lo:hi], severity[lo:hi], config)[0]
    return flags


def _model_config(
    base: ModelConfig, features: tuple[str, ...], inputs: tuple[str, ...], has_time: bool
) -> ModelConfig:
    if (base.features, base.inputs, base.time_features) == (tuple(features), tuple(inputs), has_time):
        return base
    return ModelConfig(
        **{
            **base.to_dict(),
            "features": features,
            "inputs": inputs,
            "time_features": has_time,
            "min_std": (),
        }
    )


def _streams(
    frame: pl.DataFrame, features: tuple[str, ...], order: str, devices: list[str]
) -> dict[str, pl.DataFrame]:
    """Each device's rows (an empty stream for a device without any), in time order."""
    columns = [*features, *([TS] if order == TS else [])]
    parts = {key[0]: part.select(columns) for key, part in frame.partition_by(DEVICE, as_dict=True).items()}
    return {d: parts.get(d, frame.select(columns).clear()) for d in devices}
