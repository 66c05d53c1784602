"""Per-device adaptive thresholds on a stream of anomaly scores (non-negative, larger = stranger).

Every method works a micro-batch at a time: every score of a batch is compared with the threshold
the state had before the batch, then the state learns from the batch. Until a method has its
threshold, it is infinite: readings are not judged. `state_dict()` is plain JSON.

- `CalibratedThreshold` (the default): fitted once on scores of normal behaviour with a stated
  false-alarm target (peaks over threshold, `calibrated_threshold`) and then held, so the alarm rate
  can rise to whatever the data demands; before its own calibration a device can borrow the fleet's.
  The two methods below are alarm *budgets*: they follow the scores, so at most about 1 - q of the
  readings alarm whatever happens, and a lasting fault is soon below them.

- `QuantileThreshold`: a high quantile of the scores, estimated from a histogram with log-spaced
  bins (fixed size, ~7 % relative resolution) whose counts decay with a half-life, so it follows a
  score distribution that changes as the model learns.
- `SpotThreshold`: SPOT (Siffer et al., KDD 2017): the scores above an initial high quantile ``t``
  (the peaks) are fitted with a generalized Pareto distribution, and the threshold is the score that
  distribution says is exceeded with probability `risk`. Peaks keep being added (alarms excepted)
  and the fit is refreshed each batch, by the method of moments.
"""

from __future__ import annotations

import math

import numpy as np


def _finite(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return scores[np.isfinite(scores)]


def _judge(value: float, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    return np.full(scores.shape, value), scores > value


class _BatchThreshold:
    """What every threshold shares: a batch is judged by the state before it, then learned."""

    value: float

    def update(self, scores: np.ndarray) -> None:
        raise NotImplementedError

    def process_many(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(threshold, is_anomaly) per score from the state before the batch; then learn the batch."""
        result = _judge(self.value, scores)
        self.update(scores)
        return result


class QuantileThreshold(_BatchThreshold):
    """The `q`-quantile of the scores seen so far (decayed), from a bounded log-histogram."""

    kind = "quantile"

    def __init__(
        self,
        q: float = 0.995,
        warmup: int = 500,
        half_life: float | None = 20_000.0,
        lo: float = 1e-9,
        hi: float = 1e9,
        bins_per_decade: int = 32,
    ) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be within (0, 1), got {q}")
        if warmup < 0 or (half_life is not None and not half_life > 0):
            raise ValueError("warmup must be >= 0 and half_life > 0 (or None for no decay)")
        if not 0.0 < lo < hi or bins_per_decade < 1:
            raise ValueError("need 0 < lo < hi and bins_per_decade >= 1")
        self.q, self.warmup, self.half_life = q, warmup, half_life
        self.lo, self.hi, self.bins_per_decade = lo, hi, bins_per_decade
        self.n_bins = round(math.log10(hi / lo) * bins_per_decade)
        # bin 0: below lo; bins 1..n_bins: log-spaced; bin n_bins + 1: hi and above
        self.counts = np.zeros(self.n_bins + 2)
        self.n_seen = 0

    @property
    def warmed_up(self) -> bool:
        return self.n_seen >= self.warmup and self.counts.sum() > 0

    @property
    def value(self) -> float:
        return self.quantile(self.q) if self.warmed_up else math.inf

    def quantile(self, q: float) -> float:
        """The q-quantile of the histogram, interpolated geometrically inside its bin."""
        cumulative = np.cumsum(self.counts)
        total = cumulative[-1]
        if total <= 0:
            return math.nan
        target = q * total
        k = min(int(np.searchsorted(cumulative, target)), self.n_bins + 1)
        if k == 0:
            return self.lo
        if k == self.n_bins + 1:
            return self.hi
        within = (target - cumulative[k - 1]) / self.counts[k]
        return self.lo * 10.0 ** ((k - 1 + within) / self.bins_per_decade)

    def update(self, scores: np.ndarray) -> None:
        # Alarms are counted too: the quantile only depends on how many scores lie above it, and
        # leaving out the scores above it would pull it down batch after batch.
        scores = _finite(scores)
        if not scores.size:
            return
        if self.half_life is not None:
            self.counts *= 0.5 ** (scores.size / self.half_life)
        with np.errstate(divide="ignore"):
            position = np.log10(np.maximum(scores, 0.0) / self.lo) * self.bins_per_decade
        index = np.clip(np.floor(position) + 1, 0, self.n_bins + 1).astype(np.int64)
        self.counts += np.bincount(index, minlength=self.n_bins + 2)
        self.n_seen += scores.size

    def state_dict(self) -> dict:
        filled = np.flatnonzero(self.counts)
        first, last = (int(filled[0]), int(filled[-1]) + 1) if filled.size else (0, 0)
        return {
            "kind": self.kind,
            "q": self.q,
            "warmup": self.warmup,
            "half_life": self.half_life,
            "lo": self.lo,
            "hi": self.hi,
            "bins_per_decade": self.bins_per_decade,
            "n_seen": self.n_seen,
            # the bins from the first to the last non-empty one (scores span a few of the 18 decades)
            "counts_offset": first,
            "counts": self.counts[first:last].tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> QuantileThreshold:
        keys = ("q", "warmup", "half_life", "lo", "hi", "bins_per_decade")
        threshold = cls(**{k: state[k] for k in keys})
        counts = np.asarray(state["counts"], dtype=np.float64)
        offset = int(state.get("counts_offset", 0))
        size = threshold.counts.size
        in_range = counts.ndim == 1 and 0 <= offset <= size - counts.size
        if not in_range or not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(f"quantile threshold counts must be at most {size} numbers >= 0")
        threshold.counts[offset : offset + counts.size] = counts
        threshold.n_seen = int(state["n_seen"])
        return threshold


class SpotThreshold(_BatchThreshold):
    """SPOT: a generalized Pareto tail above the initial `init_quantile` of the first `n_init` scores.

    The most recent `max_peaks` peaks are kept for the fit (bounded state); the exceedance rate of
    ``t`` uses all scores seen since calibration.
    """

    kind = "spot"

    def __init__(
        self, risk: float = 1e-3, n_init: int = 1000, init_quantile: float = 0.98, max_peaks: int = 1000
    ) -> None:
        if not 0.0 < risk < 1.0 or not 0.0 < init_quantile < 1.0:
            raise ValueError("risk and init_quantile must be within (0, 1)")
        if n_init < 1 or max_peaks < 2:
            raise ValueError("n_init must be >= 1 and max_peaks >= 2")
        self.risk, self.n_init, self.init_quantile, self.max_peaks = risk, n_init, init_quantile, max_peaks
        self.calibration: list[float] = []  # the first scores, until there are n_init of them
        self.t: float | None = None
        self.peaks = np.zeros(0)  # excesses over t
        self.n = 0  # scores seen since calibration (alarms excepted)
        self.n_peaks = 0  # of which above t
        self.gamma = 0.0
        self.sigma = 0.0
        self.z = math.inf

    @property
    def warmed_up(self) -> bool:
        return self.t is not None

    @property
    def value(self) -> float:
        return self.z

    def update(self, scores: np.ndarray) -> None:
        scores = _finite(scores)
        if not scores.size:
            return
        if self.t is None:
            self.calibration.extend(scores.tolist())
            if len(self.calibration) >= self.n_init:
                self._calibrate(np.asarray(self.calibration))
            return
        normal = scores[scores <= self.z]  # SPOT does not learn from its alarms
        self.n += normal.size
        excess = normal[normal > self.t] - self.t
        if excess.size:
            self.peaks = np.concatenate([self.peaks, excess])[-self.max_peaks :]
            self.n_peaks += excess.size
            self._fit()

    def _calibrate(self, scores: np.ndarray) -> None:
        self.t = float(np.quantile(scores, self.init_quantile))
        excess = scores[scores > self.t] - self.t
        self.peaks = excess[-self.max_peaks :]
        self.n, self.n_peaks = scores.size, excess.size
        self.calibration = []
        self._fit()

    def _fit(self) -> None:
        self.gamma, self.sigma = fit_gpd_moments(self.peaks)
        self.z = spot_threshold(self.t, self.gamma, self.sigma, self.risk, self.n, self.n_peaks)

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "risk": self.risk,
            "n_init": self.n_init,
            "init_quantile": self.init_quantile,
            "max_peaks": self.max_peaks,
            "calibration": list(self.calibration),
            "t": self.t,
            "peaks": self.peaks.tolist(),
            "n": self.n,
            "n_peaks": self.n_peaks,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> SpotThreshold:
        threshold = cls(**{k: state[k] for k in ("risk", "n_init", "init_quantile", "max_peaks")})
        threshold.calibration = [float(x) for x in state["calibration"]]
        threshold.t = None if state["t"] is None else float(state["t"])
        threshold.peaks = np.asarray(state["peaks"], dtype=np.float64).reshape(-1)
        threshold.n, threshold.n_peaks = int(state["n"]), int(state["n_peaks"])
        if threshold.t is not None:
            threshold._fit()
        return threshold


class CalibratedThreshold(_BatchThreshold):
    """A threshold fitted on scores of normal behaviour, then held, so the alarm rate is free to rise.

    The first `n_calibration` scores fed to `update` are taken as normal (minus any the borrowed
    threshold already alarms on, so a device broken from its start does not learn its fault as
    normal); `calibrate(scores)` fits from given normal scores at once. The fit is
    `calibrated_threshold` at `false_alarm_rate`. Until a fit exists, `value` is the `borrowed`
    threshold (the fleet's, travelling with the global model) or infinite: readings unjudged.
    A fitted threshold never follows later scores: a fault that lasts a week alarms for a week.
    `recalibrate()` is the explicit way to accept a new normal: calibration starts again from the
    next scores, and the current threshold keeps judging until the new one is fitted.
    """

    kind = "calibrated"

    def __init__(
        self, false_alarm_rate: float = 1e-3, n_calibration: int = 1000, borrowed: float | None = None
    ) -> None:
        if not 0.0 < false_alarm_rate < 1.0 or n_calibration < 1:
            raise ValueError("false_alarm_rate must be within (0, 1) and n_calibration >= 1")
        if borrowed is not None and not borrowed > 0:
            raise ValueError(f"a borrowed threshold must be > 0, got {borrowed}")
        self.false_alarm_rate, self.n_calibration = false_alarm_rate, n_calibration
        self.borrowed = borrowed
        # The lowest threshold a calibration may fit; its owner sets it (`OnlineDetector` keeps it at
        # the score of an error of one resolution step) before scores are collected or calibrated.
        self.floor = 1e-12
        self.fitted: float | None = None
        self.collecting = True
        # float64, not a list: a fleet holds one per device while it calibrates (8 vs ~32 bytes a score)
        self.calibration = np.empty(0)

    @property
    def warmed_up(self) -> bool:
        return self.fitted is not None

    @property
    def source(self) -> str:
        """Where the threshold in force comes from: "own", "fleet" or "none" (unjudged)."""
        return "own" if self.fitted is not None else "fleet" if self.borrowed is not None else "none"

    @property
    def value(self) -> float:
        if self.fitted is not None:
            return self.fitted
        return self.borrowed if self.borrowed is not None else math.inf

    def update(self, scores: np.ndarray) -> None:
        if not self.collecting:
            return
        scores = _finite(scores)
        # Scores the borrowed (fleet) threshold alarms on are not this device's normal; after an
        # operator's `recalibrate` every score is, even those above the old threshold.
        limit = self.borrowed if self.fitted is None and self.borrowed is not None else math.inf
        self.calibration = np.concatenate([self.calibration, scores[scores <= limit]])
        if len(self.calibration) >= self.n_calibration:
            # A device's first readings are only presumed normal: fence off faults among them.
            self.calibrate(self.calibration, fence=ONLINE_FENCE)

    def calibrate(self, normal_scores: np.ndarray, fence: float | None = None) -> None:
        threshold = calibrated_threshold(normal_scores, self.false_alarm_rate, fence=fence)
        self.fitted = max(threshold, self.floor, 1e-12)
        self.collecting, self.calibration = False, np.empty(0)

    def recalibrate(self) -> None:
        self.collecting, self.calibration = True, np.empty(0)

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "false_alarm_rate": self.false_alarm_rate,
            "n_calibration": self.n_calibration,
            "borrowed": self.borrowed,
            "fitted": self.fitted,
            "collecting": self.collecting,
            "calibration": self.calibration.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> CalibratedThreshold:
        threshold = cls(state["false_alarm_rate"], state["n_calibration"], state["borrowed"])
        fitted = state["fitted"]
        if fitted is not None and not (math.isfinite(fitted) and fitted > 0):
            raise ValueError(f"a fitted threshold must be finite and > 0, got {fitted!r}")
        threshold.fitted = None if fitted is None else float(fitted)
        threshold.collecting = bool(state["collecting"])
        threshold.calibration = np.array([float(x) for x in state["calibration"]], dtype=np.float64)
        return threshold


def fit_gpd_moments(excess: np.ndarray) -> tuple[float, float]:
    """(shape gamma, scale sigma) of a generalized Pareto distribution by the method of moments.

    Falls back to the exponential tail (gamma = 0) when there are too few distinct peaks.
    """
    if excess.size == 0:
        return 0.0, 0.0
    mean = float(excess.mean())
    var = float(excess.var(ddof=1)) if excess.size > 1 else 0.0
    if var <= 0.0 or excess.size < 3:
        return 0.0, mean
    ratio = mean * mean / var
    return 0.5 * (1.0 - ratio), 0.5 * mean * (1.0 + ratio)


def spot_threshold(t: float, gamma: float, sigma: float, risk: float, n: int, n_peaks: int) -> float:
    """The score exceeded with probability `risk` under the fitted tail (eq. 1 of Siffer et al.)."""
    if n_peaks == 0 or sigma <= 0.0:
        return t
    r = risk * n / n_peaks
    z = t - sigma * math.log(r) if abs(gamma) < 1e-09 else t + sigma / gamma * (r ** (-gamma) - 1.0)
    return max(z, t)


Threshold = QuantileThreshold | SpotThreshold | CalibratedThreshold


def threshold_from_state_dict(state: dict) -> Threshold:
    """Rebuild a threshold from its `state_dict()`; ValueError for an unknown or malformed state."""
    kinds = {cls.kind: cls for cls in (QuantileThreshold, SpotThreshold, CalibratedThreshold)}
    try:
        return kinds[state["kind"]].from_state_dict(state)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad threshold state: {exc!r}") from exc


ONLINE_FENCE = 20.0


def calibrated_threshold(
    normal_scores: np.ndarray,
    false_alarm_rate: float = 1e-3,
    tail_quantile: float = 0.98,
    fence: float | None = None,
) -> float:
    """A threshold fitted on scores of data taken as normal, exceeded by about `false_alarm_rate` of them.

    Peaks over threshold: the scores above their `tail_quantile` are fitted with a generalized Pareto
    tail (as SPOT does), which extrapolates beyond the largest normal score when the target is rarer
    than the calibration set can show. With fewer than 20 peaks the tail is not fitted: the threshold is
    the empirical (1 - false_alarm_rate)-quantile, never below the largest score times the shortfall.
    Unlike an alarm budget, nothing caps how many later readings may exceed it.

    Data only presumed normal (a device's first readings online) can hold faults, whose scores would
    own the fitted tail: with a `fence`, scores beyond the median plus `fence` times the distance from
    the median to the upper quartile are left out of the fit first (`ONLINE_FENCE` = 20: for
    exponential scores ~14.5 means, exceeded with probability 5e-7). The price, measured: on data that
    is truly normal but heavy-tailed (NASA SMAP's train parts) the fenced threshold is lower and false
    alarms rise (FAR 0.12 -> 0.20); on the Intel motes' first 30 %, which hold injected faults, point F1
    rises from 0.07 to 0.42. None: fit on everything (data known to be normal).
    """
    if not 0.0 < false_alarm_rate < 1.0 or not 0.0 < tail_quantile < 1.0:
        raise ValueError("false_alarm_rate and tail_quantile must be within (0, 1)")
    scores = _finite(normal_scores)
    if not scores.size:
        raise ValueError("calibration needs at least one finite score of normal data")
    if fence is not None:
        median, upper = np.quantile(scores, [0.5, 0.75])
        spread = max(float(upper - median), 1e-12 * max(abs(float(median)), 1.0))
        scores = scores[scores <= median + fence * spread]
    if 1.0 - false_alarm_rate <= tail_quantile:
        return float(np.quantile(scores, 1.0 - false_alarm_rate))
    t = float(np.quantile(scores, tail_quantile))
    excess = scores[scores > t] - t
    if excess.size < 20:
        return float(max(np.quantile(scores, 1.0 - false_alarm_rate), scores.max()))
    gamma, sigma = fit_gpd_moments(excess)
    return spot_threshold(t, gamma, sigma, false_alarm_rate, scores.size, excess.size)
