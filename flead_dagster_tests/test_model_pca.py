"""PCA T²+Q: subspace geometry, the statistics that merge into a fleet PCA, awkward training data."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from flead.model import pca as pca_module
from flead.model.pca import PCADetector, PCAStatistics


def correlated(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Five features driven by two latent factors, plus a little noise."""
    rng = np.random.default_rng(seed)
    mixing = np.array([[1.0, 0.5, -1.0, 2.0, 0.0], [0.0, 1.0, 1.0, -0.5, 1.5]])
    return rng.normal(size=(n, 2)) @ mixing + 0.05 * rng.normal(size=(n, 5)) + shift


def test_the_docstring_example_runs() -> None:
    result = doctest.testmod(pca_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_off_subspace_is_q_and_far_inside_it_is_t2() -> None:
    normal = correlated(2000)
    model = PCADetector(variance=0.95).learn_many(normal)
    assert model.n_components == 2
    mixing_row = np.array([1.0, 0.5, -1.0, 2.0, 0.0])
    far_inside = 8.0 * mixing_row  # eight standard deviations along the first factor
    off = normal.mean(axis=0)
    off[0] += 1.0  # breaks the correlation, small in magnitude
    t2, q = model.t2_and_q(np.vstack([far_inside, off]))
    train_t2, train_q = model.t2_and_q(normal)
    assert t2[0] > 5 * np.quantile(train_t2, 0.99) and q[0] < np.quantile(train_q, 0.99)
    assert q[1] > 10 * np.quantile(train_q, 0.99) and t2[1] < np.quantile(train_t2, 0.99)
    scores = model.score_many(np.vstack([far_inside, off]))
    assert (scores > 3 * np.quantile(model.score_many(normal), 0.99)).all()


def test_each_statistic_is_scaled_by_its_training_mean() -> None:
    normal = correlated(5000, seed=1)
    model = PCADetector().learn_many(normal)
    t2, q = model.t2_and_q(normal)
    assert t2.mean() == pytest.approx(model.n_components, rel=0.01)
    assert model.score_many(normal).mean() == pytest.approx(2.0, rel=0.01)
    assert q.mean() > 0


def test_a_fleet_pca_from_merged_statistics_equals_one_fitted_on_the_pooled_rows() -> None:
    a, b = correlated(300, seed=2), correlated(500, seed=3, shift=0.7)
    a[::7, 1] = np.nan  # missing values are imputed with the (fleet) mean either way
    b[::11, 3] = np.nan
    pooled = PCADetector(variance=0.9).learn_many(np.vstack([a, b]))
    merged = PCADetector(variance=0.9).learn_many(a).merge(PCADetector().learn_many(b))
    from_stats = PCADetector.from_statistics(PCAStatistics.of(a) + PCAStatistics.of(b), variance=0.9)
    probe = correlated(50, seed=4, shift=0.3)
    expected = pooled.score_many(probe)
    assert merged.n_components == pooled.n_components
    np.testing.assert_allclose(merged.score_many(probe), expected, rtol=1e-9)
    np.testing.assert_allclose(from_stats.score_many(probe), expected, rtol=1e-9)
    batches = PCADetector(variance=0.9)
    for part in np.array_split(np.vstack([a, b]), 7):
        batches.learn_many(part)
    np.testing.assert_allclose(batches.score_many(probe), expected, rtol=1e-9)


def test_missing_values_are_imputed_with_the_training_mean() -> None:
    normal = correlated(1000, seed=5)
    model = PCADetector().learn_many(normal)
    mean = np.nanmean(normal, axis=0)
    row = correlated(1, seed=6)[0]
    with_gap = row.copy()
    with_gap[2] = np.nan
    at_mean = row.copy()
    at_mean[2] = mean[2]
    assert model.score_many(with_gap[None])[0] == pytest.approx(model.score_many(at_mean[None])[0])
    assert np.isfinite(model.score_many(np.full((1, 5), np.nan))).all()


def test_a_constant_feature_is_kept_and_any_change_of_it_scores_high() -> None:
    normal = np.hstack([correlated(500, seed=7), np.full((500, 1), 3.0)])
    model = PCADetector().learn_many(normal)
    train = model.score_many(normal)
    assert np.isfinite(train).all()
    moved = normal[:1].copy()
    moved[0, -1] = 3.1
    assert model.score_many(moved)[0] > 100 * train.max()


def test_fewer_rows_than_features_and_a_single_feature() -> None:
    wide = correlated(4, seed=8)
    wide = np.hstack([wide, wide * 2.0 + 1.0])  # 10 features, 4 rows
    model = PCADetector().learn_many(wide)
    assert 1 <= model.n_components <= 3
    train = model.score_many(wide)
    off = wide[:1] + np.linspace(-1, 1, 10)
    assert np.isfinite(train).all() and model.score_many(off)[0] > train.max()

    single = PCADetector().learn_many(np.arange(100.0)[:, None])
    assert single.n_components == 1
    scores = single.score_many(np.array([[49.5], [49.5 + 3 * np.std(np.arange(100.0), ddof=1)]]))
    assert scores == pytest.approx([0.0, 9.0])  # a squared z-score


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="no training rows"):
        PCADetector().score_many(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="cannot merge 2 features with 3"):
        PCADetector().learn_many(np.zeros((3, 2))).merge(PCADetector().learn_many(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="variance"):
        PCADetector(variance=0.0)
