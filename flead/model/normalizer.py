"""Per-feature running mean and variance of one device's readings, updated a batch at a time."""

from __future__ import annotations

import numpy as np


class RunningNormalizer:
    """Welford statistics merged batch by batch with Chan et al.'s parallel update; NaN is skipped.

    Each feature keeps its own count, so a feature that is often missing is still estimated from the
    readings that have it. Until a feature has two readings it is left as it is (mean 0, std 1).
    """

    def __init__(self, n_features: int, min_std: tuple[float, ...] | np.ndarray | None = None) -> None:
        self.count = np.zeros(n_features)
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.min_std = np.zeros(n_features) if min_std is None else np.asarray(min_std, dtype=np.float64)
        if self.min_std.shape != (n_features,):
            raise ValueError(f"min_std needs {n_features} values")

    @property
    def ready(self) -> bool:
        return bool((self.count >= 2).all())

    @property
    def resolution(self) -> np.ndarray:
        """The smallest change of each feature that counts: `min_std`, and at least a millionth of its
        magnitude (about what a float32 reading resolves) for features whose resolution nobody gave."""
        return np.maximum(self.min_std, 1e-6 * (1.0 + np.abs(self.mean)))

    @property
    def std(self) -> np.ndarray:
        var = np.divide(self.m2, self.count - 1, out=np.ones_like(self.m2), where=self.count >= 2)
        return np.maximum(np.sqrt(var), self.resolution)

    def update(self, values: np.ndarray, clip: float | None = None) -> None:
        """Merge the readings `values` (n, n_features); NaN entries are ignored.

        With `clip`, values beyond mean +- clip * std are merged as if they were at that bound
        (winsorised), so one wild reading cannot blow up the scale while a lasting change of level
        still moves it, step by step.
        """
        if clip is not None and self.ready:
            std = self.std
            values = np.clip(values, self.mean - clip * std, self.mean + clip * std)
        valid = np.isfinite(values)
        n_b = valid.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        safe_n_b = np.maximum(n_b, 1.0)
        mean_b = np.where(valid, values, 0.0).sum(axis=0) / safe_n_b
        m2_b = np.square(np.where(valid, values - mean_b, 0.0)).sum(axis=0)
        total = self.count + n_b
        safe_total = np.maximum(total, 1.0)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / safe_total)
        self.m2 = self.m2 + m2_b + delta * delta * (self.count * n_b / safe_total)
        self.count = total

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(values - mean) / std, float64; NaN stays NaN."""
        return (values - self.mean) / self.std

    def state_dict(self) -> dict:
        return {
            "count": self.count.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "min_std": self.min_std.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict, n_features: int) -> RunningNormalizer:
        try:
            normalizer = cls(n_features, state["min_std"])
            for key in ("count", "mean", "m2"):
                value = np.asarray(state[key], dtype=np.float64)
                if value.shape != (n_features,) or not np.isfinite(value).all():
                    raise ValueError(f"normaliser {key!r} must hold {n_features} finite numbers")
                setattr(normalizer, key, value)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad normaliser state: {exc!r}") from exc
        return normalizer
