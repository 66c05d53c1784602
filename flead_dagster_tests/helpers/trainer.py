"""The stream trainer process harness and the Kafka/MongoDB helpers shared by the trainer tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import polars as pl
import pytest
from kafka.structs import TopicPartition

from flead.bus.clients import make_consumer
from flead.bus.replay import replay
from flead.bus.topics import ensure_topics
from flead.config import Settings
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.local.services import free_port
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster_tests.helpers.bus import consume

PARTITIONS = 4
SMALL_MODEL = ["--window", "8", "--hidden", "16,4", "--warmup", "200", "--heartbeat", "1"]
FAST = {
    "FLEAD_TRAINER_CHECKPOINT_RECORDS": "2000",
    "FLEAD_TRAINER_CHECKPOINT_SECONDS": "1",
    "FLEAD_TRAINER_MAX_POLL_RECORDS": "500",
    "FLEAD_TRAINER_PUSH_EVERY": "1000000000",  # no federation: scores depend on each device's stream only
    "FLEAD_MONGO_SERVER_SELECTION_TIMEOUT_MS": "1000",
}


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll `condition` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)  # poll interval
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def twin_envs(base: dict[str, str], **extra: str) -> tuple[dict[str, str], dict[str, str]]:
    """Two trainers reading the same (created) topics with their own groups and databases: one runs
    uninterrupted, the other is killed and restarted, and their results must be equal."""
    uninterrupted = isolated_env(base, **extra)
    create_topics(settings_for(uninterrupted))
    restarted = {**uninterrupted, "FLEAD_CONSUMER_GROUP": f"{uninterrupted['FLEAD_CONSUMER_GROUP']}-b"}
    restarted["FLEAD_MONGO_DB"] = f"{uninterrupted['FLEAD_MONGO_DB']}_b"
    return uninterrupted, restarted


def isolated_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    """FLEAD_* for one test: its own topics, group and database on the given services."""
    tag = uuid.uuid4().hex[:8]
    return {
        **base,
        **FAST,
        "FLEAD_TOPIC_READINGS": f"test.trainer.{tag}",
        "FLEAD_TOPIC_DLQ": f"test.trainer.{tag}.dlq",
        "FLEAD_TOPIC_LATE": f"test.trainer.{tag}.late",
        "FLEAD_TOPIC_ANOMALIES": f"test.trainer.{tag}.anomalies",
        "FLEAD_CONSUMER_GROUP": f"trainer-{tag}",
        "FLEAD_MONGO_DB": f"trainer_{tag}",
        **extra,
    }


def paced_replay(settings: Settings, frame: pl.DataFrame, seconds: float) -> threading.Thread:
    """Replay `frame` in the background, paced to take about `seconds` (join the thread to wait)."""
    speed = (frame["ts"][-1] - frame["ts"][0]).total_seconds() / seconds
    producer = threading.Thread(target=replay, args=(settings, frame), kwargs={"speed": speed})
    producer.start()
    return producer


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("FLEAD_").lower(): v for k, v in env.items() if k.startswith("FLEAD_")})


def create_topics(settings: Settings) -> None:
    ensure_topics(settings, {settings.topic_readings: PARTITIONS})  # the trainer creates its outputs


class Trainer:
    """`python -m services.stream_trainer` as a subprocess, observed through its /health endpoint."""

    started: ClassVar[list[Trainer]] = []  # killed by `no_leftover_trainers` if a test fails early

    def __init__(self, env: dict[str, str], log_dir: Path, *args: str, name: str = "trainer") -> None:
        self.port = free_port()
        self.log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        full_env = {**os.environ, **env, "FLEAD_TRAINER_HEALTH_PORT": str(self.port)}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.stream_trainer", *SMALL_MODEL, *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        Trainer.started.append(self)

    def health(self) -> dict | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
        def check():
            if self.process.poll() is not None:
                pytest.fail(f"trainer exited ({self.process.returncode}) waiting for {what}:\n{self.tail()}")
            health = self.health()
            return health if health is not None and predicate(health) else None

        return wait_until(check, timeout_s, f"{what}\n{self.tail()}")

    def stop(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(autouse=True)
def no_leftover_trainers() -> Iterator[None]:
    yield
    while Trainer.started:
        trainer = Trainer.started.pop()
        if trainer.process.poll() is None:
            trainer.kill()


def offsets_total(health: dict, key: str = "offsets") -> int:
    return sum(v or 0 for v in health[key].values())


def fleet(tmp_path: Path, devices: int, days: int, seed: int) -> pl.DataFrame:
    """A synthetic Intel-Lab-like fleet in event-time order; every 200th reading of a device after its
    first 1,000 is a fault on all sensors at once (anomalies to find)."""
    generated = generate_fleet(tmp_path / f"fleet-{seed}", n_devices=devices, days=days, seed=seed)
    rows = parse_files(generated.paths, mote_ids=range(1, devices + 1)).rows.sort("ts", "device_id", "epoch")
    index = pl.int_range(pl.len()).over("device_id")
    fault = (index > 1000) & (index % 200 == 0)
    shifts = {"temperature": 30.0, "humidity": 30.0, "light": 1000.0, "voltage": -0.5}
    return rows.with_columns(
        pl.when(fault).then(pl.col(name) + shift).otherwise(pl.col(name)).alias(name)
        for name, shift in shifts.items()
    )


def mongo_db(settings: Settings):
    client = make_mongo_client(settings)
    return client, get_database(client, settings)


def device_table(settings: Settings) -> dict[str, tuple]:
    client, db = mongo_db(settings)
    try:
        return {
            d["_id"]: (d["readings"], d["buffered"], d["anomalies"], d["late"])
            for d in db[settings.collection_devices].find()
        }
    finally:
        client.close()


def anomaly_scores(settings: Settings) -> dict[str, float]:
    client, db = mongo_db(settings)
    try:
        return {d["_id"]: d["score"] for d in db[settings.collection_anomalies].find({}, {"score": 1})}
    finally:
        client.close()


def checkpoint_offsets(settings: Settings) -> dict[int, int | None]:
    client, db = mongo_db(settings)
    try:
        found = db[settings.collection_checkpoints].find(
            {"kind": "partition", "group": settings.consumer_group}
        )
        return {d["partition"]: d["offset"] for d in found}
    finally:
        client.close()


def kafka_committed(settings: Settings) -> dict[int, int | None]:
    """The group's committed offsets in Kafka (read without joining the group)."""
    consumer = make_consumer(settings)
    try:
        return {p: consumer.committed(TopicPartition(settings.topic_readings, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close()


def read_all(settings: Settings, topic: str, expected: int) -> list:
    consumer = make_consumer(settings, topic, group_id=f"read-{uuid.uuid4().hex[:8]}")
    try:
        return consume(consumer, expected)
    finally:
        consumer.close()


T0 = datetime(2004, 3, 1, tzinfo=UTC)
STEP = timedelta(seconds=30)


def stationary(devices: list[str], n: int, *, seed: int, first: int = 0) -> pl.DataFrame:
    """Devices reading steady values with sensor noise, every 30 s from reading `first` on, in time order."""
    rng = np.random.default_rng(seed)
    frames = []
    for device in devices:
        frames.append(
            pl.DataFrame(
                {
                    "device_id": [device] * n,
                    "ts": [T0 + (first + i) * STEP for i in range(n)],
                    "epoch": list(range(first, first + n)),
                    "temperature": 20.0 + rng.normal(0, 0.3, n),
                    "humidity": 40.0 + rng.normal(0, 0.5, n),
                    "light": 300.0 + rng.normal(0, 10.0, n),
                    "voltage": 2.7 + rng.normal(0, 0.005, n),
                }
            )
        )
    frame = pl.concat(frames).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    return frame.sort("ts", "device_id")


def documents(settings: Settings, collection: str, query: dict | None = None) -> list[dict]:
    client, db = mongo_db(settings)
    try:
        return list(db[collection].find(query or {}))
    finally:
        client.close()


def device_stats(settings: Settings) -> dict[str, dict]:
    return {d["_id"]: d for d in documents(settings, settings.collection_devices)}
