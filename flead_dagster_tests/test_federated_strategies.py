"""Aggregation strategies: exact FedAvg, server optimisers, robustness, clipping, staleness, versions."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from flead.federated import (
    AggregationConfig,
    GlobalState,
    LocalUpdate,
    global_norm,
    make_strategy,
    staleness_discount,
)

SHAPES = {"hidden/kernel": (4, 3), "hidden/bias": (3,), "out/kernel": (3, 2)}
NOW = datetime(2004, 3, 1, tzinfo=UTC)


def random_arrays(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {name: (scale * rng.standard_normal(shape)).astype(np.float32) for name, shape in SHAPES.items()}


def filled(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=np.float32) for name, shape in SHAPES.items()}


def update(
    arrays: dict[str, np.ndarray],
    *,
    device: str = "mote-01",
    uid: str = "u1",
    base: int = 0,
    n: int = 10,
    **kw,
) -> LocalUpdate:
    return LocalUpdate(device_id=device, update_id=uid, base_version=base, n_samples=n, arrays=arrays, **kw)


def with_norm(arrays: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    scale = norm / global_norm(arrays)
    return {name: (array * scale).astype(np.float32) for name, array in arrays.items()}


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return global_norm({name: a[name].astype(np.float64) - b[name].astype(np.float64) for name in a})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def state(rng: np.random.Generator) -> GlobalState:
    return GlobalState.initial(random_arrays(rng), now=NOW)


def test_fedavg_equals_the_sample_weighted_mean_exactly(rng, state) -> None:
    client_weights = [random_arrays(rng) for _ in range(5)]
    samples = [3, 250, 17, 1, 999]
    updates = [
        update(w, device=f"mote-{i}", n=n, kind="weights")
        for i, (w, n) in enumerate(zip(client_weights, samples, strict=True))
    ]

    result = make_strategy(AggregationConfig(strategy="fedavg")).aggregate(state, updates, now=NOW)

    assert result.created
    for name in SHAPES:
        expected = (
            sum(n * w[name].astype(np.float64) for n, w in zip(samples, client_weights, strict=True))
            / sum(samples)
        ).astype(np.float32)
        assert result.new_state.weights[name].dtype == np.float32
        assert np.array_equal(result.new_state.weights[name], expected)
    assert [entry.weight for entry in result.accepted] == [n / sum(samples) for n in samples]


def test_fedavg_of_deltas_applies_the_weighted_mean_delta(rng, state) -> None:
    deltas = [random_arrays(rng, 0.1) for _ in range(3)]
    samples = [5, 10, 85]
    updates = [
        update(d, device=f"mote-{i}", n=n) for i, (d, n) in enumerate(zip(deltas, samples, strict=True))
    ]

    result = make_strategy().aggregate(state, updates)

    for name in SHAPES:
        base = state.weights[name].astype(np.float64)
        expected = (
            sum(n * (base + d[name].astype(np.float64)) for n, d in zip(samples, deltas, strict=True)) / 100
        )
        assert np.array_equal(result.new_state.weights[name], expected.astype(np.float32))


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean"])
def test_robust_strategies_resist_one_poisoned_update_where_fedavg_does_not(rng, state, strategy) -> None:
    honest = [{n: a + np.float32(0.1) for n, a in random_arrays(rng, 0.01).items()} for _ in range(4)]
    poison = with_norm(random_arrays(rng), 1e6)
    assert global_norm(poison) == pytest.approx(1e6, rel=1e-5)
    # The poisoner also claims a huge sample count, which the robust strategies must not believe.
    updates = [update(d, device=f"honest-{i}", n=100) for i, d in enumerate(honest)]
    updates.append(update(poison, device="attacker", n=10**9))
    honest_mean = {
        name: state.weights[name] + np.mean([d[name] for d in honest], axis=0, dtype=np.float64)
        for name in SHAPES
    }
    options = {"max_update_norm": None, "trim_fraction": 0.2}

    robust = make_strategy(AggregationConfig(strategy=strategy, **options)).aggregate(state, updates)
    plain = make_strategy(AggregationConfig(strategy="fedavg", **options)).aggregate(state, updates)

    assert robust.created and plain.created
    honest_spread = max(distance(honest_mean, {n: state.weights[n] + d[n] for n in SHAPES}) for d in honest)
    assert distance(robust.new_state.weights, honest_mean) <= honest_spread
    assert distance(plain.new_state.weights, honest_mean) > 1e5


def test_trimmed_mean_drops_the_extremes_of_each_coordinate(state) -> None:
    values = [-50.0, 1.0, 2.0, 3.0, 80.0]
    updates = [update(filled(v), device=f"mote-{i}") for i, v in enumerate(values)]
    config = AggregationConfig(strategy="trimmed_mean", trim_fraction=0.2, max_update_norm=None)

    result = make_strategy(config).aggregate(state, updates)

    for name in SHAPES:
        np.testing.assert_allclose(
            result.new_state.weights[name], state.weights[name] + 2.0, rtol=0, atol=1e-6
        )


def test_fedavgm_moves_along_the_mean_delta_and_keeps_its_momentum(rng, state) -> None:
    deltas = [random_arrays(rng, 0.1) for _ in range(3)]
    config = AggregationConfig(strategy="fedavgm", momentum=0.9, server_lr=0.5)
    strategy = make_strategy(config)
    mean_delta = {name: np.mean([d[name] for d in deltas], axis=0, dtype=np.float64) for name in SHAPES}

    first = strategy.aggregate(state, [update(d, device=f"mote-{i}") for i, d in enumerate(deltas)])
    zero = [update(filled(0.0), device="mote-0", uid="u2", base=1)]
    second = strategy.aggregate(first.new_state, zero)

    for name in SHAPES:
        moved = first.new_state.weights[name].astype(np.float64) - state.weights[name]
        assert np.array_equal(np.sign(moved), np.sign(mean_delta[name]))
        np.testing.assert_allclose(moved, 0.5 * mean_delta[name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            first.new_state.server_state["momentum"][name], mean_delta[name], rtol=1e-6
        )
        # A zero update still moves the model: the momentum carried over from the previous version.
        coasted = second.new_state.weights[name].astype(np.float64) - first.new_state.weights[name]
        np.testing.assert_allclose(coasted, 0.5 * 0.9 * mean_delta[name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            second.new_state.server_state["momentum"][name], 0.9 * mean_delta[name], rtol=1e-6
        )


def test_fedadam_follows_reddi_et_al_and_keeps_its_moments(rng, state) -> None:
    deltas = [random_arrays(rng, 0.1) for _ in range(2)]
    samples = [30, 10]
    config = AggregationConfig(strategy="fedadam", server_lr=0.01, betas=(0.9, 0.99), tau=1e-3)
    strategy = make_strategy(config)
    updates = [
        update(d, device=f"mote-{i}", n=n) for i, (d, n) in enumerate(zip(deltas, samples, strict=True))
    ]

    first = strategy.aggregate(state, updates)
    second = strategy.aggregate(first.new_state, [update(filled(0.0), uid="u2", base=1)])

    for name in SHAPES:
        mean = (30 * deltas[0][name].astype(np.float64) + 10 * deltas[1][name]) / 40
        m1, v1 = 0.1 * mean, 0.99 * 1e-6 + 0.01 * mean**2
        step1 = first.new_state.weights[name].astype(np.float64) - state.weights[name]
        assert np.array_equal(np.sign(step1), np.sign(mean))
        np.testing.assert_allclose(step1, 0.01 * m1 / (np.sqrt(v1) + 1e-3), rtol=1e-3, atol=1e-7)
        m2, v2 = 0.9 * m1, 0.99 * v1
        np.testing.assert_allclose(second.new_state.server_state["adam_m"][name], m2, rtol=1e-5)
        np.testing.assert_allclose(second.new_state.server_state["adam_v"][name], v2, rtol=1e-5)
        step2 = second.new_state.weights[name].astype(np.float64) - first.new_state.weights[name]
        assert np.array_equal(np.sign(step2), np.sign(mean))


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "median", "trimmed_mean"])
def test_clipping_bounds_each_update_norm_in_any_strategy(rng, state, strategy) -> None:
    big = with_norm(random_arrays(rng), 50.0)
    config = AggregationConfig(strategy=strategy, clip_norm=1.0, server_lr=1.0)

    result = make_strategy(config).aggregate(state, [update(big)])

    assert result.accepted[0].clipped
    assert result.accepted[0].norm == pytest.approx(50.0, rel=1e-5)
    assert distance(result.new_state.weights, state.weights) == pytest.approx(1.0, rel=1e-4)
    assert result.summary.n_clipped == 1


def test_clipping_scales_only_the_updates_above_the_bound(rng, state) -> None:
    small, large = with_norm(random_arrays(rng), 0.5), with_norm(random_arrays(rng), 8.0)
    config = AggregationConfig(clip_norm=2.0)

    result = make_strategy(config).aggregate(
        state, [update(small, uid="a", n=1), update(large, uid="b", n=3)]
    )

    assert [entry.clipped for entry in result.accepted] == [False, True]
    for name in SHAPES:
        scale = 2.0 / global_norm(large)
        expected = state.weights[name] + (small[name].astype(np.float64) + 3 * scale * large[name]) / 4
        np.testing.assert_allclose(result.new_state.weights[name], expected, rtol=1e-5, atol=1e-6)


def test_stale_updates_are_discounted(rng) -> None:
    state = GlobalState(version=3, weights=random_arrays(rng))
    fresh, stale = random_arrays(rng, 0.1), random_arrays(rng, 0.1)
    config = AggregationConfig(staleness_exponent=0.5, max_staleness=5)

    result = make_strategy(config).aggregate(
        state, [update(fresh, uid="a", base=3, n=10), update(stale, uid="b", base=1, n=30)]
    )

    discount = staleness_discount(2, 0.5)
    assert discount == pytest.approx(1 / np.sqrt(3))
    assert [(e.staleness, e.discount) for e in result.accepted] == [(0, 1.0), (2, discount)]
    assert result.summary.mean_staleness == 1.0
    for name in SHAPES:
        expected = (
            state.weights[name] + (10 * fresh[name].astype(np.float64) + 30 * discount * stale[name]) / 40
        )
        np.testing.assert_allclose(result.new_state.weights[name], expected, rtol=1e-6, atol=1e-7)


def test_updates_past_max_staleness_or_from_the_future_are_refused(rng) -> None:
    state = GlobalState(version=5, weights=random_arrays(rng))
    config = AggregationConfig(max_staleness=2)
    updates = [
        update(random_arrays(rng, 0.1), uid="ok", base=3),
        update(random_arrays(rng, 0.1), uid="old", base=2),
        update(random_arrays(rng, 0.1), uid="future", base=6),
    ]

    result = make_strategy(config).aggregate(state, updates)

    assert [e.update_id for e in result.accepted] == ["ok"]
    reasons = {r.update_id: r.reason for r in result.refused}
    assert "too stale" in reasons["old"] and "max_staleness 2" in reasons["old"]
    assert "future" in reasons["future"]


def test_exponent_zero_means_no_staleness_discount(rng) -> None:
    state = GlobalState(version=4, weights=random_arrays(rng))
    delta = random_arrays(rng, 0.1)

    result = make_strategy(AggregationConfig(staleness_exponent=0.0)).aggregate(
        state, [update(delta, base=0)]
    )

    assert result.accepted[0].discount == 1.0
    for name in SHAPES:
        np.testing.assert_allclose(
            result.new_state.weights[name], state.weights[name] + delta[name], rtol=1e-6
        )


def test_full_weights_on_an_older_version_become_a_delta_against_that_version(rng, state) -> None:
    newer = GlobalState(version=1, weights=random_arrays(rng), parent_version=0)
    trained = random_arrays(rng)
    strategy = make_strategy(AggregationConfig(staleness_exponent=0.0))

    result = strategy.aggregate(newer, [update(trained, kind="weights", base=0)], history={0: state.weights})
    refused = strategy.aggregate(newer, [update(trained, kind="weights", base=0)])

    for name in SHAPES:
        expected = newer.weights[name] + (trained[name].astype(np.float64) - state.weights[name])
        np.testing.assert_allclose(result.new_state.weights[name], expected, rtol=1e-6, atol=1e-6)
    assert not refused.created
    assert "send a delta" in refused.refused[0].reason


def test_a_duplicate_in_one_batch_counts_once(rng, state) -> None:
    delta = random_arrays(rng, 0.1)
    other = random_arrays(rng, 0.1)
    strategy = make_strategy()

    once = strategy.aggregate(state, [update(delta, uid="a"), update(other, device="mote-02", uid="a")])
    twice = strategy.aggregate(
        state, [update(delta, uid="a"), update(delta, uid="a"), update(other, device="mote-02", uid="a")]
    )

    assert len(twice.accepted) == 2
    assert "duplicate" in twice.refused[0].reason
    for name in SHAPES:
        assert np.array_equal(once.new_state.weights[name], twice.new_state.weights[name])


def test_no_accepted_update_makes_no_version(rng, state) -> None:
    bad = random_arrays(rng)
    bad["hidden/bias"][0] = np.nan

    empty = make_strategy().aggregate(state, [])
    all_refused = make_strategy().aggregate(state, [update(bad)])

    for result in (empty, all_refused):
        assert not result.created
        assert result.new_state is None
        assert result.previous_version == 0
        assert result.skipped_reason == "no accepted updates"
        assert result.summary.n_updates == 0
    assert all_refused.summary.n_refused == 1


def test_fewer_than_min_updates_makes_no_version(rng, state) -> None:
    updates = [update(random_arrays(rng, 0.1), device=f"mote-{i}") for i in range(2)]

    result = make_strategy(AggregationConfig(min_updates=3)).aggregate(state, updates)

    assert not result.created
    assert "min_updates 3" in result.skipped_reason
    assert len(result.accepted) == 2


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam", "median", "trimmed_mean"])
def test_each_aggregation_adds_exactly_one_version(rng, state, strategy) -> None:
    agg = make_strategy(AggregationConfig(strategy=strategy))
    current = state
    for step in range(4):
        updates = [
            update(random_arrays(rng, 0.1), device=f"mote-{i}", uid=f"{step}", base=current.version)
            for i in range(3)
        ]
        result = agg.aggregate(current, updates, now=NOW)
        assert result.new_state.version == current.version + 1
        assert result.new_state.parent_version == current.version
        assert result.new_state.created_at == NOW
        current = result.new_state
    assert current.version == 4


def test_summary_counts_devices_samples_and_weights_the_loss_by_samples(rng, state) -> None:
    updates = [
        update(random_arrays(rng, 0.1), device="mote-01", uid="a", n=10, metrics={"loss": 1.0}),
        update(random_arrays(rng, 0.1), device="mote-01", uid="b", n=30, metrics={"loss": 3.0}),
        update(random_arrays(rng, 0.1), device="mote-02", uid="a", n=60),
    ]

    summary = make_strategy().aggregate(state, updates).summary

    assert (summary.n_updates, summary.n_devices, summary.total_samples) == (3, 2, 100)
    assert summary.mean_loss == pytest.approx(2.5)
    assert summary.mean_staleness == 0.0


def test_global_state_holds_read_only_float32_copies(rng) -> None:
    weights = {name: array.astype(np.float64) for name, array in random_arrays(rng).items()}
    state = GlobalState.initial(weights)

    weights["hidden/bias"][:] = 123.0
    assert state.weights["hidden/bias"].dtype == np.float32
    assert not np.any(state.weights["hidden/bias"] == 123.0)
    with pytest.raises(ValueError):
        state.weights["hidden/bias"][0] = 1.0
    with pytest.raises(ValueError, match="finite"):
        GlobalState.initial({"w": np.array([np.nan], dtype=np.float32)})


def test_a_strategy_instance_needs_its_own_config() -> None:
    from flead.federated import FedAdam

    assert FedAdam().server_lr == 0.01
    with pytest.raises(ValueError, match="fedadam"):
        FedAdam(AggregationConfig(strategy="fedavg"))


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "fedsgd"},
        {"server_lr": 0.0},
        {"momentum": 1.0},
        {"betas": (0.9, 1.0)},
        {"tau": -1.0},
        {"trim_fraction": 0.5},
        {"clip_norm": 0.0},
        {"max_staleness": -1},
        {"staleness_exponent": -0.5},
        {"max_update_norm": float("nan")},
        {"min_updates": 0},
    ],
)
def test_invalid_config_is_rejected(options) -> None:
    with pytest.raises(ValueError, match=r"strategy|must"):
        AggregationConfig(**options)


def test_server_lr_defaults_per_strategy() -> None:
    assert AggregationConfig(strategy="fedavg").resolved_server_lr == 1.0
    assert AggregationConfig(strategy="fedavgm", momentum=0.9).resolved_server_lr == pytest.approx(0.1)
    assert AggregationConfig(strategy="fedadam").resolved_server_lr == 0.01
    assert AggregationConfig(strategy="median", server_lr=0.3).resolved_server_lr == 0.3
