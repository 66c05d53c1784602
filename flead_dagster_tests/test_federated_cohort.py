"""The training cohort: a bounded number of devices hold private weights; the others rest on the
global weights, held once, and cost a few KB each."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from flead.federated.cohort import TrainingCohort
from flead.federated.device import DeviceClient
from flead.federated.state import GlobalState
from flead.model.config import ModelConfig, TrainConfig
from flead.model.detector import OnlineDetector

CONFIG = ModelConfig(features=("a", "b"), time_features=False)
TRAIN = TrainConfig(warmup=50, calibration=50)


def readings(rng, n: int) -> np.ndarray:
    t = np.arange(n)
    return np.stack([np.sin(t / 7.0), np.cos(t / 11.0)], axis=1) + 0.05 * rng.normal(size=(n, 2))


def fleet(n: int, push_every: int) -> tuple[GlobalState, list[DeviceClient]]:
    state = GlobalState.initial(OnlineDetector(CONFIG, train=TRAIN).get_weights())
    clients = [
        DeviceClient(f"d{i}", OnlineDetector(CONFIG, train=TRAIN), push_every=push_every) for i in range(n)
    ]
    for client in clients:
        client.adopt(state)
    return state, clients


def test_cohort_bounds_private_weights_and_every_device_takes_its_turn() -> None:
    rng = np.random.default_rng(0)
    _, clients = fleet(5, push_every=100)
    cohort = TrainingCohort(2)
    pushed: dict[str, int] = {}
    for _ in range(12):
        for client in clients:
            cohort.admit(client)
            client.process(readings(rng, 50))
            update = client.take_update()
            if update is not None:
                pushed[client.device_id] = pushed.get(client.device_id, 0) + 1
            cohort.after_push(client)
            private = [c for c in clients if not c.detector.weights_shared]
            assert len(private) <= 2 and len(cohort.training) <= 2
        resting = [c for c in clients if c.detector.weights_shared]
        assert resting and all(c.detector.optimizer.m is None for c in resting)
        first = resting[0].detector.model.network.flat
        assert all(np.shares_memory(first, c.detector.model.network.flat) for c in resting)
    assert sorted(pushed) == [c.device_id for c in clients]  # everybody trained a round
    assert all(count >= 1 for count in pushed.values())
    resting = next(c for c in clients if c.detector.weights_shared)
    with pytest.raises(ValueError, match="read-only"):
        resting.detector.model.network.params["enc.0.W"][0, 0] = 1.0


def test_without_a_limit_every_device_trains_as_before() -> None:
    rng = np.random.default_rng(1)
    _, clients = fleet(3, push_every=100)
    cohort = TrainingCohort(None)
    for _ in range(4):
        for client in clients:
            assert cohort.admit(client)
            client.process(readings(rng, 50))
            client.take_update()
            cohort.after_push(client)
    assert not any(c.detector.weights_shared for c in clients)


def test_a_resting_device_checkpoints_without_weights_and_resumes_exactly() -> None:
    rng = np.random.default_rng(2)
    _, [client] = fleet(1, push_every=100)
    client.process(readings(rng, 300))  # trained: its own weights and moments
    client.take_update()
    client.rest()
    detector = client.detector
    full, lean = detector.to_bytes(), detector.to_bytes(weights=False)
    assert len(full) - len(lean) >= detector.model.network.size * 4
    flat = detector.model.network.flat
    with pytest.raises(ValueError, match="without its shared weights"):
        OnlineDetector.from_bytes(lean)
    restored = OnlineDetector.from_bytes(lean, shared=lambda network: flat)
    assert restored.weights_shared and np.shares_memory(restored.model.network.flat, flat)
    batch = readings(rng, 120)
    expected = detector.process_many(batch, learn=False)
    assert restored.process_many(batch, learn=False).equals(expected)
    # learning makes a private copy; the shared weights are untouched
    before = flat.copy()
    restored.process_many(batch)
    assert not restored.weights_shared and np.array_equal(flat, before)


def test_a_resting_device_holds_less_than_one_copy_of_the_weights() -> None:
    state, _ = fleet(1, push_every=100)

    def bytes_per_device(resting: bool) -> float:
        rng = np.random.default_rng(3)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = []
            for i in range(40):
                client = DeviceClient(f"r{i}", OnlineDetector(CONFIG, train=TRAIN), push_every=100)
                if resting:
                    client.rest()
                client.adopt(state)
                client.process(readings(rng, 150))
                client.take_update()
                clients.append(client)
            return (tracemalloc.get_traced_memory()[0] - before) / len(clients)
        finally:
            tracemalloc.stop()

    weights = OnlineDetector(CONFIG).model.network.size * 4
    resting, training = bytes_per_device(True), bytes_per_device(False)
    # a training device: its weights, the optimiser's two moments and the weights it reported
    assert resting < weights and training - resting > 3 * weights, (resting, training, weights)


def test_a_waiting_device_that_went_quiet_does_not_hold_the_free_place() -> None:
    _, clients = fleet(4, push_every=1)
    quiet, first, *others = clients
    cohort = TrainingCohort(1)
    assert cohort.admit(first) and not cohort.admit(quiet)  # quiet waits first in line
    first.round_samples = 1
    cohort.after_push(first)  # its round is done: the place is free, quiet is next...
    assert not cohort.admit(others[0])  # ...so another device must wait behind it
    for _ in range(12):  # quiet never asks again; the others keep asking
        for client in others:
            cohort.admit(client)
    assert quiet.device_id not in cohort.waiting
    assert len(cohort.training) == 1 and quiet.device_id not in cohort.training
