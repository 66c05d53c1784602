"""Bad local updates are refused at the edge, each with a reason; good ones become float64 deltas."""

from __future__ import annotations

import numpy as np
import pytest

from flead.federated import AggregationConfig, GlobalState, LocalUpdate, UpdateRefused, prepare_update

SHAPES = {"hidden/kernel": (4, 3), "hidden/bias": (3,)}


@pytest.fixture
def state() -> GlobalState:
    rng = np.random.default_rng(3)
    return GlobalState(
        version=2, weights={n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    )


def delta(value: float = 0.01, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=dtype) for name, shape in SHAPES.items()}


def update(arrays: object = None, **overrides: object) -> LocalUpdate:
    fields = {"device_id": "mote-01", "update_id": "u1", "base_version": 2, "n_samples": 5, "arrays": arrays}
    fields.update(overrides)
    if fields["arrays"] is None:
        fields["arrays"] = delta()
    return LocalUpdate(**fields)


def refusal(update: LocalUpdate, state: GlobalState, config: AggregationConfig | None = None) -> str:
    with pytest.raises(UpdateRefused) as caught:
        prepare_update(update, state, config or AggregationConfig())
    return caught.value.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(state, bad) -> None:
    arrays = delta()
    arrays["hidden/kernel"][1, 2] = bad

    reason = refusal(update(arrays), state)

    assert "'hidden/kernel'" in reason
    assert ("1 NaN" if np.isnan(bad) else "1 Inf") in reason


def test_wrong_shape_is_refused(state) -> None:
    arrays = delta()
    arrays["hidden/bias"] = np.zeros(4, dtype=np.float32)

    assert refusal(update(arrays), state) == "array 'hidden/bias' has shape (4,), expected (3,)"


def test_missing_and_unexpected_names_are_refused(state) -> None:
    arrays = delta()
    arrays["extra/kernel"] = arrays.pop("hidden/bias")

    reason = refusal(update(arrays), state)

    assert "missing ['hidden/bias']" in reason and "unexpected ['extra/kernel']" in reason


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, object])
def test_non_float_dtypes_are_refused(state, dtype) -> None:
    arrays = delta()
    arrays["hidden/bias"] = np.zeros(3, dtype=dtype)

    assert "expected a floating-point dtype" in refusal(update(arrays), state)


def test_ragged_lists_are_refused(state) -> None:
    arrays = delta()
    arrays["hidden/kernel"] = [[0.0, 1.0, 2.0], [1.0]]

    assert "hidden/kernel" in refusal(update(arrays), state)


def test_float64_and_float16_deltas_are_accepted_as_float64(state) -> None:
    for dtype in (np.float64, np.float16):
        prepared = prepare_update(update(delta(0.5, dtype)), state, AggregationConfig())
        assert all(array.dtype == np.float64 for array in prepared.delta.values())
        assert np.all(prepared.delta["hidden/bias"] == 0.5)


def test_values_beyond_float32_are_refused(state) -> None:
    arrays = delta(dtype=np.float64)
    arrays["hidden/bias"][0] = 1e300

    assert "float32 range" in refusal(update(arrays), state, AggregationConfig(max_update_norm=None))


def test_an_absurd_norm_is_refused_unless_the_bound_is_disabled(state) -> None:
    huge = update(delta(1e3))  # norm = 1e3 * sqrt(15)

    assert "above max_update_norm 1000" in refusal(huge, state)
    assert prepare_update(huge, state, AggregationConfig(max_update_norm=None)).norm == pytest.approx(
        1e3 * np.sqrt(15), rel=1e-6
    )


@pytest.mark.parametrize("n_samples", [0, -3, 2.5, True, "7"])
def test_bad_sample_counts_are_refused(state, n_samples) -> None:
    assert "n_samples must be a positive integer" in refusal(update(n_samples=n_samples), state)


def test_a_base_version_from_the_future_is_refused(state) -> None:
    assert "from the future" in refusal(update(base_version=3), state)
    assert "base_version must be an integer >= 0" in refusal(update(base_version=-1), state)


def test_a_stale_base_version_past_the_bound_is_refused(state) -> None:
    reason = refusal(update(base_version=0), state, AggregationConfig(max_staleness=1))

    assert "too stale" in reason and "2 versions behind" in reason


def test_non_finite_metrics_and_unknown_kinds_and_empty_ids_are_refused(state) -> None:
    assert "metric 'loss' must be a finite number" in refusal(update(metrics={"loss": float("nan")}), state)
    assert "kind must be 'delta' or 'weights'" in refusal(update(kind="gradient"), state)
    assert "device_id must be a non-empty string" in refusal(update(device_id=""), state)


def test_full_weights_are_turned_into_a_delta_against_the_base(state) -> None:
    trained = {name: array + np.float32(0.25) for name, array in state.weights.items()}

    prepared = prepare_update(update(trained, kind="weights"), state, AggregationConfig())

    for name in SHAPES:
        np.testing.assert_allclose(prepared.delta[name], 0.25, rtol=1e-6)
    assert prepared.norm == pytest.approx(0.25 * np.sqrt(15), rel=1e-6)
