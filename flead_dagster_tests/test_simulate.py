"""N simulated devices: federated (FedBuff with delays), local-only and centralized training."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.federated.simulate import SimulationConfig, simulate
from flead.model.config import ModelConfig, TrainConfig


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> dict[str, pl.DataFrame]:
    fleet = generate_fleet(
        tmp_path_factory.mktemp("fleet"), n_devices=4, days=2, seed=11, failing_fraction=0.0
    )
    rows = parse_files(fleet.paths, range(1, 5)).rows
    return {
        key[0]: part.select("temperature", "humidity", "light", "voltage", "ts").head(1500)
        for key, part in rows.sort("device_id", "ts").partition_by("device_id", as_dict=True).items()
    }


CONFIG = SimulationConfig(
    model=ModelConfig(window=8, hidden=(16, 4)),
    train=TrainConfig(warmup=200),
    batch_size=100,
    push_every=200,
    aggregate_every=2,
    max_delay_steps=3,
    seed=5,
)


def split(streams, at=1000):
    return {d: f.head(at) for d, f in streams.items()}, {d: f.slice(at) for d, f in streams.items()}


def test_federated_run_makes_consecutive_versions_with_stale_updates(streams):
    train, score = split(streams)
    result = simulate(train, score, "federated", CONFIG)
    versions = [h["version"] for h in result.history]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 5
    assert any(h["mean_staleness"] > 0 for h in result.history)  # delayed updates arrive late
    assert sum(h["samples"] for h in result.history) == sum(f.height for f in train.values())
    # Each version reports its updates' training loss, which falls as the fleet learns.
    losses = [h["mean_loss"] for h in result.history]
    assert all(loss is not None and loss > 0 for loss in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # Every device ends on the last version, personalised: close to each other, not identical.
    weights = [c.get_weights() for c in result.detectors.values()]
    assert all(set(w) == set(weights[0]) for w in weights)
    assert not all(np.array_equal(w["enc.0.W"], weights[0]["enc.0.W"]) for w in weights[1:])
    assert result.outputs.height == sum(f.height for f in score.values())
    assert result.outputs["score"].is_finite().all()
    assert dict(result.outputs.group_by("device_id").len().iter_rows()) == {
        d: f.height for d, f in score.items()
    }


def test_centralized_devices_share_one_network_and_local_ones_do_not(streams):
    train, score = split(streams)
    central = simulate(train, score, "centralized", CONFIG)
    first, *others = (d.get_weights() for d in central.detectors.values())
    assert all(np.array_equal(first[k], o[k]) for o in others for k in first)
    assert central.history == []

    local = simulate(train, score, "local", CONFIG)
    first, *others = (d.get_weights() for d in local.detectors.values())
    assert not any(np.array_equal(first["enc.0.W"], o["enc.0.W"]) for o in others)


def test_online_mode_scores_every_training_reading(streams):
    result = simulate(streams, None, "federated", CONFIG)
    assert result.readings_scored == sum(f.height for f in streams.values())
    assert result.outputs.filter(pl.col("position") < 200)["is_anomaly"].sum() == 0  # warm-up


def test_simulation_is_deterministic_for_a_seed(streams):
    train, score = split(streams)
    a = simulate(train, score, "federated", CONFIG).outputs
    b = simulate(train, score, "federated", CONFIG).outputs
    assert a.equals(b)


def test_bad_mode_and_unknown_score_devices_are_refused(streams):
    with pytest.raises(ValueError, match="mode must be one of"):
        simulate(streams, None, "gossip", CONFIG)
    with pytest.raises(ValueError, match="without a train stream"):
        simulate({"a": streams["mote-01"]}, {"b": streams["mote-02"]}, "local", CONFIG)
