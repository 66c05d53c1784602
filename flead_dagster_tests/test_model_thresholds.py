"""Adaptive thresholds: a streaming quantile and SPOT, against distributions with known quantiles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flead.model.thresholds import (
    CalibratedThreshold,
    QuantileThreshold,
    SpotThreshold,
    calibrated_threshold,
    fit_gpd_moments,
    threshold_from_state_dict,
)


def feed(threshold, scores: np.ndarray, batches: int = 400) -> tuple[np.ndarray, np.ndarray]:
    limits, flags = zip(
        *(threshold.process_many(part) for part in np.array_split(scores, batches)), strict=True
    )
    return np.concatenate(limits), np.concatenate(flags)


@pytest.mark.parametrize(
    ("draw", "q"),
    [(lambda rng, n: rng.exponential(1.0, n), 0.99), (lambda rng, n: rng.lognormal(-3.0, 2.0, n), 0.999)],
)
def test_quantile_estimate_is_close_to_the_true_quantile(draw, q: float) -> None:
    scores = draw(np.random.default_rng(0), 200_000)
    threshold = QuantileThreshold(q=q, warmup=100, half_life=None)
    feed(threshold, scores)
    assert threshold.value == pytest.approx(np.quantile(scores, q), rel=0.02)
    assert len(json.dumps(threshold.state_dict())) < 20_000  # bounded, whatever the stream length


def test_quantile_follows_a_changed_distribution_with_decay() -> None:
    rng = np.random.default_rng(1)
    decayed = QuantileThreshold(q=0.99, warmup=10, half_life=2_000)
    forever = QuantileThreshold(q=0.99, warmup=10, half_life=None)
    for threshold in (decayed, forever):
        feed(threshold, rng.exponential(1.0, 50_000), 100)
        feed(threshold, rng.exponential(10.0, 20_000), 40)
    assert decayed.value == pytest.approx(10 * math.log(100), rel=0.05)
    assert forever.value < 0.8 * decayed.value


def test_quantile_warm_up_gives_no_alarms_and_alarms_come_after() -> None:
    rng = np.random.default_rng(2)
    threshold = QuantileThreshold(q=0.99, warmup=1_000)
    limits, flags = threshold.process_many(np.r_[rng.exponential(1.0, 998), 1e6])
    assert np.isinf(limits).all() and not flags.any() and not threshold.warmed_up
    threshold.process_many(rng.exponential(1.0, 1_000))
    limits, flags = threshold.process_many(np.array([0.5, 1e3]))
    assert np.isfinite(limits).all() and flags.tolist() == [False, True]


def test_spot_threshold_sits_in_the_tail_and_alarms_on_extremes() -> None:
    rng = np.random.default_rng(3)
    bulk = rng.exponential(1.0, 200_000)
    spot = SpotThreshold(risk=1e-4, n_init=2_000, init_quantile=0.98)
    limits, flags = feed(spot, bulk)
    # The exact 1 - 1e-4 quantile of Exp(1) is 9.21; leaving alarms out of the fit (as SPOT does)
    # biases the estimate a little low.
    assert np.quantile(bulk, 0.999) < spot.value < 11.0
    assert flags[2_000:].mean() < 5e-4
    assert spot.t == pytest.approx(np.quantile(bulk[:2_000], 0.98))
    extremes = np.array([0.3, 50.0, 1.2, 80.0])
    limits, flags = spot.process_many(extremes)
    assert flags.tolist() == [False, True, False, True]
    assert (limits == limits[0]).all()  # one threshold per batch: the state before it


def test_spot_calibration_is_its_warm_up() -> None:
    spot = SpotThreshold(n_init=500)
    limits, flags = spot.process_many(np.r_[np.ones(498), 1e9])
    assert np.isinf(limits).all() and not flags.any() and not spot.warmed_up
    spot.process_many(np.ones(1))
    assert spot.warmed_up and math.isfinite(spot.value)


def test_gpd_method_of_moments_recovers_known_parameters() -> None:
    rng = np.random.default_rng(4)
    gamma, sigma = 0.2, 1.5
    excess = sigma / gamma * ((1 - rng.random(20_000)) ** (-gamma) - 1)  # inverse CDF
    fitted_gamma, fitted_sigma = fit_gpd_moments(excess)
    assert fitted_gamma == pytest.approx(gamma, abs=0.05)
    assert fitted_sigma == pytest.approx(sigma, rel=0.05)
    assert fit_gpd_moments(np.full(10, 2.0)) == (0.0, 2.0)  # no spread: the exponential fallback


@pytest.mark.parametrize(
    "make", [lambda: QuantileThreshold(q=0.99, warmup=300), lambda: SpotThreshold(n_init=300, max_peaks=50)]
)
def test_state_round_trips_through_json_and_continues_identically(make) -> None:
    rng = np.random.default_rng(5)
    original = make()
    feed(original, rng.exponential(1.0, 5_000), 10)
    restored = threshold_from_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    more = rng.exponential(1.0, 3_000)
    for a, b in zip(np.array_split(more, 6), np.array_split(more, 6), strict=True):
        la, fa = original.process_many(a)
        lb, fb = restored.process_many(b)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(fa, fb)


def test_bad_states_are_refused() -> None:
    with pytest.raises(ValueError, match="bad threshold state"):
        threshold_from_state_dict({"kind": "median"})
    state = QuantileThreshold().state_dict()
    with pytest.raises(ValueError, match="counts"):  # past the last bin
        threshold_from_state_dict(
            {**state, "counts_offset": QuantileThreshold().counts.size - 1, "counts": [1.0, 2.0]}
        )
    with pytest.raises(ValueError, match="counts"):
        threshold_from_state_dict({**state, "counts": [1.0, -2.0]})
    with pytest.raises(ValueError, match="q must be"):
        QuantileThreshold(q=1.5)


def test_calibrated_threshold_meets_its_false_alarm_target_on_unseen_normal_scores() -> None:
    rng = np.random.default_rng(0)
    calibration, unseen = rng.exponential(1.0, 5_000), rng.exponential(1.0, 200_000)
    for rate in (1e-2, 1e-3, 1e-4):
        threshold = calibrated_threshold(calibration, rate)
        assert 0.5 * rate <= (unseen > threshold).mean() <= 2.0 * rate
    # An anomalous stretch is not capped by a budget: every reading above the threshold alarms.
    assert (rng.exponential(1.0, 1_000) + 20.0 > calibrated_threshold(calibration, 1e-3)).all()


def test_calibrated_threshold_with_few_scores_stays_above_them() -> None:
    scores = np.arange(1.0, 51.0)
    assert calibrated_threshold(scores, 1e-3) >= 50.0
    with pytest.raises(ValueError, match="finite score"):
        calibrated_threshold(np.array([np.nan]), 1e-3)


def test_a_recalibration_takes_the_new_level_even_above_the_old_threshold() -> None:
    rng = np.random.default_rng(3)
    threshold = CalibratedThreshold(1e-3, n_calibration=500, borrowed=5.0)
    threshold.update(np.concatenate([np.full(50, 100.0), rng.exponential(1.0, 600)]))
    assert threshold.source == "own" and threshold.value < 20  # the fleet's alarms were left out
    threshold.recalibrate()
    threshold.update(rng.exponential(1.0, 500) + 50.0)  # the operator said this level is normal
    assert threshold.value > 50 and not threshold.collecting
