"""How far a consumer group is behind a topic, and waiting until it has caught up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from flead.bus.clients import make_consumer
from flead.config import Settings

POLL_S = 0.5
CAUGHT_UP, STALLED, TIMED_OUT = "caught up", "stalled", "timed out"


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset of every partition of `topic`."""
    return {p: end for p, (_, end) in log_bounds(settings, topic).items()}


def log_bounds(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(first offset still held, next offset) of every partition of `topic`."""
    consumer = make_consumer(settings)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        return {tp.partition: (starts[tp], ends[tp]) for tp in partitions}
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The offsets `group` has committed on `topic` (partitions it never committed are absent).

    A consumer that names the group without subscribing only reads its offsets; it never joins."""
    consumer = make_consumer(settings, group_id=group)
    try:
        return _committed(consumer, topic, partitions)
    finally:
        consumer.close()


def _committed(consumer: KafkaConsumer, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    committed = {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    return {p: offset for p, offset in committed.items() if offset is not None}


def lag(targets: dict[int, int], committed: dict[int, int]) -> int:
    """Records between what `group` committed and `targets` (end offsets), summed over partitions."""
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in targets.items())


@dataclass(frozen=True)
class GroupWait:
    """How a wait for a consumer group ended."""

    outcome: str  # CAUGHT_UP, STALLED or TIMED_OUT
    remaining: int  # records of the targets not committed yet
    waited_s: float
    still_s: float  # how long the committed offsets had not moved when it ended

    @property
    def caught_up(self) -> bool:
        return self.outcome == CAUGHT_UP


def wait_for_group(
    settings: Settings,
    group: str,
    topic: str,
    targets: dict[int, int],
    *,
    timeout_s: float,
    stall_s: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GroupWait:
    """Wait until `group` has committed `targets` on `topic`: at most `timeout_s`, and, with `stall_s`,
    at most `stall_s` without any committed offset moving while records remain (a consumer that is
    down or stuck is told at once, not after the whole timeout)."""
    consumer = make_consumer(settings, group_id=group)
    started = last_move = time.monotonic()
    seen: dict[int, int] | None = None
    try:
        while True:
            committed = _committed(consumer, topic, targets)
            now = time.monotonic()
            if committed != seen:
                seen, last_move = committed, now
            remaining = lag(targets, committed)
            if on_progress:
                on_progress(remaining)
            outcome = None
            if remaining == 0:
                outcome = CAUGHT_UP
            elif stall_s is not None and now - last_move >= stall_s:
                outcome = STALLED
            elif now - started >= timeout_s:
                outcome = TIMED_OUT
            if outcome is not None:
                return GroupWait(outcome, remaining, now - started, now - last_move)
            time.sleep(POLL_S)  # polling the group's progress against a deadline
    finally:
        consumer.close()
