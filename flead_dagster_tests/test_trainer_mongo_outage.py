"""MongoDB stopped for ~10 s under a running stream trainer (a private broker and MongoDB pair, so the
shared one stays up): the trainer backs off and retries, commits no offset it could not checkpoint,
and once MongoDB is back its outputs are complete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from flead.local.services import LocalServices
from flead_dagster_tests.helpers.services import service_env
from flead_dagster_tests.helpers.trainer import (
    PARTITIONS,
    Trainer,
    anomaly_scores,
    checkpoint_offsets,
    create_topics,
    device_table,
    fleet,
    isolated_env,
    kafka_committed,
    no_leftover_trainers,
    offsets_total,
    paced_replay,
    settings_for,
    wait_until,
)

OUTAGE_S = 10.0
__all__ = ["no_leftover_trainers"]  # the autouse fixture: no trainer outlives a failed test


@pytest.fixture
def private_services(tmp_path: Path):
    env = service_env(tmp_path / "private-home")
    services = LocalServices(settings_for(env))
    services.up()
    try:
        yield env, services
    finally:
        services.down()


def stop_mongodb(services: LocalServices) -> None:
    pid = json.loads(services.pid_file("mongodb").read_text())["pid"]
    process = psutil.Process(pid)
    process.terminate()
    process.wait(30)


def test_mongodb_outage_is_retried_and_never_commits_what_was_not_checkpointed(private_services, tmp_path):
    base, services = private_services
    env = isolated_env(base)
    settings = settings_for(env)
    create_topics(settings)
    frame = fleet(tmp_path, devices=4, days=3, seed=3)
    produced = dict(frame.group_by("device_id").len().iter_rows())
    trainer = Trainer(env, tmp_path, "--flush-idle", "0.5")
    trainer.wait_for(lambda h: len(h["partitions"]) == PARTITIONS, 60, "partitions assigned")
    producer = paced_replay(settings, frame, seconds=20)
    try:
        trainer.wait_for(
            lambda h: offsets_total(h, "checkpointed_offsets") > frame.height * 0.15, 60, "a few checkpoints"
        )
        stop_mongodb(services)
        stopped = time.monotonic()
        health = trainer.wait_for(
            lambda h: not h["mongo_ok"] and h["counters"]["checkpoint_failures"] > 0,
            30,
            "the trainer noticing the outage",
        )
        assert not health["healthy"] and health["status"] == "running"
        before = kafka_committed(settings)
        assert sum(v or 0 for v in before.values()) == offsets_total(health, "checkpointed_offsets")
        while time.monotonic() - stopped < OUTAGE_S:  # hold the outage, watching the commits
            assert kafka_committed(settings) == before  # no checkpoint, no commit
            time.sleep(0.5)  # sampling interval while MongoDB is down
        assert trainer.process.poll() is None  # still running, retrying with backoff
        services.up()
    finally:
        producer.join()

    final = trainer.wait_for(
        lambda h: (
            h["healthy"] and offsets_total(h, "checkpointed_offsets") == frame.height and h["buffered"] == 0
        ),
        120,
        "everything checkpointed after MongoDB came back",
    )
    assert final["counters"]["mongo_errors"] > 0 and final["counters"]["records_in"] == frame.height
    wait_until(
        lambda: {d: r for d, (r, _, _, _) in device_table(settings).items()} == produced,
        30,
        "every reading counted in MongoDB",
    )
    assert trainer.stop() == 0, trainer.tail()
    assert len(anomaly_scores(settings)) == trainer_anomalies(final) > 0  # none lost while MongoDB was away
    assert kafka_committed(settings) == checkpoint_offsets(settings)


def trainer_anomalies(health: dict) -> int:
    return health["counters"]["anomalies"]
