"""Differential privacy of device updates: the accountant against dp-accounting and the analytic Gaussian
mechanism, the noise's scale, clipping, budgets on the device and the server, central DP under poisoning."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from scipy import optimize, stats

from flead.federated import (
    AggregationConfig,
    ClientConfig,
    GlobalState,
    LocalUpdate,
    UpdateBuffer,
    global_norm,
    make_strategy,
)
from flead.federated.device import DeviceClient
from flead.model.config import ModelConfig
from flead.model.detector import OnlineDetector
from flead.privacy import (
    PrivacyConfig,
    PrivacyDeclaration,
    PrivacyLedger,
    contributions_epsilon,
    noise_for_epsilon,
    privatise,
    rdp_epsilon,
)

SHAPES = {"w": (40, 25), "b": (25,)}
DELTA = 1e-5


def arrays(rng: np.random.Generator, norm: float) -> dict[str, np.ndarray]:
    raw = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    scale = norm / global_norm(raw)
    return {name: (a * scale).astype(np.float32) for name, a in raw.items()}


def flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[name], np.float64).ravel() for name in sorted(weights)])


# ------------------------------------------------------------------------------------------ accountant


@pytest.mark.parametrize(
    ("multiplier", "count", "expected"),
    # dp-accounting 0.6.0's RDP epsilon at delta 1e-5 of `count` Gaussian releases at `multiplier / 2`
    # (replace-one: a clipped update moves by up to twice the clip norm), computed once and pinned.
    [(1.0, 1, 10.7255), (4.0, 20, 12.3017), (5.7037, 20, 8.0000), (36.1839, 20, 1.0000)],
)
def test_the_accountant_gives_dp_accountings_reference_values(multiplier, count, expected):
    accountant = RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier / 2), count)
    )
    assert rdp_epsilon(multiplier, count, DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert rdp_epsilon(multiplier, count, DELTA) == pytest.approx(expected, abs=5e-4)


def analytic_gaussian_epsilon(sigma_over_sensitivity: float, delta: float) -> float:
    """The exact epsilon of one Gaussian mechanism (Balle & Wang 2018, Theorem 8), solved for epsilon."""
    s = sigma_over_sensitivity

    def excess(eps: float) -> float:
        return (
            stats.norm.cdf(1 / (2 * s) - eps * s)
            - math.exp(eps) * stats.norm.cdf(-1 / (2 * s) - eps * s)
            - delta
        )

    return optimize.brentq(excess, 1e-9, 200.0)


@pytest.mark.parametrize("multiplier", [1.0, 3.0, 8.0])
def test_one_release_is_bounded_by_the_exact_gaussian_mechanism_and_agrees_with_pld(multiplier):
    ours = rdp_epsilon(multiplier, 1, DELTA)
    exact = analytic_gaussian_epsilon(multiplier / 2, DELTA)  # sensitivity 2 C, noise z C
    pld = PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    pld.compose(dp_accounting.GaussianDpEvent(multiplier))
    assert pld.get_epsilon(DELTA) == pytest.approx(exact, rel=0.02)  # PLD is tight, for the same relation
    assert exact <= ours <= 1.6 * exact  # RDP: an upper bound, not a loose one


def test_contributions_compose_and_calibration_hits_its_target():
    mixed = contributions_epsilon({2.0: 3, 4.0: 5}, DELTA)
    accountant = RdpAccountant()
    accountant.compose(
        dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 3),
                dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 5),
            ]
        )
    )
    assert mixed == pytest.approx(accountant.get_epsilon(DELTA))
    assert contributions_epsilon({}, DELTA) == 0.0
    for target in (1.0, 3.0, 8.0):
        z = noise_for_epsilon(target, 12, DELTA)
        assert rdp_epsilon(z, 12, DELTA) <= target < rdp_epsilon(z * 0.99, 12, DELTA)


# ------------------------------------------------------------------------------------------ mechanism


def test_the_noise_has_the_configured_standard_deviation():
    rng = np.random.default_rng(20261207)
    update = {"w": np.full((100, 100), 1e-4, np.float32)}  # norm 0.01, under the clip bound
    clip_norm, multiplier = 2.0, 1.5
    noise = flat(privatise(update, clip_norm, multiplier, rng)) - flat(update)
    assert stats.kstest(noise / (multiplier * clip_norm), "norm").pvalue > 0.01
    # The same test tells a 10 % different scale apart: it has the power to fail.
    assert stats.kstest(noise / (1.1 * multiplier * clip_norm), "norm").pvalue < 1e-3
    assert noise.std() == pytest.approx(multiplier * clip_norm, rel=0.03)


def test_an_update_over_the_clip_bound_is_clipped_not_refused(rng=np.random.default_rng(3)):
    state = GlobalState.initial({name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()})
    # Central DP: accepted, clipped to the bound, counted.
    config = AggregationConfig(privacy=PrivacyConfig(mode="central", clip_norm=1.0, noise_multiplier=1e-3))
    buffer = UpdateBuffer(state, config, rng=np.random.default_rng(0))
    assert buffer.submit(LocalUpdate("mote-1", "u1", 0, 10, arrays(rng, norm=50.0))).accepted
    result = buffer.aggregate()
    assert result.created and result.accepted[0].clipped and result.accepted[0].norm == pytest.approx(50.0)
    assert global_norm(result.new_state.weights) == pytest.approx(1.0, abs=0.05)
    # Local DP: the device clips before it noises; what it sends is the clipped update plus noise.
    device_rng, check_rng = np.random.default_rng(5), np.random.default_rng(5)
    big = arrays(rng, norm=30.0)
    sent = flat(privatise(big, 1.0, 1e-6, device_rng))
    assert np.linalg.norm(sent) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(sent, flat(privatise(big, 1.0, 1e-6, check_rng)))


# ------------------------------------------------------------------------------------------ server


def test_a_local_dp_deployment_refuses_undeclared_or_weaker_updates_and_charges_the_rest():
    rng = np.random.default_rng(1)
    state = GlobalState.initial({name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()})
    privacy = PrivacyConfig(mode="local", clip_norm=1.0, noise_multiplier=2.0, epsilon_budget=30.0)
    buffer = UpdateBuffer(state, AggregationConfig(privacy=privacy))
    plain = buffer.submit(LocalUpdate("mote-1", "u1", 0, 10, arrays(rng, 0.5)))
    assert not plain.accepted and "declares no privacy" in plain.reason
    weaker = PrivacyDeclaration(clip_norm=1.0, noise_multiplier=1.0).to_dict()
    refused = buffer.submit(LocalUpdate("mote-1", "u2", 0, 10, arrays(rng, 0.5), privacy=weaker))
    assert not refused.accepted and "noise_multiplier 1, under this deployment's 2" in refused.reason
    declared = PrivacyDeclaration(clip_norm=1.0, noise_multiplier=2.0).to_dict()
    sent = 0
    while True:
        noised = privatise(arrays(rng, 0.5), 1.0, 2.0, rng)
        outcome = buffer.submit(LocalUpdate("mote-1", f"v{sent}", 0, 10, noised, privacy=declared))
        if not outcome.accepted:
            break
        sent += 1
    assert outcome.reason.startswith("privacy budget exhausted")
    assert rdp_epsilon(2.0, sent, DELTA) <= 30.0 < rdp_epsilon(2.0, sent + 1, DELTA)
    assert buffer.ledger.epsilon("mote-1") == pytest.approx(rdp_epsilon(2.0, sent, DELTA))
    result = buffer.aggregate()
    assert buffer.epsilons[result.new_state.version] == pytest.approx(rdp_epsilon(2.0, sent, DELTA))


def test_central_dp_charges_each_version_and_refuses_a_device_over_its_budget():
    rng = np.random.default_rng(2)
    state = GlobalState.initial({name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()})
    budget = rdp_epsilon(3.0, 2, DELTA)  # two versions' worth of one update each
    privacy = PrivacyConfig(mode="central", clip_norm=1.0, noise_multiplier=3.0, epsilon_budget=budget)
    buffer = UpdateBuffer(state, AggregationConfig(privacy=privacy))
    results = []
    for version in range(3):
        # mote-1 sends two updates into the same noised sum: one release at z / 2, over budget at once.
        for uid in ("a", "b"):
            buffer.submit(LocalUpdate("mote-1", f"{version}{uid}", buffer.version, 10, arrays(rng, 0.5)))
        buffer.submit(LocalUpdate("mote-2", f"{version}", buffer.version, 10, arrays(rng, 0.5)))
        results.append(buffer.aggregate())
    assert [r.created for r in results] == [True, True, False]
    assert [r.contributions for r in results[:2]] == [{"mote-2": {3.0: 1}}] * 2
    assert buffer.ledger.epsilon("mote-2") == pytest.approx(budget)
    assert buffer.epsilons[2] == pytest.approx(budget)
    assert buffer.ledger.epsilon("mote-1") == 0.0
    assert {r.device_id for r in results[2].refused} == {"mote-1", "mote-2"}
    assert all(r.reason.startswith("privacy budget exhausted") for r in results[2].refused)


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean"])
def test_robust_aggregation_still_resists_poisoned_updates_under_central_dp(strategy):
    rng = np.random.default_rng(11)
    state = GlobalState.initial({name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()})
    honest = [arrays(rng, norm=0.5) for _ in range(9)]
    # Poison within the clip bound, all of it on one weight: clipping alone does not stop it.
    poisoned = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    poisoned["b"][0] = -50.0
    updates = [LocalUpdate(f"mote-{i}", "u", 0, 10, a) for i, a in enumerate(honest)]
    updates += [LocalUpdate(f"evil-{i}", "u", 0, 10, poisoned) for i in range(2)]
    privacy = PrivacyConfig(mode="central", clip_norm=1.0, noise_multiplier=0.01)

    def attacked_weight(name: str) -> float:
        config = AggregationConfig(strategy=name, trim_fraction=0.2, privacy=privacy)
        result = make_strategy(config, rng=np.random.default_rng(0)).aggregate(state, updates)
        return float(result.new_state.weights["b"][0])

    honest_value = float(np.median([a["b"][0] for a in honest]))
    # The robust statistic drops the poison; the mean of the same clipped, noised updates takes 2/11 of it.
    assert abs(attacked_weight(strategy) - honest_value) < 0.05
    assert attacked_weight("fedavg") < honest_value - 0.1


# ------------------------------------------------------------------------------------------ device


def test_a_device_stops_sending_at_its_budget_and_keeps_detecting():
    config = ModelConfig(features=("x",), window=4, hidden=(8, 2), time_features=False)
    detector = OnlineDetector(config, seed=0)
    privacy = PrivacyConfig(mode="local", clip_norm=0.5, noise_multiplier=4.0, epsilon_budget=20.0)
    client = DeviceClient("mote-1", detector, push_every=16, privacy=privacy, rng=np.random.default_rng(0))
    client.adopt(GlobalState.initial(detector.get_weights()))
    rng = np.random.default_rng(0)
    sent = []
    for _ in range(60):
        out = client.process(rng.normal(size=(32, 1)))
        assert out.height == 32  # it scores every reading, budget or not
        update = client.take_update()
        if update is not None:
            assert update.privacy == {"mechanism": "gaussian", "clip_norm": 0.5, "noise_multiplier": 4.0}
            sent.append(update)
    allowed = max(k for k in range(1, 200) if rdp_epsilon(4.0, k, DELTA) <= 20.0)
    assert len(sent) == allowed and client.budget_exhausted
    assert client.epsilon == pytest.approx(rdp_epsilon(4.0, allowed, DELTA))
    ledger = PrivacyLedger(DELTA)
    ledger.charge("mote-1", {4.0: len(sent)})
    assert ledger.epsilon("mote-1") == pytest.approx(client.epsilon)


def test_under_dp_a_device_keeps_its_own_weights_when_a_new_global_fits_its_readings_worse():
    config = ModelConfig(features=("x",), window=4, hidden=(8, 2), time_features=False)
    detector = OnlineDetector(config, seed=0)
    privacy = PrivacyConfig(mode="central", clip_norm=0.5, noise_multiplier=4.0)
    client = DeviceClient(
        "mote-1", detector, ClientConfig(personal_mix=1.0), push_every=10**6, privacy=privacy
    )
    initial = GlobalState.initial(detector.get_weights())
    client.adopt(initial)
    rng = np.random.default_rng(0)
    for _ in range(20):
        client.process(np.sin(np.arange(64) / 5.0 + rng.uniform(0, 6)).reshape(-1, 1))
    own = detector.get_weights()
    noised = {n: a + rng.normal(0, 3.0, a.shape).astype(np.float32) for n, a in initial.weights.items()}
    client.adopt(GlobalState(version=1, weights=noised))
    assert client.rejected_versions == 1 and client.base_version == 1
    assert all(np.array_equal(detector.get_weights()[n], own[n]) for n in own)
    # The same global again moves nothing (mix 1 keeps the device's own learning): adopted.
    client.adopt(GlobalState(version=2, weights=noised))
    assert client.rejected_versions == 1 and client.base_version == 2
