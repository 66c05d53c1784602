"""`EventBuilder`, the online form of `group_events`: the same events however a stream is cut into
batches, its state round-trips mid-event, and open groups are reported as they grow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flead.model.events import EventBuilder, EventConfig, group_events


def online_events(flags, severity, config, cuts, *, restart_at=None):
    builder = EventBuilder(config)
    closed = []
    bounds = [0, *sorted(cuts), len(flags)]
    for lo, hi in itertools.pairwise(bounds):
        if restart_at is not None and lo >= restart_at:
            builder, restart_at = EventBuilder.from_state_dict(builder.state_dict(), config), None
        closed += [c for c in builder.push(flags[lo:hi], severity[lo:hi]) if c.closed]
    closed += builder.finish()
    return [c.event for c in closed if c.kept]


@pytest.mark.parametrize("seed", range(12))
def test_online_events_equal_group_events_on_the_same_readings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    rate = rng.choice([0.005, 0.03, 0.2, 0.6])
    flags = rng.random(n) < rate
    if seed % 3 == 0:  # a lasting fault: a long run with holes
        lo = int(rng.integers(0, n // 2))
        flags[lo : lo + n // 3] |= rng.random(len(flags[lo : lo + n // 3])) < 0.7
    # unflagged readings get severities too: a higher one inside an event can be its peak
    severity = np.where(flags, 1.0 + rng.exponential(2.0, n), rng.random(n) * 1.0)
    severity[rng.random(n) < 0.05] = 3.0  # ties: the first of equal peaks wins, as in np.argmax
    config = EventConfig(
        merge_gap=int(rng.integers(1, 80)),
        min_duration=int(rng.integers(1, 20)),
        min_severity=float(rng.choice([1.0, 2.0, 3.5])),
    )
    _, expected = group_events(flags, severity, config)
    for _ in range(3):
        cuts = rng.choice(np.arange(1, n), size=int(rng.integers(0, 40)), replace=False).tolist()
        restart = int(rng.integers(0, n))
        assert online_events(flags, severity, config, cuts) == expected
        assert online_events(flags, severity, config, cuts, restart_at=restart) == expected
    assert online_events(flags, severity, config, list(range(1, n))) == expected  # one at a time


def test_an_open_event_is_reported_as_it_grows_and_closed_after_merge_gap_quiet_readings() -> None:
    builder = EventBuilder(EventConfig(merge_gap=5, min_duration=3, min_severity=2.0))
    on, off = np.ones(2, bool), np.zeros(2, bool)
    first = builder.push(on, np.array([1.5, 1.5]))
    assert [(c.event.start, c.event.end, c.closed, c.kept) for c in first] == [(0, 1, False, False)]
    grown = builder.push(on, np.array([4.0, 1.2]))  # long enough and strong enough now
    assert [(c.event.end, c.event.peak, c.closed, c.kept) for c in grown] == [(3, 2, False, True)]
    assert builder.push(off, np.zeros(2)) == []  # quiet, but within the merge gap
    closing = builder.push(np.zeros(4, bool), np.zeros(4))  # 5 quiet readings after the last alarm
    assert [(c.event.start, c.event.end, c.event.flagged, c.closed) for c in closing] == [(0, 3, 4, True)]
    assert builder.open is None and builder.finish() == []
    with pytest.raises(ValueError, match="bad event builder state"):
        EventBuilder.from_state_dict({"position": 3})


def test_feature_errors_say_which_features_made_the_score() -> None:
    from flead.model import ModelConfig, OnlineDetector

    config = ModelConfig(features=("a", "b", "c"), time_features=False)
    explained, plain = OnlineDetector(config), OnlineDetector(config)
    values = np.random.default_rng(3).normal(size=(640, 3))
    values[600, 1] += 40.0  # a spike on b only
    values[610, 2] = np.nan
    out = explained.process_many(values, explain=True)
    errors = out["feature_errors"].to_numpy()
    assert out.drop("feature_errors").equals(plain.process_many(values))  # explaining changes nothing
    assert np.allclose(np.nanmean(errors, axis=1), out["score"].to_numpy())
    assert int(np.argmax(errors[600])) == 1 and np.isnan(errors[610, 2])
