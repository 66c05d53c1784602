"""The subspace check: a PCA member that flags cross-feature breaks, kept only where it generalises."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from flead.model import ModelConfig, OnlineDetector, TrainConfig
from flead.model.serialization import pack, unpack
from flead.model.subspace import SubspaceCheck

FEATURES = ("a", "b", "c")


def correlated(n: int, seed: int = 0) -> np.ndarray:
    """Three features that move together (one smooth latent factor), plus a little noise."""
    rng = np.random.default_rng(seed)
    latent = np.sin(np.arange(n) / 15.0) + 0.3 * rng.normal(size=n)
    return np.outer(latent, [1.0, -0.8, 0.5]) + 0.05 * rng.normal(size=(n, 3))


def frame(values: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({f: values[:, i] for i, f in enumerate(FEATURES)})


def detector(subspace: bool) -> OnlineDetector:
    config = ModelConfig(features=FEATURES, time_features=False, window=8, hidden=(16, 4))
    return OnlineDetector(config, train=TrainConfig(subspace_check=subspace, stuck_check=False))


def broken(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A test stream whose readings 300..399 break the correlation, each feature within its range."""
    values = correlated(n, seed)
    values[300:400, 1] = -values[300:400, 1]  # b now moves with a instead of against it
    labels = np.zeros(n, bool)
    labels[300:400] = True
    return values, labels


def test_a_break_of_the_features_correlation_is_flagged_with_the_check_and_mostly_missed_without() -> None:
    train, (test, labels) = correlated(600, seed=1), broken(700, seed=2)
    recall = {}
    for subspace in (True, False):
        d = detector(subspace)
        d.learn_many(frame(train))
        d.calibrate(frame(train))
        flags = d.process_many(frame(test), learn=False)["is_anomaly"].to_numpy()
        recall[subspace] = flags[labels].mean()
        if subspace:
            assert d.subspace is not None and d.subspace.active
            assert flags[~labels].mean() < 0.05  # normal readings stay quiet
    assert recall[True] > 0.8 and recall[True] > recall[False] + 0.3, recall


def test_a_device_whose_normal_drifts_keeps_the_check_off() -> None:
    normal = correlated(1000) + np.linspace(0.0, 6.0, 1000)[:, None]  # a slow trend through its life
    check = SubspaceCheck(3)
    check.fit_split(normal, 1e-3)
    assert check.decided and not check.active
    stationary = SubspaceCheck(3)
    stationary.fit_split(correlated(1000), 1e-3)
    assert stationary.active


def test_one_feature_has_no_subspace() -> None:
    check = SubspaceCheck(1)
    check.fit_split(np.random.default_rng(0).normal(size=(1000, 1)), 1e-3)
    assert not check.active and not check.severity(np.zeros((5, 1))).any()


def test_online_the_warm_up_fits_the_calibration_window_judges_and_a_restart_equals_no_restart() -> None:
    values, _ = broken(2600, seed=3)
    values[300:400] = correlated(100, seed=4)  # normal during warm-up and calibration
    values[2300:2400, 1] = -values[2300:2400, 1]
    train = TrainConfig(warmup=500, calibration=500, stuck_check=False)
    config = ModelConfig(features=FEATURES, time_features=False, window=8, hidden=(16, 4))
    uninterrupted = OnlineDetector(config, train=train)
    whole = uninterrupted.process_many(frame(values))
    assert uninterrupted.subspace.active
    assert whole["is_anomaly"].to_numpy()[2300:2400].mean() > 0.8

    first = OnlineDetector(config, train=train)
    head = first.process_many(frame(values[:768]))  # mid-calibration: held-out scores in the state
    assert first.subspace.held_out.size and not first.subspace.decided
    resumed = OnlineDetector.from_bytes(first.to_bytes())
    tail = resumed.process_many(frame(values[768:]))
    assert pl.concat([head, tail]).equals(whole)


def test_a_checkpoint_from_before_the_check_loads_with_the_check_off() -> None:
    d = detector(True)
    d.process_many(frame(correlated(300)))
    header, arrays = unpack(d.to_bytes(), "flead-detector", (1,))
    del header["subspace"]
    old = OnlineDetector.from_bytes(pack(json.loads(json.dumps(header)), arrays))
    assert old.subspace is not None and old.subspace.decided and not old.subspace.active


def test_accepting_a_new_normal_drops_the_fit_of_the_old_one() -> None:
    d = detector(True)
    d.learn_many(frame(correlated(600)))
    d.calibrate(frame(correlated(600)))
    assert d.subspace.active
    d.accept_new_normal()
    assert not d.subspace.active and d.subspace.decided


def test_a_reference_gone_stale_is_dropped_by_the_audit_against_the_network() -> None:
    check = SubspaceCheck(3)
    check.fit_split(correlated(1000), 1e-3)
    assert check.active
    quiet = np.ones(500, bool)
    check.audit(np.zeros(500, bool), quiet)
    check.audit(np.r_[np.ones(20, bool), np.zeros(480, bool)], quiet)  # 2 % disagreement: kept
    assert check.active and not check.stale
    for _ in range(2):  # the device's normal moved: the check flags what the network finds normal
        check.audit(np.r_[np.ones(150, bool), np.zeros(350, bool)], quiet)
    assert check.stale and not check.active and check.decided
    assert not check.severity(np.zeros((3, 3))).any()
    restored = SubspaceCheck.from_state_dict(json.loads(json.dumps(check.state_dict())), 3)
    assert restored.stale and not restored.active


def test_a_calibration_window_too_short_to_judge_a_fit_decides_the_check_off() -> None:
    check = SubspaceCheck(3)
    check.learn(correlated(500))
    check.observe(correlated(20, seed=5))  # fewer held-out readings than a decision needs
    check.fit(1e-3)
    assert check.decided and not check.active
    check.observe(correlated(500, seed=6))  # nothing more is collected once decided
    assert check.held_out.size == 0
