"""Replay lake readings to Kafka, keyed by device id, in event-time order, at a chosen speed.

Messages are the JSON form of `flead.schema.Reading` of the settings' fleet schema
(`flead.bus.codec.encode_readings`), encoded for the whole frame at once by polars; the per-message
Python work is only the producer's `send`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import polars as pl
from kafka import KafkaProducer

from flead.bus.clients import make_producer
from flead.bus.codec import encode_readings
from flead.config import Settings
from flead.datasets import lake

PROGRESS_EVERY = 5_000  # messages between progress callbacks


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReplaySummary:
    topic: str
    messages: int
    devices: int
    first_ts: datetime | None
    last_ts: datetime | None
    seconds: float
    # partition -> the offset after its last reading sent, as the broker acknowledged it (exact, unlike
    # the end offsets some brokers report)
    next_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def lake_readings(
    settings: Settings,
    start: date | None = None,
    end: date | None = None,
    devices: Iterable[str] | None = None,
) -> pl.DataFrame:
    """The lake's readings in the range, in event-time order (ties broken by device id)."""
    held = lake.lake_fleet(Path(settings.lake_dir))
    if held != settings.fleet:
        raise ValueError(
            f"the lake at {settings.lake_dir} holds readings of the fleet schema {held.ref}, "
            f"not {settings.fleet.ref} (FLEAD_FLEET_SCHEMA)"
        )
    frame = lake.scan_lake(Path(settings.lake_dir), start, end, devices).sort("ts", "device_id", "epoch")
    return frame.collect()


def send_schedule(frame: pl.DataFrame, speed: float) -> list[float]:
    """Seconds after the start at which each reading is due when replayed `speed` times faster."""
    if not frame.height:
        return []
    offsets_us = (frame["ts"] - frame["ts"][0]).dt.total_microseconds().to_numpy()
    return (offsets_us / 1e6 / speed).tolist()


def replay(
    settings: Settings,
    frame: pl.DataFrame,
    speed: float | None = None,
    topic: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    producer: KafkaProducer | None = None,
) -> ReplaySummary:
    """Publish `frame` (lake rows in event-time order) to the readings topic.

    `speed` N replays N times faster than the readings were taken (the first reading is sent at
    once); None sends as fast as the broker takes them.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    topic = topic or settings.topic_readings
    keys, values = encode_readings(frame, settings.fleet)
    due = send_schedule(frame, speed) if speed is not None else None
    failures: list[BaseException] = []
    next_offsets: dict[int, int] = {}

    def acknowledged(metadata) -> None:
        if metadata.offset >= next_offsets.get(metadata.partition, 0):
            next_offsets[metadata.partition] = metadata.offset + 1

    own_producer = producer is None
    producer = producer or make_producer(settings)
    started = time.perf_counter()
    try:
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            if due is not None:
                wait = due[i] - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)  # pacing to event time, not a readiness check
            future = producer.send(topic, key=key, value=value)
            future.add_callback(acknowledged).add_errback(failures.append)
            if progress and i % PROGRESS_EVERY == 0:
                progress(i, len(keys))
        producer.flush()
    finally:
        if own_producer:
            producer.close()
    seconds = time.perf_counter() - started
    if failures:
        raise ReplayError(
            f"{len(failures)} of {len(keys)} readings were not delivered to {topic}: {failures[0]!r}"
        )
    if progress:
        progress(len(keys), len(keys))
    return ReplaySummary(
        topic=topic,
        messages=len(keys),
        devices=frame["device_id"].n_unique() if frame.height else 0,
        first_ts=frame["ts"][0] if frame.height else None,
        last_ts=frame["ts"][-1] if frame.height else None,
        seconds=seconds,
        next_offsets=next_offsets,
    )
