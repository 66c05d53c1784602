"""The references every evaluation is read against: rolling z-score, PCA T²+Q, flag everything, flag nothing.

The two scorers are calibrated alike, per device: the threshold is `calibrated_threshold` of the
scores the device's normal readings got, at the stated false-alarm target.

- With a train part (`normal` given): the train rows are the normal readings. The z-score of a
  reading uses the readings before it (train rows included), so train rows get scores too; the PCA
  is fitted on the device's train rows and scores them in-sample.
- Online (`normal=None`): prequential by micro-batch, like the detectors' online mode. A batch is
  judged by the state before it: the PCA learned from the earlier readings, the threshold
  calibrated on the scores the earlier readings got (all of them taken as normal); so the z-score
  judges from its second batch, the PCA (no scores before it has rows) from its third.

Readings a scorer cannot judge get no alarm and a reason (see `flead.evaluation.metrics`): a device
without normal scores to calibrate on, a z-score without enough earlier readings, a PCA without
two readings to fit on. "Flag everything" (score 1) and "flag nothing" (score 0) judge every reading;
their PR-AUC is the share of labelled readings, the chance level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from flead.evaluation.loader import DEVICE
from flead.evaluation.zscore import rolling_zscore
from flead.model.pca import PCADetector
from flead.model.thresholds import calibrated_threshold

REFERENCES = ("zscore", "pca", "flag_everything", "flag_nothing")

NO_CALIBRATION = "no normal scores to calibrate on"
NO_ZSCORE = "z-score: too few earlier readings in its window"
NO_PCA = "PCA: fewer than 2 readings to fit on"


@dataclass(frozen=True)
class ReferenceConfig:
    false_alarm_rate: float = 1e-3  # the calibrated threshold's per-reading false-alarm target
    zscore_window: int = 100
    pca_variance: float = 0.95  # share of the standardised variance the kept components explain
    batch_size: int = 256  # online: readings judged per calibration

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must be within (0, 1), got {self.false_alarm_rate}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def score_reference(
    name: str,
    frame: pl.DataFrame,
    features: Sequence[str],
    normal: np.ndarray | None,
    config: ReferenceConfig | None = None,
    known_anomalies: np.ndarray | None = None,
) -> pl.DataFrame:
    """``score``, ``is_anomaly`` and ``unjudged`` (reason, null when judged) for every row of `frame`.

    `frame`: rows grouped by device, in time order within each. `normal`: per row, True for the
    train part (never flagged, only calibrates), or None for online evaluation. `known_anomalies`:
    train rows labelled anomalous, left out of fitting and calibration as the detectors leave them.
    """
    if name not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {name!r}")
    config = config or ReferenceConfig()
    n = frame.height
    scored = np.ones(n, bool) if normal is None else ~np.asarray(normal, bool)
    if name in ("flag_everything", "flag_nothing"):
        everything = name == "flag_everything"
        return _outputs(np.full(n, float(everything)), scored & everything, np.full(n, None, object))
    if name == "zscore":
        all_scores = rolling_zscore(frame, features, window=config.zscore_window).to_numpy()
    scores, flags, reasons = np.full(n, np.nan), np.zeros(n, bool), np.full(n, None, object)
    rows = frame.select(DEVICE).with_row_index("_i").group_by(DEVICE, maintain_order=True).agg("_i")
    values = frame.select(features).cast(pl.Float64).fill_null(np.nan).to_numpy()
    for _device, index in rows.iter_rows():
        index = np.asarray(index)
        fit = None if normal is None else np.asarray(normal, bool)[index]
        clean = fit if fit is None or known_anomalies is None else fit & ~known_anomalies[index]
        if name == "zscore":
            device_scores, why = all_scores[index], NO_ZSCORE
        elif fit is None:
            device_scores, why = _pca_prequential(values[index], config), NO_PCA
        else:
            device_scores, why = _pca_fitted(values[index], clean, config), NO_PCA
        if fit is None:
            flags[index], reasons[index] = _calibrate_online(device_scores, None, why, config)
        else:
            flags[index], reasons[index] = _calibrate_split(device_scores, fit, clean, why, config)
        scores[index] = device_scores
    return _outputs(np.nan_to_num(scores, nan=0.0), flags, reasons)


def _outputs(scores: np.ndarray, flags: np.ndarray, reasons: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        [
            pl.Series("score", scores, dtype=pl.Float64),
            pl.Series("is_anomaly", flags, dtype=pl.Boolean),
            pl.Series("unjudged", reasons.tolist(), dtype=pl.String),
        ]
    )


def _pca_fitted(x: np.ndarray, fit: np.ndarray, config: ReferenceConfig) -> np.ndarray:
    if np.count_nonzero(fit) < 2:
        return np.full(len(x), np.nan)
    return PCADetector(config.pca_variance).learn_many(x[fit]).score_many(x)


def _pca_prequential(x: np.ndarray, config: ReferenceConfig) -> np.ndarray:
    scores, model = np.full(len(x), np.nan), PCADetector(config.pca_variance)
    for lo in range(0, len(x), config.batch_size):
        batch = slice(lo, lo + config.batch_size)
        if lo >= 2:
            scores[batch] = model.score_many(x[batch])
        model.learn_many(x[batch])
    return scores


def _calibrate_split(
    scores: np.ndarray, fit: np.ndarray, clean: np.ndarray, why_unscored: str, config: ReferenceConfig
) -> tuple[np.ndarray, np.ndarray]:
    normal = scores[clean & np.isfinite(scores)]
    return _judge(scores, ~fit, normal, why_unscored, config.false_alarm_rate)


def _calibrate_online(
    scores: np.ndarray, _fit: None, why_unscored: str, config: ReferenceConfig
) -> tuple[np.ndarray, np.ndarray]:
    flags, reasons = np.zeros(len(scores), bool), np.full(len(scores), None, object)
    for lo in range(0, len(scores), config.batch_size):
        batch = np.zeros(len(scores), bool)
        batch[lo : lo + config.batch_size] = True
        earlier = scores[:lo][np.isfinite(scores[:lo])]
        f, r = _judge(scores, batch, earlier, why_unscored, config.false_alarm_rate)
        flags[batch], reasons[batch] = f[batch], r[batch]
    return flags, reasons


def _judge(
    scores: np.ndarray, judged: np.ndarray, normal: np.ndarray, why_unscored: str, false_alarm_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flags and reasons for the `judged` rows against the threshold calibrated on `normal`."""
    flags, reasons = np.zeros(len(scores), bool), np.full(len(scores), None, object)
    unscored = judged & ~np.isfinite(scores)
    reasons[unscored] = why_unscored
    if not normal.size:
        reasons[judged & ~unscored] = NO_CALIBRATION
        return flags, reasons
    threshold = calibrated_threshold(normal, false_alarm_rate)
    with np.errstate(invalid="ignore"):
        flags[judged & ~unscored] = scores[judged & ~unscored] > threshold
    return flags, reasons
