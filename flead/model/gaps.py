"""Silence: a reading that arrives after a longer gap than its device's calibration ever saw.

A sensor that drops out reports nothing, so no model can score the readings it did not send; the
first reading after the silence can say how long it was. Calibration keeps the gaps between a
device's normal readings; the window is the shortest multiple (`MULTIPLES`) of their median gap
that normal gaps reach less often than the false-alarm target. Severity = gap / window. Needs
timestamps: a detector without them has no gap check.

>>> import numpy as np
>>> check = GapCheck()
>>> ts = np.arange(0, 2_000 * 30_000_000, 30_000_000)  # a reading every 30 s
>>> check.observe(check.gaps(ts)); check.fit(1e-3); check.advance(ts)
>>> check.window_s
60.0
>>> check.severity(check.gaps(ts[-1:] + 20 * 60 * 1_000_000)).tolist()  # back after 20 minutes
[20.0]
"""

from __future__ import annotations

import math

import numpy as np

MULTIPLES = (2, 4, 8, 16, 32, 64)
MAX_GAPS = 5_000  # calibration gaps kept


class GapCheck:
    def __init__(self) -> None:
        self.last_us: int | None = None
        self.calibration = np.empty(0)  # gaps (s) between normal readings
        self.window_s = math.inf  # fitted; inf = not checked

    def gaps(self, ts_us: np.ndarray) -> np.ndarray:
        """(n,) seconds since the reading before each one (0 for a device's very first reading)."""
        ts_us = np.asarray(ts_us, dtype=np.int64)
        before = np.concatenate([[ts_us[0] if self.last_us is None else self.last_us], ts_us[:-1]])
        return np.maximum(ts_us - before, 0) / 1e6

    def advance(self, ts_us: np.ndarray) -> None:
        if len(ts_us):
            self.last_us = int(np.asarray(ts_us)[-1])

    def observe(self, gaps: np.ndarray) -> None:
        room = MAX_GAPS - len(self.calibration)
        if room > 0:
            self.calibration = np.concatenate([self.calibration, np.asarray(gaps, dtype=np.float64)[:room]])

    def fit(self, false_alarm_rate: float) -> None:
        gaps = self.calibration[self.calibration > 0]
        self.window_s = math.inf
        if gaps.size >= 10:
            typical = float(np.median(gaps))
            for multiple in MULTIPLES:
                if np.mean(gaps >= multiple * typical) <= false_alarm_rate:
                    self.window_s = multiple * typical
                    break
        self.calibration = np.empty(0)

    def reset_calibration(self) -> None:
        self.calibration = np.empty(0)

    def severity(self, gaps: np.ndarray) -> np.ndarray:
        return np.asarray(gaps, dtype=np.float64) / self.window_s

    def state_dict(self) -> dict:
        return {
            "last_us": self.last_us,
            "calibration": self.calibration.tolist(),
            "window_s": None if math.isinf(self.window_s) else self.window_s,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> GapCheck:
        check = cls()
        try:
            check.last_us = None if state["last_us"] is None else int(state["last_us"])
            check.calibration = np.array([float(x) for x in state["calibration"]], dtype=np.float64)
            check.window_s = math.inf if state["window_s"] is None else float(state["window_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad gap-check state: {exc!r}") from exc
        return check
