"""The subspace check: a PCA T²+Q member beside the network, kept only where it generalises.

A device with several features has a cross-feature structure (temperature and humidity move
together); a reading that breaks it, or leaves the normal subspace, scores high on PCA's T²+Q
(`flead.model.pca`) even when each feature alone looks ordinary. The network sees that structure
too, but it is trained online for a few passes, while a PCA is exact from a few hundred readings:
on a stationary multivariate fleet it finds what the network misses (docs/model.md).

It is fitted on the first part of a device's normal readings and judged on the rest (held out):
its threshold is calibrated on the held-out scores, at the false-alarm target, and the member is
kept only if the held-out readings score on average at most `GATE` times what the readings it was
fitted on do (about 2: T²/k and Q/residual each average 1 in-sample). A device whose normal
behaviour drifts over time (a battery running down, seasons) fails that test — a PCA fixed on
its early readings would flag its later ones — and is left to the network. With a single feature
there is no subspace: the check stays off. On the detection benchmark's train parts (docs/model.md)
it is kept on 29 of the 30 stationary multivariate devices, 18 of the 54 synthetic ones (30 %
train), none of the 9 Intel motes at 30 % train and 4 of them at 10 %.

A fit that generalised over the device's normal readings can still go stale later (a trend
longer than the data it was judged on). While it judges, it is audited against the network: if
it flags more than `STALE` of `AUDIT` readings in a row that the network finds normal, its
reference no longer describes the device, and it is dropped (`stale` says so). The price: a
fault only the subspace sees that covers more than `STALE` of an audit's readings ends the check
when that audit closes; the device is then judged by the network and the other checks alone.

Offline, `fit_split` does both steps on the normal readings given. Online, the device's first
readings (its warm-up) are `learn`t, the next ones (its calibration window) `observe`d as held out,
and `fit` decides when the device's threshold is calibrated.
"""

from __future__ import annotations

import math

import numpy as np

from flead.model.pca import PCADetector, PCAStatistics
from flead.model.thresholds import calibrated_threshold

HELD_OUT = 0.3  # share of the normal readings a fit is judged on (offline)
GATE = 2.0  # kept if held-out readings score on average at most GATE x the in-sample mean
IN_SAMPLE_MEAN = 2.0  # of T²/k + Q/residual over the rows a PCA was fitted on (`flead.model.pca`)
VARIANCE = 0.95  # of the standardised variance the kept components explain
MIN_ROWS = 50  # readings to fit on, and to judge on, at least
AUDIT = 1000  # readings the network finds normal, per audit
STALE = 0.1  # dropped if it flags more than this share of them


class SubspaceCheck:
    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.pca: PCADetector | None = None  # None until it has rows
        self.held_out = np.empty(0)  # online: scores of the calibration window (float64, per device)
        self.threshold: float | None = None  # fitted and kept; None = not judging
        self.decided = False  # fitted (kept or not)
        self.audited = 0  # readings the network found normal, in the current audit
        self.disagreed = 0  # of which this check flagged
        self.stale = False  # dropped by an audit

    @property
    def active(self) -> bool:
        return self.threshold is not None

    def learn(self, values: np.ndarray) -> None:
        """Add normal readings (n, F) to the fit (before it is decided)."""
        rows = values[np.isfinite(values).any(axis=1)]
        if self.decided or self.n_features < 2 or not len(rows):
            return
        self.pca = (self.pca or PCADetector(VARIANCE)).learn_many(rows)

    def observe(self, values: np.ndarray) -> None:
        """Held-out normal readings (online: the calibration window), scored by the fit so far."""
        if self.decided or not self._fittable():
            return
        rows = values[np.isfinite(values).any(axis=1)]
        self.held_out = np.concatenate([self.held_out, self.pca.score_many(rows)])

    def fit(self, false_alarm_rate: float) -> None:
        """Keep the member or not, from the held-out scores observed; decided once, whatever it had."""
        held_out, self.held_out = self.held_out, np.empty(0)
        if self.decided:
            return
        self.decided = True
        if self._fittable() and held_out.size >= MIN_ROWS and held_out.mean() <= GATE * IN_SAMPLE_MEAN:
            self.threshold = calibrated_threshold(held_out, false_alarm_rate)

    def fit_split(self, normal: np.ndarray, false_alarm_rate: float) -> None:
        """Offline: fit on the first (1 - HELD_OUT) of the normal readings, judge on the rest."""
        self.reset()
        rows = normal[np.isfinite(normal).any(axis=1)]
        cut = int(len(rows) * (1.0 - HELD_OUT))
        if self.n_features >= 2 and cut >= MIN_ROWS and len(rows) - cut >= MIN_ROWS:
            self.pca = PCADetector(VARIANCE).learn_many(rows[:cut])
            self.held_out = np.asarray(self.pca.score_many(rows[cut:]), dtype=np.float64)
            self.fit(false_alarm_rate)
        self.decided = True  # judged by the readings given, never by later ones

    def audit(self, flagged: np.ndarray, network_normal: np.ndarray) -> None:
        """Count this check's flags on readings the network found normal; drop a stale reference."""
        if self.threshold is None:
            return
        self.audited += int(network_normal.sum())
        self.disagreed += int((flagged & network_normal).sum())
        if self.audited >= AUDIT:
            if self.disagreed > STALE * self.audited:
                self.drop()
                self.stale = True
            self.audited = self.disagreed = 0

    def severity(self, values: np.ndarray) -> np.ndarray:
        """(n,) score / threshold; 0 where the member is not kept."""
        if self.threshold is None:
            return np.zeros(len(values))
        return self.pca.score_many(values) / self.threshold

    def state_dict(self) -> dict:
        stats = None if self.pca is None else self.pca.statistics
        return {
            "statistics": None if stats is None else stats.to_dict(),
            "held_out": self.held_out.tolist(),
            "threshold": self.threshold,
            "decided": self.decided,
            "audited": self.audited,
            "disagreed": self.disagreed,
            "stale": self.stale,
        }

    @classmethod
    def from_state_dict(cls, state: dict, n_features: int) -> SubspaceCheck:
        check = cls(n_features)
        try:
            stats = state["statistics"]
            if stats is not None:
                check.pca = PCADetector(VARIANCE, statistics=PCAStatistics.from_dict(stats, n_features))
            check.held_out = np.array([float(x) for x in state["held_out"]], dtype=np.float64)
            threshold = state["threshold"]
            check.threshold = None if threshold is None else float(threshold)
            check.decided = bool(state["decided"])
            check.audited, check.disagreed = int(state["audited"]), int(state["disagreed"])
            check.stale = bool(state["stale"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad subspace-check state: {exc!r}") from exc
        if check.threshold is not None and (check.pca is None or not math.isfinite(check.threshold)):
            raise ValueError("bad subspace-check state: a threshold needs a fit and must be finite")
        return check

    def reset(self) -> None:
        self.pca, self.held_out, self.threshold, self.decided = None, np.empty(0), None, False
        self.audited = self.disagreed = 0
        self.stale = False

    def drop(self) -> None:
        """Stop judging (a new normal was accepted: the fit describes the old one)."""
        self.reset()
        self.decided = True

    def _fittable(self) -> bool:
        return self.pca is not None and self.pca.statistics.rows >= MIN_ROWS
