"""FedBuff-style buffered aggregation: validation at submit, idempotence, staleness, versions."""

from __future__ import annotations

import numpy as np
import pytest

from flead.federated import AggregationConfig, GlobalState, LocalUpdate, SubmitStatus, UpdateBuffer

SHAPES = {"hidden/kernel": (4, 3), "hidden/bias": (3,)}


def filled(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, dtype=np.float32) for name, shape in SHAPES.items()}


def update(
    value: float, *, device: str = "mote-01", uid: str = "u1", base: int = 0, n: int = 10
) -> LocalUpdate:
    return LocalUpdate(device_id=device, update_id=uid, base_version=base, n_samples=n, arrays=filled(value))


@pytest.fixture
def buffer() -> UpdateBuffer:
    return UpdateBuffer(GlobalState.initial(filled(1.0)), AggregationConfig(staleness_exponent=0.5))


def test_a_valid_update_waits_in_the_buffer(buffer) -> None:
    result = buffer.submit(update(0.1))

    assert result.accepted and result.status is SubmitStatus.ACCEPTED and result.reason is None
    assert [u.update_id for u in buffer.pending()] == ["u1"]
    assert buffer.version == 0


def test_a_bad_update_is_refused_at_submit_with_its_reason(buffer) -> None:
    bad = update(0.1)
    bad.arrays["hidden/bias"][1] = np.nan

    result = buffer.submit(bad)

    assert result.status is SubmitStatus.REFUSED
    assert "NaN" in result.reason
    assert len(buffer) == 0


def test_aggregate_makes_the_next_version_and_empties_the_buffer(buffer) -> None:
    buffer.submit(update(0.1, device="mote-01", n=10))
    buffer.submit(update(0.4, device="mote-02", n=30))

    result = buffer.aggregate()

    assert result.new_state.version == 1 and buffer.version == 1 and buffer.state is result.new_state
    assert len(buffer) == 0
    np.testing.assert_allclose(
        buffer.state.weights["hidden/bias"], 1.0 + (10 * 0.1 + 30 * 0.4) / 40, rtol=1e-6
    )


def test_a_duplicate_submission_is_ignored_before_and_after_aggregation(buffer) -> None:
    assert buffer.submit(update(0.1)).accepted
    assert buffer.submit(update(0.1)).status is SubmitStatus.DUPLICATE
    assert len(buffer) == 1

    first = buffer.aggregate()
    again = buffer.submit(update(0.1))
    second = buffer.aggregate()

    assert first.summary.n_updates == 1
    np.testing.assert_allclose(first.new_state.weights["hidden/bias"], 1.1, rtol=1e-6)
    assert again.status is SubmitStatus.DUPLICATE
    assert not second.created and buffer.version == 1


def test_an_empty_buffer_makes_no_version(buffer) -> None:
    result = buffer.aggregate()

    assert not result.created and result.skipped_reason == "no accepted updates"
    assert buffer.version == 0


def test_aggregate_if_ready_waits_for_the_threshold(buffer) -> None:
    buffer.submit(update(0.1, device="mote-01"))
    buffer.submit(update(0.1, device="mote-02"))

    assert buffer.aggregate_if_ready(3) is None
    assert len(buffer) == 2

    buffer.submit(update(0.1, device="mote-03"))
    result = buffer.aggregate_if_ready(3)

    assert result.created and result.summary.n_devices == 3 and buffer.version == 1


def test_fewer_than_min_updates_stay_pending_for_the_next_try() -> None:
    buffer = UpdateBuffer(GlobalState.initial(filled(1.0)), AggregationConfig(min_updates=2))
    buffer.submit(update(0.1, device="mote-01"))

    assert not buffer.aggregate().created
    assert buffer.aggregate_if_ready() is None
    buffer.submit(update(0.1, device="mote-02"))

    assert buffer.aggregate().new_state.version == 1


def test_versions_advance_by_one_while_stale_updates_are_discounted(buffer) -> None:
    # mote-01 trained from version 0 but is slow; two versions are made before its update arrives.
    for version in range(2):
        buffer.submit(update(0.0, device="mote-02", uid=f"v{version}", base=version))
        assert buffer.aggregate().new_state.version == version + 1
    before = buffer.state.weights["hidden/bias"].copy()

    assert buffer.submit(update(0.3, device="mote-01", uid="slow", base=0)).accepted
    result = buffer.aggregate()

    assert result.new_state.version == 3 and result.new_state.parent_version == 2
    assert result.accepted[0].staleness == 2
    np.testing.assert_allclose(result.new_state.weights["hidden/bias"], before + 0.3 / np.sqrt(3), rtol=1e-6)


def test_updates_past_max_staleness_are_refused_even_if_resubmitted_with_the_same_id() -> None:
    buffer = UpdateBuffer(GlobalState.initial(filled(1.0)), AggregationConfig(max_staleness=1))
    assert buffer.submit(update(0.1, uid="once", base=0)).accepted
    buffer.aggregate()
    buffer.submit(update(0.1, device="mote-02", uid="next", base=1))
    buffer.aggregate()

    late = buffer.submit(update(0.1, uid="once", base=0))

    assert late.status is SubmitStatus.REFUSED and "too stale" in late.reason


def test_full_weights_on_an_older_version_use_the_kept_history(buffer) -> None:
    buffer.submit(update(0.5, device="mote-02", uid="a"))
    buffer.aggregate()  # version 1: weights 1.5
    trained_from_v0 = {name: np.full(shape, 1.2, dtype=np.float32) for name, shape in SHAPES.items()}

    result = buffer.submit(
        LocalUpdate(
            device_id="mote-01",
            update_id="w",
            base_version=0,
            n_samples=5,
            arrays=trained_from_v0,
            kind="weights",
        )
    )
    new = buffer.aggregate().new_state

    assert result.accepted
    # delta = 1.2 - 1.0 against version 0, discounted for staleness 1, applied to version 1's weights.
    np.testing.assert_allclose(new.weights["hidden/bias"], 1.5 + 0.2 / np.sqrt(2), rtol=1e-6)
