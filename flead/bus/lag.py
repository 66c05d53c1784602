"""How far a consumer group is behind a topic, and waiting until it has caught up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import TopicPartition

from flead.bus.clients import make_consumer
from flead.config import Settings

POLL_S = 0.5


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset of every partition of `topic`."""
    consumer = make_consumer(settings)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The offsets `group` has committed on `topic` (partitions it never committed are absent).

    A consumer that names the group without subscribing only reads its offsets; it never joins."""
    consumer = make_consumer(settings, group_id=group)
    try:
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()
    return {p: offset for p, offset in committed.items() if offset is not None}


def lag(targets: dict[int, int], committed: dict[int, int]) -> int:
    """Records between what `group` committed and `targets` (end offsets), summed over partitions."""
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in targets.items())


def wait_for_group(
    settings: Settings,
    group: str,
    topic: str,
    targets: dict[int, int],
    *,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Wait until `group` has committed `targets` on `topic`, at most `timeout_s`; the lag left."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = lag(targets, committed_offsets(settings, group, topic, targets))
        if on_progress:
            on_progress(remaining)
        if remaining == 0 or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL_S)  # polling the group's progress against a deadline
