"""Alarms grouped into events: merging, pruning, and the module's docstring example."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import flead.model.events as events_module
from flead.model.events import EventConfig, flagged_runs, group_events


def test_docstring_example_runs() -> None:
    assert doctest.testmod(events_module).failed == 0


def test_close_alarms_merge_and_weak_or_short_events_are_pruned() -> None:
    flags = np.zeros(300, bool)
    severity = np.zeros(300)
    flags[[10, 30, 55]] = True  # one event: gaps of 20 and 25 < 40
    severity[[10, 30, 55]] = [1.5, 6.0, 1.2]
    flags[200:202] = True  # weak: peak 1.4
    severity[200:202] = 1.4
    flags[250] = True  # strong but a single reading
    severity[250] = 9.0
    kept, events = group_events(flags, severity, EventConfig(merge_gap=40, min_severity=2.0))
    assert [(e.start, e.end, e.flagged, e.peak) for e in events] == [(10, 55, 3, 30), (250, 250, 1, 250)]
    assert kept[10:56].all() and not kept[200:202].any() and kept.sum() == 47
    _, long_only = group_events(flags, severity, EventConfig(merge_gap=40, min_severity=2.0, min_duration=5))
    assert [(e.start, e.end) for e in long_only] == [(10, 55)]


def test_no_alarm_no_event_and_bad_settings_are_refused() -> None:
    kept, events = group_events(np.zeros(5, bool), np.zeros(5))
    assert not kept.any() and events == []
    assert flagged_runs(np.array([1, 1, 0, 1], bool)) == [(0, 2), (3, 4)]
    with pytest.raises(ValueError):
        EventConfig(merge_gap=0)
