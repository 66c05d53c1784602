"""The device side: adopting a new global model while keeping local specialisation, and deltas."""

from __future__ import annotations

import numpy as np
import pytest

from flead.federated import (
    AggregationConfig,
    ClientConfig,
    GlobalState,
    LocalUpdate,
    UpdateBuffer,
    personalise,
    weight_delta,
)

SHAPES = {"hidden/kernel": (4, 3), "hidden/bias": (3,)}


def random_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def test_mix_zero_adopts_the_new_global_and_mix_one_keeps_the_whole_local_offset() -> None:
    old_global, new_global = random_arrays(1), random_arrays(2)
    local = {name: old_global[name] + np.float32(0.5) for name in SHAPES}

    adopted = personalise(local, new_global, old_global, mix=0.0)
    kept = personalise(local, new_global, old_global, mix=1.0)
    half = personalise(local, new_global, old_global, mix=0.5)

    for name in SHAPES:
        assert np.array_equal(adopted[name], new_global[name])
        np.testing.assert_allclose(kept[name], new_global[name] + 0.5, atol=1e-6)
        np.testing.assert_allclose(half[name], new_global[name] + 0.25, atol=1e-6)


def test_personalised_weights_are_fresh_writable_float32_arrays() -> None:
    state = GlobalState.initial(random_arrays(1))  # read-only arrays
    adopted = personalise(random_arrays(3), state.weights, random_arrays(4), mix=0.0)

    for name in SHAPES:
        assert adopted[name].dtype == np.float32 and adopted[name].flags.writeable
        adopted[name] += 1.0  # a model training in place must not touch the global state
    assert np.array_equal(state.weights["hidden/bias"], random_arrays(1)["hidden/bias"])


def test_personalise_rejects_a_bad_mix_or_mismatched_names() -> None:
    weights = random_arrays(1)
    with pytest.raises(ValueError, match="mix"):
        personalise(weights, weights, weights, mix=1.5)
    with pytest.raises(ValueError, match="names"):
        personalise({"other": np.zeros(1, np.float32)}, weights, weights, mix=0.5)


def test_incremental_deltas_add_up_to_what_the_device_learned() -> None:
    start = random_arrays(1)
    after_first = {name: start[name] + np.float32(0.25) for name in SHAPES}
    after_second = {name: after_first[name] - np.float32(0.125) for name in SHAPES}

    first, second = weight_delta(after_first, start), weight_delta(after_second, after_first)

    for name in SHAPES:
        assert first[name].dtype == np.float32
        np.testing.assert_allclose(first[name] + second[name], after_second[name] - start[name], atol=1e-6)


def test_a_device_delta_reaches_the_global_model_through_the_buffer() -> None:
    buffer = UpdateBuffer(GlobalState.initial(random_arrays(1)), AggregationConfig())
    start = personalise(buffer.state.weights, buffer.state.weights, buffer.state.weights, mix=0.5)
    trained = {name: start[name] + np.float32(0.1) for name in SHAPES}

    submitted = buffer.submit(
        LocalUpdate("mote-01", "mote-01:1", base_version=0, n_samples=32, arrays=weight_delta(trained, start))
    )
    new = buffer.aggregate().new_state

    assert submitted.accepted
    for name in SHAPES:
        np.testing.assert_allclose(new.weights[name], trained[name], atol=1e-6)


@pytest.mark.parametrize(
    "options", [{"proximal_mu": -0.1}, {"proximal_mu": float("inf")}, {"personal_mix": 1.1}]
)
def test_invalid_client_config_is_rejected(options) -> None:
    with pytest.raises(ValueError):
        ClientConfig(**options)


def test_client_config_defaults_to_plain_local_training_with_half_the_offset_kept() -> None:
    assert ClientConfig() == ClientConfig(proximal_mu=0.0, personal_mix=0.5)
