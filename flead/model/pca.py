"""PCA T²+Q: the classical subspace detector, fitted on a device's normal readings (NumPy only).

Each feature is standardised with the training mean and std (floored at `min_std`, so a constant
feature is kept and any change of it scores high); the principal components of the standardised
data that explain `variance` of it are kept. A reading's Hotelling **T²** is its squared distance
inside that subspace, each component divided by its variance; **Q** (squared prediction error) is
its squared distance from the subspace. On the training rows T² averages k (the components kept)
and Q the variance left out, so the score is ``T²/k + Q/residual_variance``: each statistic divided
by its own training mean, both count, and the training rows score about 2 on average (1 with a
single feature, where nothing is left out and Q is 0). Missing values (NaN) are
imputed with the training mean, in the statistics as in scoring.

The model is its sufficient statistics (row count, per-feature counts and sums, sums of products),
which add: `merge` (or `from_statistics` of a sum) builds a fleet PCA from devices' statistics
without their rows, equal to one fitted on the pooled rows.

>>> rng = np.random.default_rng(0)
>>> t = rng.normal(size=(500, 1))
>>> normal = np.hstack([t, 2 * t]) + 0.05 * rng.normal(size=(500, 2))
>>> pca = PCADetector(variance=0.9).learn_many(normal)
>>> pca.n_components
1
>>> inside, off, far = pca.score_many(np.array([[0.5, 1.0], [0.5, -1.0], [4.0, 8.0]]))
>>> bool(off > 100 * inside), bool(far > 10 * inside)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PCAStatistics:
    rows: int
    count: np.ndarray  # (F,) non-missing values per feature
    total: np.ndarray  # (F,) their sum
    cross: np.ndarray  # (F, F) sum of x_j x_k over rows where both are present
    sided: np.ndarray  # (F, F) sum of x_j over rows where x_k is present too
    pairs: np.ndarray  # (F, F) rows where both are present

    @classmethod
    def of(cls, x: np.ndarray) -> PCAStatistics:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        present = np.isfinite(x)
        filled, mask = np.where(present, x, 0.0), present.astype(np.float64)
        return cls(x.shape[0], mask.sum(0), filled.sum(0), filled.T @ filled, filled.T @ mask, mask.T @ mask)

    def __add__(self, other: PCAStatistics) -> PCAStatistics:
        if self.count.shape != other.count.shape:
            raise ValueError(f"cannot merge {self.count.size} features with {other.count.size}")
        return PCAStatistics(*(a + b for a, b in zip(self._fields(), other._fields(), strict=True)))

    def to_dict(self) -> dict:
        """Plain JSON (float64 values round-trip exactly)."""
        rows, *arrays = self._fields()
        return {"rows": rows, **{k: a.tolist() for k, a in zip(_ARRAYS, arrays, strict=True)}}

    @classmethod
    def from_dict(cls, data: dict, n_features: int) -> PCAStatistics:
        f = n_features
        shapes = {"count": (f,), "total": (f,), "cross": (f, f), "sided": (f, f), "pairs": (f, f)}
        arrays = [np.asarray(data[k], dtype=np.float64) for k in _ARRAYS]
        for key, array in zip(_ARRAYS, arrays, strict=True):
            if array.shape != shapes[key] or not np.isfinite(array).all():
                raise ValueError(f"PCA statistics {key!r} must be {shapes[key]} finite numbers")
        return cls(int(data["rows"]), *arrays)

    def _fields(self) -> tuple:
        return self.rows, self.count, self.total, self.cross, self.sided, self.pairs

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean, and covariance with missing values imputed by the mean (they add no deviation)."""
        mean = np.divide(self.total, self.count, out=np.zeros_like(self.total), where=self.count > 0)
        centred = (self.cross - mean[None, :] * self.sided - mean[:, None] * self.sided.T) + np.outer(
            mean, mean
        ) * self.pairs
        return mean, centred / max(self.rows - 1, 1)


_ARRAYS = ("count", "total", "cross", "sided", "pairs")


class PCADetector:
    """T²+Q on the components explaining `variance` of the standardised training data."""

    def __init__(
        self, variance: float = 0.95, min_std: float = 1e-6, statistics: PCAStatistics | None = None
    ):
        if not 0.0 < variance <= 1.0 or not min_std > 0.0:
            raise ValueError("variance must be within (0, 1] and min_std > 0")
        self.variance, self.min_std, self.statistics = variance, min_std, statistics
        self._fit: tuple | None = None

    @classmethod
    def from_statistics(cls, statistics: PCAStatistics, **kwargs) -> PCADetector:
        return cls(statistics=statistics, **kwargs)

    def merge(self, other: PCADetector) -> PCADetector:
        """A detector on both detectors' training rows (this one's settings)."""
        if self.statistics is None or other.statistics is None:
            return PCADetector(self.variance, self.min_std, self.statistics or other.statistics)
        return PCADetector(self.variance, self.min_std, self.statistics + other.statistics)

    def learn_many(self, x: np.ndarray) -> PCADetector:
        batch = PCAStatistics.of(x)
        self.statistics = batch if self.statistics is None else self.statistics + batch
        self._fit = None
        return self

    @property
    def n_components(self) -> int:
        return self._fitted()[3]

    def _fitted(self) -> tuple:
        if self._fit is None:
            if self.statistics is None or self.statistics.rows == 0:
                raise ValueError("the PCA has no training rows yet")
            mean, cov = self.statistics.mean_and_covariance()
            std = np.maximum(np.sqrt(np.clip(np.diag(cov), 0.0, None)), self.min_std)
            eigenvalues, vectors = np.linalg.eigh(cov / np.outer(std, std))
            order = np.argsort(eigenvalues)[::-1]
            eigenvalues, vectors = eigenvalues[order], vectors[:, order]
            eigenvalues[eigenvalues <= 1e-10 * max(eigenvalues[0], 0.0)] = 0.0  # rounding noise
            total = eigenvalues.sum()
            share = np.cumsum(eigenvalues) / total if total > 0 else np.ones_like(eigenvalues)
            # Components up to the variance target, never a zero-variance one, and none when F = 1...
            k = min(
                int(np.searchsorted(share, self.variance - 1e-12)) + 1, int(np.count_nonzero(eigenvalues))
            )
            k = min(k, eigenvalues.size - 1) if eigenvalues.size > 1 else k  # ...or Q would always be 0
            residual = max(float(eigenvalues[k:].sum()), 1e-6 * max(float(total), 1.0))
            self._fit = (mean, std, vectors[:, :k], k, eigenvalues[:k], residual)
        return self._fit

    def t2_and_q(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std, components, k, eigenvalues, _ = self._fitted()
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        z = (np.where(np.isfinite(x), x, mean) - mean) / std
        projected = z @ components
        t2 = (projected**2 / eigenvalues).sum(axis=1) if k else np.zeros(len(z))
        q = ((z - projected @ components.T) ** 2).sum(axis=1)
        return t2, q

    def score_many(self, x: np.ndarray) -> np.ndarray:
        """T²/k + Q/residual variance per row (each statistic over its training mean)."""
        t2, q = self.t2_and_q(x)
        *_, k, _, residual = self._fitted()
        return (t2 / k if k else t2) + q / residual
