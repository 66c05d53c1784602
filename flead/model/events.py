"""Alarms as events: a device's flagged readings grouped into runs with a start, an end and a peak.

Flagged readings closer than `merge_gap` readings are one event (the readings between them belong to
it); an event whose peak severity (times over its threshold) stays below `min_severity`, or that
is shorter than `min_duration` readings, is pruned as a likely false alarm, in the spirit of
Hundman et al. (KDD 2018), whose pruning drops the runs whose peak error barely clears the threshold.

>>> import numpy as np
>>> flags = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1], bool)
>>> severity = np.array([0, 3, 4, 0, 0, 2.5, 0, 0, 0, 0, 0, 1.2])
>>> kept, events = group_events(flags, severity, EventConfig(merge_gap=3, min_severity=2.0))
>>> [(e.start, e.end, e.peak_severity) for e in events]
[(1, 5, 4.0)]
>>> kept.astype(int).tolist()
[0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EventConfig:
    merge_gap: int = 50  # flagged readings closer than this are one event
    min_duration: int = 1  # readings from an event's first to its last flagged reading
    min_severity: float = 2.0  # an event's peak must reach this many times its threshold

    def __post_init__(self) -> None:
        if self.merge_gap < 1 or self.min_duration < 1 or self.min_severity < 1.0:
            raise ValueError("merge_gap and min_duration must be >= 1 and min_severity >= 1")


@dataclass(frozen=True)
class Event:
    start: int  # index of the first flagged reading
    end: int  # index of the last flagged reading (inclusive)
    flagged: int  # readings flagged inside it
    peak: int  # index of the reading with the highest severity
    peak_severity: float


def flagged_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, end) index pairs, end exclusive."""
    padded = np.concatenate([[0], np.asarray(flags, np.int8), [0]])
    change = np.diff(padded)
    return list(zip(np.flatnonzero(change == 1).tolist(), np.flatnonzero(change == -1).tolist(), strict=True))


def group_events(
    flags: np.ndarray, severity: np.ndarray, config: EventConfig | None = None
) -> tuple[np.ndarray, list[Event]]:
    """(readings inside a kept event, the kept events) for one device's readings in time order."""
    config = config or EventConfig()
    flags = np.asarray(flags, bool)
    severity = np.asarray(severity, np.float64)
    kept = np.zeros(flags.size, bool)
    events = []
    index = np.flatnonzero(flags)
    if not index.size:
        return kept, events
    breaks = np.flatnonzero(np.diff(index) > config.merge_gap)
    for group in np.split(index, breaks + 1):
        start, end = int(group[0]), int(group[-1])
        peak = start + int(np.argmax(severity[start : end + 1]))
        if end - start + 1 < config.min_duration or severity[peak] < config.min_severity:
            continue
        kept[start : end + 1] = True
        events.append(Event(start, end, int(group.size), peak, float(severity[peak])))
    return kept, events
