"""In-process readings and Kafka records shared by the trainer state and exchange tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from kafka.consumer.fetcher import ConsumerRecord

from flead.bus.codec import encode_readings
from flead.model.config import ModelConfig

T0 = datetime(2004, 3, 1, tzinfo=UTC)
SMALL = ModelConfig(window=8, hidden=(16, 4))


def readings(device: str, n: int, *, start: int = 0, seed: int = 0, step_s: int = 31) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n)
    day = np.sin(2 * np.pi * t * step_s / 86_400)
    temperature = 21 + 3 * day + rng.normal(0, 0.1, n)
    temperature[(t % 450) == 449] += 15  # spikes: something to flag
    return pl.DataFrame(
        {
            "device_id": [device] * n,
            "ts": [T0 + timedelta(seconds=int(s) * step_s) for s in t],
            "epoch": t,
            "temperature": temperature,
            "humidity": 40 - 5 * day + rng.normal(0, 0.3, n),
            "light": np.where(day > 0, 300 * day, 0.0) + rng.normal(0, 1, n),
            "voltage": 2.7 - t * 1e-6 + rng.normal(0, 0.002, n),
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def records(frame: pl.DataFrame, partition: int = 0, topic: str = "t") -> list[ConsumerRecord]:
    keys, values = encode_readings(frame)
    return [
        ConsumerRecord(topic, partition, None, i, 0, 0, k, v, [], None, len(k), len(v), -1)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
