"""Kafka bus helpers shared by test modules: read a topic back."""

from __future__ import annotations

import time


def consume(consumer, expected: int, timeout_s: float = 30.0) -> list:
    """Poll until `expected` records arrived (or the timeout), then one more short poll for extras."""
    records, deadline = [], time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += batch
    for batch in consumer.poll(timeout_ms=1000).values():
        records += batch
    return records
