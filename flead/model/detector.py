"""One device's online anomaly detector, River-style: score, judge and learn a micro-batch at a time.

A batch is one device's readings in time order: a polars DataFrame with the model's feature columns
(and a ``ts`` Datetime column when the model uses the time of day), or an (n, F) NumPy array with
`ts` given separately. The detector keeps the last readings as context, so every reading of a
stream gets a score; at the very start the missing context counts as missing values (imputed with
the running mean). Missing values (null, NaN, inf) are imputed with the last value of the feature in
the window and left out of the score and the loss.

A reading judged anomalous (score above the threshold) must not teach the model that it is normal:
it is down-weighted in training by (threshold / score)^2 (``TrainConfig.anomaly_learning``), and hidden
from the windows of the readings after it (imputed like a missing value), so that those are not
judged against it. A long run of anomalous readings stops being hidden after ``max_masked_run``
readings: it is then a new level, and predicting from stale values would flag everything after it.
The normaliser takes every reading, winsorised at ``input_clip`` standard deviations: skipping
anomalous ones would lock a device whose normal range has moved into flagging it forever.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from flead.model.anomaly_model import AnomalyModel
from flead.model.config import ModelConfig, TrainConfig
from flead.model.gaps import GapCheck
from flead.model.network import Network
from flead.model.optim import Adam, clip_by_global_norm
from flead.model.serialization import pack, unpack
from flead.model.stuck import StuckCheck
from flead.model.subspace import SubspaceCheck
from flead.model.thresholds import CalibratedThreshold, Threshold, threshold_from_state_dict
from flead.model.training import loss_and_gradient
from flead.model.windows import autoencoder_targets, build_inputs, hour_of_day, row_windows

Batch = pl.DataFrame | np.ndarray
Reading = Mapping[str, float | int | None]  # one reading: feature name -> value (None or NaN: missing)

DETECTOR_FORMAT = "flead-detector"
DETECTOR_FORMAT_VERSION = 1


@dataclass
class _Chunk:
    """A chunk of one device's readings on its way through the detector."""

    values: np.ndarray  # (n, F) raw, NaN where missing
    hours: np.ndarray | None  # (n,) hour of day, if the model uses it
    ts_us: np.ndarray | None  # (n,) epoch microseconds, when the batch has timestamps
    seq: np.ndarray  # (context + n, F) float32: context and chunk normalised, NaN where missing
    current: np.ndarray  # (n, F) float32: the chunk normalised and clipped, what is scored


@dataclass
class _Verdict:
    """A chunk judged: raw and smoothed scores, severity (times over the threshold), flags."""

    raw: np.ndarray
    smoothed: np.ndarray
    runs: np.ndarray | None  # (n, F) stuck-value run lengths, when checked
    gaps: np.ndarray | None  # (n,) seconds since the reading before, when timestamped
    severity: np.ndarray
    flags: np.ndarray
    suspects: np.ndarray  # flagged by either pass (see `_judge`)
    run: _Pass
    network: np.ndarray  # the severity of the network's channels alone (raw, sustained)
    subspace: np.ndarray | None = None  # the subspace check's severity, when it judged


@dataclass
class _Pass:
    """One forward pass over a chunk: inputs, the network's activations and the prediction."""

    x: np.ndarray
    base: np.ndarray | None
    forward: tuple[np.ndarray, list[np.ndarray]]
    pred: np.ndarray


class OnlineDetector:
    """A per-device detector: model (network + normaliser), optimiser, threshold and context.

    Build it from a `ModelConfig` (any feature list) or from a shared `AnomalyModel`, e.g. the
    global model: ``OnlineDetector(ModelConfig(features=("a", "b"), time_features=False))``.
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        *,
        model: AnomalyModel | None = None,
        train: TrainConfig | None = None,
        threshold: Threshold | None = None,
        seed: int = 0,
        time_column: str = "ts",
    ) -> None:
        if model is not None and config is not None:
            raise ValueError("give either a config or a model, not both")
        self.model = model if model is not None else AnomalyModel(config, seed)
        self.train = train or TrainConfig()
        t = self.train
        self.threshold: Threshold = (
            threshold if threshold is not None else CalibratedThreshold(t.false_alarm_rate, t.calibration)
        )
        self.time_column = time_column
        self.optimizer = Adam(self.model.network.size, t.learning_rate, t.beta1, t.beta2, t.epsilon)
        cfg = self.model.config
        self.context = np.full((cfg.context_length, cfg.n_columns), np.nan)  # raw values, NaN = none
        self.readings_seen = 0
        self.readings_unjudged = 0  # scored while no threshold existed (no calibration, own or fleet)
        self.suspect_run = 0  # consecutive readings judged anomalous at the end of the context
        self.smoothed = math.nan  # the last smoothed score (EWMA state)
        # The lasting-deviation channel: smoothed scores against their own calibrated threshold.
        self.sustained: CalibratedThreshold | None = None
        if isinstance(self.threshold, CalibratedThreshold) and t.score_smoothing > 1:
            self.sustained = CalibratedThreshold(t.false_alarm_rate, t.calibration)
        # Stuck values, calibrated with the threshold (see `flead.model.stuck`).
        calibrated = isinstance(self.threshold, CalibratedThreshold)
        self.stuck = StuckCheck(cfg.n_features) if calibrated and t.stuck_check else None
        self.gaps = GapCheck() if calibrated and t.gap_check else None  # used when timestamped
        # PCA T²+Q beside the network, where it generalises (see `flead.model.subspace`).
        self.subspace = SubspaceCheck(cfg.n_features) if calibrated and t.subspace_check else None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.config.features

    @property
    def columns(self) -> tuple[str, ...]:
        """What a batch must hold: the features, then the inputs (`ModelConfig.inputs`)."""
        return self.model.config.columns

    # ------------------------------------------------------------------ federated learning interface

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.model.get_weights()

    def set_weights(self, weights: dict[str, np.ndarray], *, reset_optimizer: bool = False) -> None:
        """Adopt (global) weights; the normaliser, threshold, optimiser and context stay this device's."""
        self.model.set_weights(weights)
        if reset_optimizer:
            self.optimizer.reset()

    def share_weights(self, flat: np.ndarray) -> None:
        """Score with `flat` (weights in the network's layout, e.g. a global version's, held once for
        many devices) without a copy; learning makes a private copy again (copy-on-write)."""
        self.model.network.share(flat)

    @property
    def weights_shared(self) -> bool:
        return self.model.network.shared

    @property
    def n_samples_seen(self) -> int:
        return self.model.n_samples_seen

    def reset_sample_counter(self) -> None:
        self.model.reset_sample_counter()

    # ------------------------------------------------------------------------------------ online API

    def learn_many(
        self,
        batch: Batch,
        *,
        ts: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        proximal_mu: float = 0.0,
        anchor: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Train on the batch (without judging it); readings where `exclude` is True are not learned.

        `proximal_mu` > 0 adds proximal_mu / 2 * ||w - anchor||^2 to the loss (FedProx).
        """
        values, ts_us = self._arrays(batch, ts)
        skip = np.zeros(len(values), bool) if exclude is None else np.asarray(exclude, bool).reshape(-1)
        if skip.shape != (len(values),):
            raise ValueError(f"exclude needs one flag per reading ({len(values)})")
        anchor_flat = self._anchor(proximal_mu, anchor)
        for lo, hi in self._spans(len(values)):
            bootstrap = self._bootstrap(values[lo:hi])
            chunk = self._chunk(values[lo:hi], None if ts_us is None else ts_us[lo:hi])
            run = self._pass(chunk, self._maskable(skip[lo:hi]))
            self._learn(chunk, (~skip[lo:hi]).astype(np.float32), run, proximal_mu, anchor_flat)
            self._adapt(chunk, bootstrap)
            self._advance(chunk, skip[lo:hi])

    def score_many(self, batch: Batch, *, ts: np.ndarray | None = None) -> np.ndarray:
        """A score per reading (float64, >= 0, finite) from the current state, which is not changed."""
        values, ts_us = self._arrays(batch, ts)
        if not len(values):
            return np.zeros(0)
        return self._judge(self._chunk(values, ts_us)).raw

    def learn_one(self, x: Reading, *, ts: datetime | np.datetime64 | None = None) -> None:
        """Train on one reading (River's ``learn_one``): `x` maps feature names to values.

        A thin wrapper of `learn_many` over a batch of one: a feature missing from `x`, None or NaN
        is a missing value; other keys (a device id, a label) are ignored. `ts` is the reading's
        time, needed when the model uses the time of day. Calls of one reading are much slower per
        reading than `learn_many` / `process_many` over a batch (docs/model.md, Throughput).

        >>> import random
        >>> from flead.model import ModelConfig, OnlineDetector
        >>> detector = OnlineDetector(ModelConfig(features=("temperature", "humidity"), time_features=False))
        >>> rng = random.Random(0)
        >>> for _ in range(500):
        ...     detector.learn_one({"temperature": rng.gauss(21.0, 0.2), "humidity": rng.gauss(40.0, 0.5)})
        >>> normal = detector.score_one({"temperature": 21.1, "humidity": 40.1})
        >>> spike = detector.score_one({"temperature": 30.0, "humidity": 40.1})
        >>> normal < 1.0 < 10.0 < spike
        True
        """
        values, stamps = self._one(x, ts)
        self.learn_many(values, ts=stamps)

    def score_one(self, x: Reading, *, ts: datetime | np.datetime64 | None = None) -> float:
        """The score of one reading (River's ``score_one``) from the current state, which is not
        changed: `score_many` over a batch of one (see `learn_one` for `x` and `ts`), the readings
        learned before it as its context. A float >= 0, higher is more anomalous, the ``score`` that
        `process_many` would give it; `process_many` also judges it against the threshold."""
        values, stamps = self._one(x, ts)
        return float(self.score_many(values, ts=stamps)[0])

    def _one(self, x: Reading, ts: datetime | np.datetime64 | None) -> tuple[np.ndarray, np.ndarray | None]:
        """One reading as a (1, columns) array (NaN where missing) and its time as a datetime64 array."""
        if not isinstance(x, Mapping):
            raise TypeError(f"a reading is a mapping of feature name to value, got {type(x).__name__}")
        columns = self.config.columns
        if not any(c in x for c in columns):
            raise ValueError(f"the reading has none of the model's columns {columns}: got {sorted(x)}")
        row = np.array([[math.nan if x.get(c) is None else float(x[c]) for c in columns]])
        if ts is None:
            return row, None
        if isinstance(ts, datetime):
            naive = ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts
            ts = np.datetime64(naive, "us")
        return row, np.array([ts], dtype="datetime64[us]")

    def calibrate(
        self, normal: Batch, *, ts: np.ndarray | None = None, exclude: np.ndarray | None = None
    ) -> None:
        """Fit the threshold on the scores the current model gives `normal` readings (taken as normal).

        They are scored from an empty context with frozen weights, as a stream of their own; the
        readings whose window or smoothing is still filling, and those flagged in `exclude` (e.g.
        known anomalies of a labelled train part), are left out of the fit. The device's own context
        is not changed. Only a `CalibratedThreshold` can be calibrated this way.
        """
        if not isinstance(self.threshold, CalibratedThreshold):
            raise ValueError(f"a {self.threshold.kind} threshold is not calibrated on normal data")
        values, ts_us = self._arrays(normal, ts)
        saved = self.context, self.smoothed
        self.context, self.smoothed = np.full_like(self.context, np.nan), math.nan
        try:
            chunk = self._chunk(values, ts_us)
            raw = self._judge(chunk, judge=False).raw
            keep = np.ones(len(raw), bool) if exclude is None else ~np.asarray(exclude, bool).reshape(-1)
            if keep.shape != raw.shape:
                raise ValueError(f"exclude needs one flag per reading ({len(raw)})")
            self._floor_thresholds()
            self.threshold.calibrate(self._settled(raw, keep))
            if self.sustained is not None:
                self.sustained.calibrate(self._settled(self._smooth(raw), keep))
            if self.stuck is not None:
                self.stuck.reset_calibration()
                runs = StuckCheck(self.config.n_features).runs(self._scored(values))
                self.stuck.observe(runs[keep])
                self.stuck.fit(self.train.false_alarm_rate)
            if self.subspace is not None:
                self.subspace.fit_split(self._scored(values)[keep], self.train.false_alarm_rate)
            if self.gaps is not None and ts_us is not None:
                self.gaps.reset_calibration()
                self.gaps.observe(GapCheck().gaps(ts_us)[keep])
                self.gaps.fit(self.train.false_alarm_rate)
        finally:
            self.context, self.smoothed = saved

    def _settled(self, scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """The kept scores whose window and smoothing had filled (all kept ones for a short set)."""
        settled = self.config.context_length + self.train.score_smoothing
        if len(scores) > 2 * settled:
            scores, keep = scores[settled:], keep[settled:]
        kept = scores[keep]
        return kept if kept.size else scores

    def borrow(self, threshold: float | None, sustained: float | None) -> None:
        """Judge with the fleet's calibration until this device has its own."""
        if isinstance(self.threshold, CalibratedThreshold):
            self.threshold.borrowed = threshold
        if self.sustained is not None:
            self.sustained.borrowed = sustained

    @property
    def calibration(self) -> tuple[float | None, float | None]:
        """This device's own fitted thresholds (raw, sustained), None where not calibrated."""
        raw = self.threshold.fitted if isinstance(self.threshold, CalibratedThreshold) else None
        return raw, None if self.sustained is None else self.sustained.fitted

    def process_many(
        self,
        batch: Batch,
        *,
        ts: np.ndarray | None = None,
        learn: bool = True,
        proximal_mu: float = 0.0,
        anchor: dict[str, np.ndarray] | None = None,
        explain: bool = False,
    ) -> pl.DataFrame:
        """Prequential: score each chunk with the state before it, judge it, then learn from it.

        Returns one row per reading: ``score`` (the raw score), ``threshold`` (its threshold; inf
        while no calibration exists: the reading is unjudged), ``severity`` (how many times over its
        threshold the reading is, on the raw or the sustained channel, whichever is more; 0 when
        unjudged) and ``is_anomaly`` (severity > 1). With ``learn=False`` the weights stay frozen
        while the normaliser, calibration and context still follow the device. ``explain=True`` adds
        ``feature_errors``: per reading, the squared error of each scored feature (NaN where missing),
        whose mean is the score: which features made a reading anomalous.
        """
        values, ts_us = self._arrays(batch, ts)
        n = len(values)
        errors = np.full((n, self.config.n_features), np.nan) if explain else None
        scores, thresholds, severity = np.zeros(n), np.full(n, math.inf), np.zeros(n)
        flags = np.zeros(n, bool)
        anchor_flat = self._anchor(proximal_mu, anchor) if learn else None
        for lo, hi in self._spans(n):
            bootstrap = self._bootstrap(values[lo:hi])
            chunk = self._chunk(values[lo:hi], None if ts_us is None else ts_us[lo:hi])
            limit = self.threshold.value
            verdict = self._judge(chunk)
            scores[lo:hi], thresholds[lo:hi], flags[lo:hi] = verdict.raw, limit, verdict.flags
            severity[lo:hi] = verdict.severity
            if errors is not None:
                errors[lo:hi] = self._feature_errors(verdict.run.pred, chunk.current)
            if math.isinf(limit):
                self.readings_unjudged += hi - lo
            self.smoothed = float(verdict.smoothed[-1])
            if self.readings_seen >= self.train.warmup:
                present = np.isfinite(chunk.current).any(axis=1)
                self._calibrate_online(verdict, present, self._scored(chunk.values))
            elif self.subspace is not None:
                self.subspace.learn(self._scored(chunk.values)[~verdict.suspects])
            if verdict.subspace is not None:
                self.subspace.audit(verdict.subspace > 1.0, verdict.network <= 1.0)
            if self.stuck is not None:
                self.stuck.advance(self._scored(chunk.values), verdict.runs)
            if verdict.gaps is not None:
                self.gaps.advance(chunk.ts_us)
            if learn:
                weights = self._learning_weights(verdict)
                self._learn(chunk, weights, verdict.run, proximal_mu, anchor_flat)
            self._adapt(chunk, bootstrap)
            self._advance(chunk, verdict.suspects)
        return pl.DataFrame(
            [
                pl.Series("score", scores),
                pl.Series("threshold", thresholds),
                pl.Series("severity", severity),
                pl.Series("is_anomaly", flags),
                *([] if errors is None else [pl.Series("feature_errors", errors)]),
            ]
        )

    # -------------------------------------------------------------------------------------- internals

    def _arrays(self, batch: Batch, ts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(values (n, F) float64 with NaN for missing or non-finite, epoch microseconds or None).

        A DataFrame's time column is read whenever it is there; a model using the time of day needs it.
        """
        features = self.config.columns
        if isinstance(batch, pl.DataFrame):
            missing = [f for f in features if f not in batch.columns]
            if missing:
                raise ValueError(f"the batch lacks the model's feature columns {missing}")
            # Column by column: much cheaper than a polars select for the small batches of a stream.
            values = np.empty((batch.height, len(features)))
            for i, feature in enumerate(features):
                column = batch.get_column(feature)
                if not column.dtype.is_numeric():
                    raise ValueError(f"feature column {feature!r} must be numeric, got {column.dtype}")
                values[:, i] = column.to_numpy()  # nulls arrive as NaN
            if ts is None and self.time_column in batch.columns:
                ts = batch[self.time_column]
            if ts is None and self.config.time_features:
                raise ValueError(
                    f"this model uses the time of day: the batch needs a {self.time_column!r} column"
                )
        else:
            values = np.asarray(batch, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != len(features):
                raise ValueError(f"an array batch must be (n, {len(features)}) for columns {features}")
        values = np.where(np.isfinite(values), values, np.nan)
        if ts is None:
            if self.config.time_features:
                raise ValueError("this model uses the time of day: pass ts (timestamps) with an array batch")
            return values, None
        ts_us = _epoch_us(ts)
        if ts_us.shape != (len(values),):
            raise ValueError(f"ts needs one timestamp per reading ({len(values)})")
        return values, ts_us

    def _spans(self, n: int) -> list[tuple[int, int]]:
        size = self.train.batch_size
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def _anchor(self, proximal_mu: float, anchor: dict[str, np.ndarray] | None) -> np.ndarray | None:
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        if not proximal_mu:
            return None
        if anchor is None:
            raise ValueError("proximal_mu needs an anchor: the global weights the round started from")
        return self.model.network.flatten(anchor)

    def _bootstrap(self, values: np.ndarray) -> bool:
        """A new stream's first readings define the scale before they are normalised."""
        if self.model.normalizer.ready:
            return False
        self.model.normalizer.update(values)
        return True

    def _chunk(self, values: np.ndarray, ts_us: np.ndarray | None) -> _Chunk:
        hours = hour_of_day(ts_us) if self.config.time_features and ts_us is not None else None
        seq = self.model.normalizer.transform(np.concatenate([self.context, values])).astype(np.float32)
        # The scored readings are clipped like the inputs: a level beyond the clip that persists
        # stops scoring once it is in the window, while a jump to it scores up to (2 * clip)^2.
        clip = self.config.input_clip
        current = np.clip(seq[self.config.context_length :, : self.config.n_features], -clip, clip)
        return _Chunk(values, hours, ts_us, seq, current)

    def _pass(self, chunk: _Chunk, masked: np.ndarray | None = None, unmasked: _Pass | None = None) -> _Pass:
        """The network on the chunk, with the readings where `masked` is True hidden from the inputs of
        the readings after them. An autoencoder's window ends with the reading it judges: there a masked
        reading keeps its own value (taken from the `unmasked` pass), or its error would be its distance
        from the value before it rather than how well the model reconstructs it."""
        seq = chunk.seq
        if masked is not None and masked.any():
            seq = seq.copy()
            seq[self.config.context_length :][masked] = np.nan
        inputs = build_inputs(self.config, seq, chunk.hours)
        if unmasked is not None and masked is not None and self.config.kind == "autoencoder":
            width = self.config.n_columns
            own = slice((self.config.window - 1) * width, self.config.window * width)
            x = inputs.x if inputs.x.flags.writeable else inputs.x.copy()
            x[masked, own] = unmasked.x[masked, own]
            inputs.x = x
        forward = self.model.network.forward(inputs.x)
        pred = forward[0] + inputs.base if inputs.base is not None else forward[0]
        return _Pass(inputs.x, inputs.base, forward, pred)

    def _predicted_current(self, pred: np.ndarray) -> np.ndarray:
        return pred if self.config.kind == "forecaster" else pred[:, -self.config.n_features :]

    def _feature_errors(self, pred: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Squared error per reading and scored feature (normalised units), NaN where missing."""
        err = self._predicted_current(pred) - current
        return err * err

    def _scores(self, pred: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Mean squared error over the reading's present features (normalised units); 0 if none."""
        sq = self._feature_errors(pred, current)
        valid = np.isfinite(sq)
        count = valid.sum(axis=1)
        total = np.where(valid, sq, 0.0).sum(axis=1, dtype=np.float64)
        return total / np.maximum(count, 1)

    def _calibrate_online(self, verdict: _Verdict, present: np.ndarray, values: np.ndarray) -> None:
        collecting = isinstance(self.threshold, CalibratedThreshold) and self.threshold.collecting
        if collecting:
            self._floor_thresholds()
        self.threshold.update(verdict.raw[present])
        if self.sustained is not None:
            self.sustained.update(verdict.smoothed[present])
        if not collecting:
            return
        far, calibrated = self.train.false_alarm_rate, not self.threshold.collecting  # in this chunk
        if self.stuck is not None:
            self.stuck.observe(verdict.runs[present])
            if calibrated:
                self.stuck.fit(far)
        if verdict.gaps is not None:
            self.gaps.observe(verdict.gaps[present])
            if calibrated:
                self.gaps.fit(far)
        if self.subspace is not None:
            self.subspace.observe(values[present & ~verdict.suspects])
            if calibrated:
                self.subspace.fit(far)

    def _floor_thresholds(self) -> None:
        """No threshold below the score of an error of one resolution step on every scored feature.

        A channel constant while it calibrates (NASA SMAP has many) scores ~0 there: fitted on that
        alone its threshold would be ~0 too, and float rounding in a later prediction would alarm on
        every reading (SMAP point F1 0.36 -> 0.42 pooled with the floor, the other benchmarks unchanged).
        """
        n, normalizer = self.config.n_features, self.model.normalizer
        floor = float(np.mean((normalizer.resolution[:n] / normalizer.std[:n]) ** 2))
        for threshold in (self.threshold, self.sustained):
            if isinstance(threshold, CalibratedThreshold):
                threshold.floor = floor

    def _scored(self, values: np.ndarray) -> np.ndarray:
        return values[:, : self.config.n_features]

    def _judge(self, chunk: _Chunk, *, judge: bool = True) -> _Verdict:
        """The chunk's scores and flags against the thresholds in force (`judge=False`: none).

        Two channels: the raw score against the threshold (a spike), and the smoothed score against
        the sustained threshold (a deviation too small for one reading that lasts); and the stuck-value
        and silence checks. A flagged reading is hidden from the inputs and the chunk scored again, so
        the readings after an anomaly are judged without it; suspects are the readings flagged by
        either pass.
        """
        limit = self.threshold.value if judge else math.inf
        sustained = self.sustained.value if judge and self.sustained is not None else math.inf
        runs = None if self.stuck is None else self.stuck.runs(self._scored(chunk.values))
        gaps = None if self.gaps is None or chunk.ts_us is None else self.gaps.gaps(chunk.ts_us)
        checks = np.zeros(len(chunk.values))  # the checks' severity
        if judge and runs is not None:
            checks = np.maximum(checks, self.stuck.severity(runs))
        if judge and gaps is not None:
            checks = np.maximum(checks, self.gaps.severity(gaps))
        subspace = None
        if judge and self.subspace is not None and self.subspace.active:
            subspace = self.subspace.severity(self._scored(chunk.values))
            checks = np.maximum(checks, subspace)
        verdict = self._verdict(self._pass(chunk), chunk, limit, sustained, runs, gaps, checks)
        if verdict.flags.any():
            first = verdict.flags
            rerun = self._pass(chunk, self._maskable(first), verdict.run)
            verdict = self._verdict(rerun, chunk, limit, sustained, runs, gaps, checks)
            verdict.suspects = first | verdict.flags
        verdict.subspace = subspace
        return verdict

    def _verdict(
        self,
        run: _Pass,
        chunk: _Chunk,
        limit: float,
        sustained: float,
        runs: np.ndarray | None,
        gaps: np.ndarray | None,
        checks: np.ndarray,
    ) -> _Verdict:
        raw = self._scores(run.pred, chunk.current)
        # A reading counts at most twice the raw threshold towards the smoothed score: one spike
        # must not keep the readings after it flagged.
        smoothed = self._smooth(np.minimum(raw, 2.0 * limit) if math.isfinite(limit) else raw)
        with np.errstate(invalid="ignore"):
            severity = np.maximum(
                raw / limit if math.isfinite(limit) else 0.0,
                smoothed / sustained if math.isfinite(sustained) else 0.0,
            )
        network = np.nan_to_num(np.broadcast_to(severity, raw.shape).astype(np.float64))
        severity = np.maximum(network, checks)
        flags = severity > 1.0
        return _Verdict(raw, smoothed, runs, gaps, severity, flags, flags, run, network)

    def _smooth(self, raw: np.ndarray) -> np.ndarray:
        """EWMA of the raw scores over ``score_smoothing`` readings, continuing from `self.smoothed`."""
        return ewma(raw, self.train.score_smoothing, self.smoothed)

    def _learning_weights(self, verdict: _Verdict) -> np.ndarray:
        """How much each reading counts in training (float32, 0..1)."""
        how, suspects = self.train.anomaly_learning, verdict.suspects
        if how == "learn" or not suspects.any():
            return np.ones(len(suspects), np.float32)
        if how == "skip":
            return (~suspects).astype(np.float32)
        # Weight 1 / severity^2: a reading just over its threshold still counts almost fully, so a
        # new normal level is learned, while a wild one barely counts at all.
        weight = np.minimum(1.0, 1.0 / np.maximum(verdict.severity, 1e-30)) ** 2
        return np.where(suspects, weight, 1.0).astype(np.float32)

    def _learn(
        self, chunk: _Chunk, weights: np.ndarray, run: _Pass, proximal_mu: float, anchor: np.ndarray | None
    ) -> None:
        """Adam steps on the chunk, each reading's squared errors weighted by `weights`."""
        cfg, net = self.config, self.model.network
        if cfg.kind == "forecaster":
            target = chunk.current
            mask = np.isfinite(target) * weights[:, None]
        else:
            target = autoencoder_targets(cfg, chunk.seq)
            row_weights = np.concatenate([np.ones(cfg.context_length, np.float32), weights])
            entry_weights = np.repeat(row_windows(row_weights, cfg.window), cfg.n_features, axis=1)
            mask = np.isfinite(target) * entry_weights
        target = np.clip(np.nan_to_num(target, nan=0.0), -cfg.input_clip, cfg.input_clip)
        net.own()  # copy-on-write of shared weights
        forward = run.forward
        first_loss = None
        for _ in range(self.train.steps_per_batch):
            loss, grad = loss_and_gradient(
                net,
                run.x,
                target,
                mask,
                base=run.base,
                proximal_mu=proximal_mu,
                anchor=anchor,
                forward=forward,
            )
            first_loss = loss if first_loss is None else first_loss
            forward = None  # the weights moved: later steps need a fresh forward pass
            clip_by_global_norm(grad, self.train.clip_norm)
            self.optimizer.step(net.flat, grad)
        learned = int((np.isfinite(chunk.values[:, : cfg.n_features]).any(axis=1) & (weights > 0)).sum())
        self.model.n_samples_seen += learned
        if learned and first_loss is not None and np.isfinite(first_loss):
            self.model.loss_sum += float(first_loss) * learned

    def _adapt(self, chunk: _Chunk, bootstrap: bool) -> None:
        """Move the normaliser with the chunk, winsorised so that a wild reading cannot drag it. With
        ``freeze_reference``, only until the device has calibrated: from then on the normaliser is the
        frozen reference the device is judged against, so a fault that lasts cannot become the scale
        it is measured in (`accept_new_normal` unfreezes it until the next calibration)."""
        if not bootstrap and not self.reference_frozen:
            self.model.normalizer.update(chunk.values, clip=self.config.input_clip)
        self.readings_seen += len(chunk.values)

    @property
    def reference_frozen(self) -> bool:
        t = self.threshold
        calibrated = isinstance(t, CalibratedThreshold) and t.fitted is not None and not t.collecting
        return self.train.freeze_reference and calibrated

    def accept_new_normal(self) -> None:
        """An operator's word that the device's present behaviour is normal: the normaliser follows it
        again and both thresholds calibrate anew on the next readings (the old ones judge meanwhile)."""
        for threshold in (self.threshold, self.sustained):
            if isinstance(threshold, CalibratedThreshold):
                threshold.recalibrate()
        for check in (self.stuck, self.gaps):
            if check is not None:
                check.reset_calibration()
        if self.subspace is not None:
            self.subspace.drop()

    def _run_positions(self, suspects: np.ndarray) -> np.ndarray:
        """Per reading, how many suspects directly precede it (its place in a run of suspects)."""
        index = np.arange(len(suspects))
        last_clear = np.maximum.accumulate(np.where(suspects, -1, index))
        return np.where(last_clear < 0, index + self.suspect_run, index - last_clear - 1)

    def _maskable(self, suspects: np.ndarray) -> np.ndarray:
        """The suspects to hide from later windows: not those deep in a long run.

        A run longer than ``max_masked_run`` is taken as a new normal level for prediction (it is
        still judged and not learned from); masking it would predict from stale values forever.
        """
        return suspects & (self._run_positions(suspects) < self.train.max_masked_run)

    def _advance(self, chunk: _Chunk, suspects: np.ndarray) -> None:
        """Keep the last readings as context, anomalous ones hidden (see `_maskable`)."""
        c = self.config.context_length
        if c:
            kept = np.where(self._maskable(suspects)[:, None], np.nan, chunk.values)
            self.context = np.concatenate([self.context, kept])[-c:]
        if len(suspects):
            self.suspect_run = int(self._run_positions(suspects)[-1]) + 1 if suspects[-1] else 0

    # ---------------------------------------------------------------------------------- checkpoints

    def to_bytes(self, *, weights: bool = True) -> bytes:
        """Everything needed to resume this device exactly (model, optimiser, threshold, context).
        ``weights=False`` leaves the network's weights out (shared ones, stored once elsewhere):
        `from_bytes` then needs them."""
        header = {
            "format": DETECTOR_FORMAT,
            "format_version": DETECTOR_FORMAT_VERSION,
            "model": self.model._header(),
            "train": self.train.to_dict(),
            "threshold": self.threshold.state_dict(),
            "time_column": self.time_column,
            "context": [[None if math.isnan(x) else x for x in row] for row in self.context.tolist()],
            "readings_seen": self.readings_seen,
            "readings_unjudged": self.readings_unjudged,
            "adam_t": self.optimizer.t,
            "suspect_run": self.suspect_run,
            "smoothed": None if math.isnan(self.smoothed) else self.smoothed,
            "sustained": None if self.sustained is None else self.sustained.state_dict(),
            "stuck": None if self.stuck is None else self.stuck.state_dict(),
            "gaps": None if self.gaps is None else self.gaps.state_dict(),
            "subspace": None if self.subspace is None else self.subspace.state_dict(),
            "weights": "included" if weights else "shared",
        }
        arrays = dict(self.model.network.params) if weights else {}
        if self.optimizer.m is not None:
            arrays.update({"adam.m": self.optimizer.m, "adam.v": self.optimizer.v})
        return pack(header, arrays)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, shared: Callable[[Network], np.ndarray] | None = None
    ) -> OnlineDetector:
        """The detector `to_bytes` saved; `shared` gives a checkpoint saved without its weights the
        (flat, read-only) weights to share, in the layout of the network it is given."""
        header, arrays = unpack(data, DETECTOR_FORMAT, (DETECTOR_FORMAT_VERSION,))
        try:
            m, v = arrays.pop("adam.m", None), arrays.pop("adam.v", None)
            included = header.get("weights", "included") == "included"
            if not included and shared is None:
                raise ValueError("bad detector checkpoint: it was saved without its shared weights")
            parts = (arrays, list(arrays)) if included else (None, None)
            model = AnomalyModel._from_parts(header["model"], *parts)
            detector = cls(
                model=model,
                train=TrainConfig.from_dict(header["train"]),
                threshold=threshold_from_state_dict(header["threshold"]),
                time_column=header["time_column"],
            )
            cfg = model.config
            context = np.array(header["context"], dtype=np.float64).reshape(cfg.context_length, cfg.n_columns)
            readings_seen, adam_t = int(header["readings_seen"]), int(header["adam_t"])
            suspect_run = int(header["suspect_run"])
            unjudged = int(header.get("readings_unjudged", 0))
            smoothed = header.get("smoothed")
            smoothed = math.nan if smoothed is None else float(smoothed)
            sustained = header.get("sustained")
            sustained = None if sustained is None else threshold_from_state_dict(sustained)
            stuck = header.get("stuck")
            stuck = None if stuck is None else StuckCheck.from_state_dict(stuck, model.config.n_features)
            gaps = header.get("gaps")
            gaps = None if gaps is None else GapCheck.from_state_dict(gaps)
            subspace = header.get("subspace")  # absent from checkpoints older than the check
            if subspace is not None:
                subspace = SubspaceCheck.from_state_dict(subspace, model.config.n_features)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad detector checkpoint: {exc!r}") from exc
        if not included:
            detector.model.network.share(shared(detector.model.network))
        size = (model.network.size,)
        if (m is None) != (v is None) or (m is not None and (m.shape != size or v.shape != size)):
            raise ValueError("optimiser state does not match the network")
        detector.optimizer.m, detector.optimizer.v, detector.optimizer.t = m, v, adam_t
        detector.context = context
        detector.readings_seen, detector.suspect_run = readings_seen, suspect_run
        detector.readings_unjudged, detector.smoothed = unjudged, smoothed
        if sustained is not None and not isinstance(sustained, CalibratedThreshold):
            raise ValueError("bad detector checkpoint: the sustained threshold must be calibrated")
        detector.sustained = sustained
        detector.stuck, detector.gaps = stuck, gaps
        if detector.subspace is not None and subspace is None:
            detector.subspace.drop()  # an older checkpoint: its device never collected a fit
        elif subspace is not None:
            detector.subspace = subspace
        return detector


def _epoch_us(ts: object) -> np.ndarray:
    """Epoch microseconds of a polars Datetime series or a NumPy datetime64 array; a missing time
    counts as midnight (the time of day is only an input, never a reason to fail a batch)."""
    if isinstance(ts, pl.Series):
        if not isinstance(ts.dtype, pl.Datetime):
            raise ValueError(f"timestamps must be a Datetime column, got {ts.dtype}")
        ts = ts.to_numpy()  # datetime64 in UTC, null as NaT
    array = np.asarray(ts)
    if not np.issubdtype(array.dtype, np.datetime64):
        raise ValueError(f"timestamps must be datetime64, got {array.dtype}")
    array = array.astype("datetime64[us]")
    return np.where(np.isnat(array), 0, array.astype(np.int64))


def ewma(values: np.ndarray, span: int, previous: float = math.nan) -> np.ndarray:
    """Exponentially weighted moving average (alpha = 2 / (span + 1)) of a float array, continuing
    from `previous` (NaN: start at the first value). Vectorised in blocks short enough that the
    powers of (1 - alpha) stay within float64."""
    values = np.asarray(values, dtype=np.float64)
    if span <= 1 or not values.size:
        return values.copy()
    alpha = 2.0 / (span + 1.0)
    decay = 1.0 - alpha
    out = np.empty_like(values)
    level = values[0] if math.isnan(previous) else previous
    block = max(1, int(600 / -math.log(decay)) // 2)  # decay**-block stays below ~1e130
    for lo in range(0, values.size, block):
        x = values[lo : lo + block]
        powers = decay ** np.arange(1, x.size + 1)
        out[lo : lo + x.size] = powers * level + alpha * powers * np.cumsum(x / powers)
        level = out[lo + x.size - 1]
    return out


def fleet_calibration(
    calibrations: list[tuple[float | None, float | None]],
) -> tuple[float | None, float | None]:
    """The fleet's thresholds (raw, sustained) from devices' own: the median of those calibrated.

    Scores are in normalised units, so devices' thresholds are comparable; the median is what a new
    device borrows, robust to a few devices whose calibration saw a fault.
    """

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.median(known)) if known else None

    return median([raw for raw, _ in calibrations]), median([sustained for _, sustained in calibrations])
