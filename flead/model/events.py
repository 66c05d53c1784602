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
    merge_gap: int = 10  # flagged readings closer than this are one event
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


@dataclass(frozen=True)
class EventChange:
    """A group of flagged readings that `EventBuilder.push` extended or closed."""

    event: Event
    closed: bool  # no later reading can join it (merge_gap readings passed without an alarm)
    kept: bool  # it meets min_duration and min_severity (an open group: so far; both only grow)


class EventBuilder:
    """`group_events` online: one device's readings pushed a batch at a time, in time order.

    Indices count the readings pushed since the builder was made. A group is closed once
    `merge_gap` readings have passed after its last flagged reading without another; pushing a stream
    in batches of any sizes and then calling `finish` gives the events `group_events` gives on the
    whole stream (tested). The state (`state_dict`) is a few numbers: checkpoint it with the device.

    >>> builder = EventBuilder(EventConfig(merge_gap=3, min_severity=2.0))
    >>> flags = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1], bool)
    >>> severity = np.array([0, 3, 4, 0, 0, 2.5, 0, 0, 0, 0, 0, 1.2])
    >>> [(c.event.start, c.event.end, c.closed, c.kept) for c in builder.push(flags[:6], severity[:6])]
    [(1, 5, False, True)]
    >>> [(c.event.start, c.event.end, c.closed, c.kept) for c in builder.push(flags[6:], severity[6:])]
    [(1, 5, True, True), (11, 11, False, False)]
    """

    def __init__(self, config: EventConfig | None = None) -> None:
        self.config = config or EventConfig()
        self.position = 0  # index of the next reading
        self.open: Event | None = None  # the group in progress
        # the highest severity among the readings after the open group's last flagged one (and where):
        # it becomes the peak if a later flagged reading joins them to the group
        self._gap_peak: tuple[float, int] | None = None

    def kept(self, event: Event) -> bool:
        c = self.config
        return event.end - event.start + 1 >= c.min_duration and event.peak_severity >= c.min_severity

    def push(self, flags: np.ndarray, severity: np.ndarray) -> list[EventChange]:
        """Take the next readings; the groups they extended or closed, in time order."""
        flags = np.asarray(flags, bool).reshape(-1)
        severity = np.asarray(severity, np.float64).reshape(-1)
        if severity.shape != flags.shape:
            raise ValueError("severity needs one value per flag")
        gap = self.config.merge_gap
        base, changes = self.position, []
        touched = False
        last = -1  # within the batch: the last reading accounted for in the gap peak
        for k in np.flatnonzero(flags).tolist():
            i = base + k
            if self.open is not None and i - self.open.end > gap:
                changes.append(self._close())
                touched = False
            if self.open is None:
                self.open = Event(i, i, 1, i, float(severity[k]))
            else:
                peak, at = self._gap_candidate(severity, last + 1, k)
                e = self.open
                if peak > e.peak_severity:
                    e = Event(e.start, e.end, e.flagged, at, peak)
                if severity[k] > e.peak_severity:
                    e = Event(e.start, e.end, e.flagged, i, float(severity[k]))
                self.open = Event(e.start, i, e.flagged + 1, e.peak, e.peak_severity)
            self._gap_peak, last, touched = None, k, True
        if self.open is not None:
            self._gap_peak = self._gap_candidate(severity, last + 1, flags.size)
        self.position = base + flags.size
        if self.open is not None and self.position - 1 - self.open.end >= gap:
            changes.append(self._close())
        elif self.open is not None and touched:
            changes.append(EventChange(self.open, False, self.kept(self.open)))
        return changes

    def finish(self) -> list[EventChange]:
        """The end of the stream: the open group, closed."""
        return [self._close()] if self.open is not None else []

    def _gap_candidate(self, severity: np.ndarray, lo: int, hi: int) -> tuple[float, int]:
        """The gap peak so far, extended by the batch's readings [lo, hi) (the first of equals wins)."""
        best = self._gap_peak or (-np.inf, -1)
        if hi > lo:
            k = lo + int(np.argmax(severity[lo:hi]))
            if severity[k] > best[0]:
                best = (float(severity[k]), self.position + k)
        return best

    def _close(self) -> EventChange:
        event, self.open, self._gap_peak = self.open, None, None
        return EventChange(event, True, self.kept(event))

    def state_dict(self) -> dict:
        e = self.open
        return {
            "position": self.position,
            "open": None if e is None else [e.start, e.end, e.flagged, e.peak, e.peak_severity],
            "gap_peak": None if self._gap_peak is None else list(self._gap_peak),
        }

    @classmethod
    def from_state_dict(cls, state: dict, config: EventConfig | None = None) -> EventBuilder:
        builder = cls(config)
        try:
            builder.position = int(state["position"])
            if state["open"] is not None:
                start, end, flagged, peak, peak_severity = state["open"]
                builder.open = Event(int(start), int(end), int(flagged), int(peak), float(peak_severity))
            if state["gap_peak"] is not None:
                value, at = state["gap_peak"]
                builder._gap_peak = (float(value), int(at))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad event builder state: {exc!r}") from exc
        return builder
