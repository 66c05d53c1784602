"""`flead replay`: lake readings to Kafka, keyed by device, in event-time order, on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flead.bus.clients import make_consumer
from flead.bus.replay import lake_readings, replay, send_schedule
from flead.bus.topics import ensure_topics
from flead.config import Settings
from flead.datasets import pipeline
from flead.schema import Reading
from flead_dagster_tests.helpers.bus import consume

FLEAD = str(Path(sys.executable).parent / "flead")


@pytest.fixture
def lake_settings(services_env, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "home"))
    settings = Settings()
    raw = pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(4, 2, 3))
    pipeline.stage(raw, settings)
    pipeline.write_lake_days(settings, pipeline.dataset_days(settings)[:2])
    return settings


def test_replay_publishes_every_reading_keyed_and_in_event_time_order(lake_settings):
    frame = lake_readings(lake_settings, end=datetime(2004, 2, 28).date())
    topic = f"test.replay.{uuid.uuid4().hex[:8]}"
    ensure_topics(lake_settings, {topic: 4})
    summary = replay(lake_settings, frame, topic=topic)
    assert summary.messages == frame.height and summary.devices == 4

    consumer = make_consumer(lake_settings, topic, group_id=f"g-{uuid.uuid4().hex[:8]}")
    try:
        records = consume(consumer, frame.height)
    finally:
        consumer.close()
    assert len(records) == frame.height
    per_device: dict[str, list] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        reading = Reading.model_validate_json(record.value)
        assert record.key == reading.device_id.encode()
        per_device[reading.device_id].append(reading.ts)
        partitions[reading.device_id].add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())  # a device's readings share one partition
    assert all(ts == sorted(ts) for ts in per_device.values())  # and arrive in event-time order
    expected = frame.group_by("device_id").len()
    assert {d: len(ts) for d, ts in per_device.items()} == dict(expected.iter_rows())


def test_send_schedule_scales_event_time_by_the_speed():
    t0 = datetime(2004, 3, 1, tzinfo=UTC)
    frame = pl.DataFrame({"ts": [t0, t0 + timedelta(seconds=30), t0 + timedelta(seconds=90)]})
    assert send_schedule(frame, 10.0) == pytest.approx([0.0, 3.0, 9.0])
    assert send_schedule(frame.clear(), 10.0) == []


def test_cli_replay_reports_and_refuses_bad_options(lake_settings):
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run(
        [FLEAD, "replay", "--start", "2004-02-29", "--device", "mote-02", "--max"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = lake_readings(lake_settings, start=datetime(2004, 2, 29).date(), devices=["mote-02"]).height
    assert f"{rows:,} readings of 1 devices" in ok.stdout

    both = subprocess.run(
        [FLEAD, "replay", "--speed", "10", "--max"], env=env, capture_output=True, text=True
    )
    assert both.returncode == 1 and "not both" in both.stdout
    empty = subprocess.run(
        [FLEAD, "replay", "--start", "2004-04-01"], env=env, capture_output=True, text=True, timeout=60
    )
    assert empty.returncode == 1 and "no readings in the lake" in empty.stdout
