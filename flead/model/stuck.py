"""Stuck values: a feature that repeats its last value exactly for longer than its device ever did.

A sensor that stops updating reports a value that is in range, is reconstructed well by any model
of its normal behaviour, and so scores as normal: the model cannot see it, a run length can. A
feature's run is the number of readings in a row that repeat its previous value exactly (a missing
value ends a run). Calibration counts, per feature, how often normal readings end runs of each
length in `WINDOWS`; a feature is then checked at the shortest window whose runs are rarer than the
false-alarm target (a light sensor in a dark room repeats itself all night: it is never checked).
Severity = run / window, so a reading 2 windows into a stuck stretch has severity 2.

>>> import numpy as np
>>> check = StuckCheck(1)
>>> normal = np.sin(np.arange(2_000.0) / 7)[:, None]  # never repeats itself
>>> check.observe(check.runs(normal)); check.fit(1e-3)
>>> check.windows.tolist()
[10.0]
>>> check.severity(check.runs(np.full((25, 1), 0.5))).round(1).tolist()[-3:]
[2.2, 2.3, 2.4]
"""

from __future__ import annotations

import math

import numpy as np

WINDOWS = (10, 20, 40, 80, 160, 320)


class StuckCheck:
    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.last = np.full(n_features, np.nan)  # the last value of each feature
        self.run = np.zeros(n_features)  # how many readings in a row repeated it
        self.counts = np.zeros((n_features, len(WINDOWS)))  # calibration: readings with run >= window
        self.total = 0
        self.windows = np.full(n_features, math.inf)  # fitted; inf = not checked

    def runs(self, values: np.ndarray) -> np.ndarray:
        """(n, F) run length at each reading, continuing from the state, which is not changed."""
        values = np.asarray(values, dtype=np.float64)
        previous = np.vstack([self.last, values[:-1]])
        same = (values == previous) & np.isfinite(values)
        index = np.arange(len(values))[:, None]
        last_break = np.maximum.accumulate(np.where(same, -1, index), axis=0)
        runs = np.where(last_break < 0, self.run + index + 1, index - last_break)
        runs = np.where(same, runs, 0).astype(np.float64)
        return runs

    def advance(self, values: np.ndarray, runs: np.ndarray) -> None:
        if len(values):
            self.last = np.asarray(values[-1], dtype=np.float64).copy()
            self.run = runs[-1].copy()

    def observe(self, runs: np.ndarray) -> None:
        """Count normal readings' runs towards the calibration."""
        self.counts += (runs[:, :, None] >= np.asarray(WINDOWS)).sum(axis=0)
        self.total += len(runs)

    def fit(self, false_alarm_rate: float) -> None:
        rate = self.counts / max(self.total, 1)
        for f in range(self.n_features):
            allowed = np.flatnonzero(rate[f] <= false_alarm_rate)
            self.windows[f] = WINDOWS[allowed[0]] if allowed.size and self.total else math.inf

    def reset_calibration(self) -> None:
        self.counts[...] = 0
        self.total = 0

    def severity(self, runs: np.ndarray) -> np.ndarray:
        """(n,) the largest run / window over the checked features; 0 where none is checked."""
        if not np.isfinite(self.windows).any():
            return np.zeros(len(runs))
        return (runs / self.windows).max(axis=1)

    def state_dict(self) -> dict:
        return {
            "last": [None if math.isnan(x) else x for x in self.last.tolist()],
            "run": self.run.tolist(),
            "counts": self.counts.tolist(),
            "total": self.total,
            "windows": [None if math.isinf(x) else x for x in self.windows.tolist()],
        }

    @classmethod
    def from_state_dict(cls, state: dict, n_features: int) -> StuckCheck:
        check = cls(n_features)
        try:
            check.last = np.array([np.nan if x is None else x for x in state["last"]], dtype=np.float64)
            check.run = np.asarray(state["run"], dtype=np.float64)
            check.counts = np.asarray(state["counts"], dtype=np.float64)
            check.total = int(state["total"])
            check.windows = np.array([math.inf if x is None else x for x in state["windows"]], np.float64)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad stuck-value state: {exc!r}") from exc
        shapes = (check.last.shape, check.run.shape, check.windows.shape, check.counts.shape)
        if shapes != ((n_features,), (n_features,), (n_features,), (n_features, len(WINDOWS))):
            raise ValueError("stuck-value state does not match the features")
        return check
