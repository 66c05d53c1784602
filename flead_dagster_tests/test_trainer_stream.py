"""The stream trainer as real processes against the real broker and MongoDB: dead letters and late
readings, kill -9 and restart, two processes in one group, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from flead.bus.clients import make_producer
from flead.bus.codec import encode_readings
from flead.bus.replay import replay
from flead.config import Settings
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
    mongo_db,
    no_leftover_trainers,  # noqa: F401 (fixture)
    offsets_total,
    paced_replay,
    read_all,
    settings_for,
    twin_envs,
    wait_until,
)


def heartbeat(settings: Settings, pid: int) -> dict | None:
    """The trainer's heartbeat document once it lists its partitions."""
    client, db = mongo_db(settings)
    try:
        beat = db[settings.collection_services].find_one({"pid": pid})
    finally:
        client.close()
    return beat if beat and beat["partitions"] == list(range(PARTITIONS)) else None


# --------------------------------------------------------------------------------------------- tests


def test_bad_records_go_to_the_dlq_late_ones_to_their_topic_and_the_good_ones_are_scored(
    services_env, tmp_path
):
    env = isolated_env(services_env, FLEAD_TRAINER_ALLOWED_LATENESS_S="60", FLEAD_MAX_MESSAGE_BYTES="4096")
    settings = settings_for(env)
    create_topics(settings)
    t0 = datetime(2004, 3, 1, tzinfo=UTC)
    good = pl.DataFrame(
        {
            "device_id": ["dev-a"] * 300,
            "ts": [t0 + timedelta(seconds=30 * i) for i in range(300)],
            "epoch": list(range(300)),
            "temperature": [20.0 + (i % 7) * 0.1 for i in range(300)],
            "humidity": [40.0] * 300,
            "light": [None] * 300,  # a missing measurement is not an error
            "voltage": [2.7] * 300,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    keys, values = encode_readings(good)
    latest = json.loads(values[-1])
    bad = {
        "not JSON": b"{this is not json",
        "wrong types": json.dumps({**latest, "values": {**latest["values"], "temperature": "hot"}}).encode(),
        "NaN": json.dumps({**latest, "values": {**latest["values"], "temperature": float("nan")}}).encode(),
        "missing fields": json.dumps({"values": {"temperature": 21.0}}).encode(),
        "oversized": json.dumps({**latest, "padding": "x" * 5000}).encode(),
        "unknown schema version": json.dumps({**latest, "schema_version": 99}).encode(),
    }
    late = json.dumps({**json.loads(values[3]), "epoch": 9003}).encode()  # 297 readings behind
    slightly_late = json.dumps({**json.loads(values[-2]), "epoch": 9298}).encode()  # within 60 s
    stream = list(zip(keys, values, strict=True))
    for i, value in enumerate(bad.values()):
        stream.insert(40 * (i + 1), (b"dev-a", value))
    stream += [(b"dev-a", late), (b"dev-a", slightly_late)]
    producer = make_producer(settings)
    sent = [producer.send(settings.topic_readings, key=k, value=v).get(10) for k, v in stream]
    producer.close()
    partition = sent[0].partition
    position = {value: s.offset for (_, value), s in zip(stream, sent, strict=True)}

    trainer = Trainer(env, tmp_path, "--flush-idle", "0.5")
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == len(stream) and h["buffered"] == 0,
        90,
        "every record consumed, scored and checkpointed",
    )
    assert health["counters"]["dlq"] == len(bad) and health["counters"]["late"] == 1
    assert health["counters"]["records_in"] == len(stream) and health["counters"]["scored"] == 301
    assert health["partitions"] == list(range(PARTITIONS)) and health["healthy"]
    wait_until(lambda: device_table(settings).get("dev-a") == (301, 0, 0, 1), 30, "device statistics")
    beat = wait_until(lambda: heartbeat(settings, trainer.process.pid), 30, "a heartbeat with partitions")
    assert beat["health_port"] == trainer.port and beat["host"] == socket.gethostname()
    assert beat["counters"]["records_in"] == len(stream) and beat["status"] == "running"
    assert trainer.stop() == 0, trainer.tail()  # SIGTERM: final checkpoint and a clean exit
    assert checkpoint_offsets(settings)[partition] == len(stream) == kafka_committed(settings)[partition]

    dead, late_side = (
        read_all(settings, topic, n)
        for topic, n in ((settings.topic_dlq, len(bad)), (settings.topic_late, 1))
    )
    by_value = {r.value: dict(r.headers) for r in dead + late_side}
    assert len(dead) == len(bad) and set(by_value) == {*bad.values(), late}  # original bytes kept
    assert [r.value for r in late_side] == [late]  # late readings have their own topic
    expected_reason = {
        "not JSON": "Invalid JSON",
        "wrong types": "temperature: Input should be a valid number",
        "NaN": "temperature: Input should be a finite number",
        "missing fields": "device_id: Field required",
        "oversized": "exceeds the 4096-byte limit",
        "unknown schema version": "unknown schema_version 99",
    }
    for what, value in bad.items():
        headers = by_value[value]
        assert expected_reason[what] in headers["flead.error"].decode(), (what, headers)
        assert headers["flead.source.partition"] == str(partition).encode()
        assert headers["flead.source.offset"] == str(position[value]).encode()
    assert by_value[late]["flead.error"].startswith(b"late: event time 2004-03-01T00:01:30")
    assert by_value[late]["flead.source.offset"] == str(position[late]).encode()


def assert_a_restart_equals_no_restart(
    services_env: dict,
    tmp_path,
    frame: pl.DataFrame,
    *args: str,
    replay_s: float,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> tuple[dict, dict]:
    """Two trainers of their own groups read the same stream: one uninterrupted, one killed (-9) after
    a checkpoint mid-stream and restarted. Their devices, anomaly events and scores must be equal
    (bit-identical); returns the uninterrupted one's device table and anomaly scores."""
    produced = dict(frame.group_by("device_id").len().iter_rows())
    total = frame.height
    uninterrupted, restarted = twin_envs(services_env, **(env or {}))
    settings_a, settings_b = settings_for(uninterrupted), settings_for(restarted)

    # partial chunks stay buffered (and checkpointed) instead of a time-dependent flush
    args = ("--flush-idle", "3600", *args)
    a = Trainer(uninterrupted, tmp_path, *args, name="a")
    b = Trainer(restarted, tmp_path, *args, name="b1")
    for t in (a, b):
        t.wait_for(lambda h: len(h["partitions"]) == PARTITIONS, 60, "partitions assigned")
    producer = paced_replay(settings_a, frame, seconds=replay_s)
    try:
        b.wait_for(
            lambda h: total * 0.2 < offsets_total(h, "checkpointed_offsets") < offsets_total(h),
            timeout_s,
            "a checkpoint, and progress after it",
        )
        b.kill()
        checkpointed = sum(v or 0 for v in checkpoint_offsets(settings_b).values())
        assert checkpointed < total  # mid-stream: the restart has work to do
        b = Trainer(restarted, tmp_path, *args, name="b2")
    finally:
        producer.join()
    for t in (a, b):
        t.wait_for(
            lambda h: offsets_total(h, "checkpointed_offsets") == total, timeout_s, "everything checkpointed"
        )
    b_counters = b.health()["counters"]
    assert a.stop() == 0 and b.stop() == 0, a.tail() + b.tail()

    assert b_counters["records_in"] == total - checkpointed  # resumed exactly at the checkpoint
    assert b_counters["devices_created"] == 0  # every device restored from its checkpointed state
    devices_a, devices_b = device_table(settings_a), device_table(settings_b)
    assert {d: r + buffered for d, (r, buffered, _, _) in devices_a.items()} == produced
    assert devices_b == devices_a  # readings, buffered, anomalies and late per device
    anomalies_a, anomalies_b = anomaly_scores(settings_a), anomaly_scores(settings_b)
    assert anomalies_b == anomalies_a  # the same events, bit-identical scores
    assert sum(n for _, _, n, _ in devices_a.values()) == len(anomalies_a)
    return devices_a, anomalies_a


def test_kill_9_and_restart_loses_and_double_counts_nothing(services_env, tmp_path):
    frame = fleet(tmp_path, devices=4, days=4, seed=7)
    _, anomalies = assert_a_restart_equals_no_restart(
        services_env, tmp_path, frame, replay_s=12, timeout_s=120
    )
    assert len(anomalies) >= 8


def many_devices(devices: int, readings: int) -> pl.DataFrame:
    """`devices` devices of `readings` readings 31 s apart, in event-time order; the 20th reading of
    every 250th device is a dead battery's 122 °C (an anomaly whatever the model says)."""
    d, i = np.repeat(np.arange(devices), readings), np.tile(np.arange(readings), devices)
    frame = pl.DataFrame({"d": d, "i": i}).with_columns(
        device_id=pl.format("dev-{}", pl.col("d").cast(pl.String).str.zfill(5)),
        ts=pl.lit(datetime(2004, 3, 1, tzinfo=UTC)) + pl.duration(seconds=pl.col("i") * 31),
        epoch=pl.col("i"),
        temperature=pl.when((pl.col("d") % 250 == 0) & (pl.col("i") == 20))
        .then(122.0)
        .otherwise(20.0 + pl.col("d") % 7 + 0.3 * (pl.col("i") / 5).sin()),
        humidity=40.0 + pl.col("d") % 5 + 0.2 * (pl.col("i") / 7).cos(),
        light=300.0 + pl.col("d") % 11,
        voltage=2.7 - 0.0005 * pl.col("i"),
    )
    return (
        frame.sort("ts", "device_id").drop("d", "i").with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    )


def test_kill_9_and_restart_at_5000_devices_with_a_training_cohort_smaller_than_the_fleet(
    services_env, tmp_path
):
    """The same at fleet scale, with the default training cohort (500 a process, 63 a partition, so most
    devices rest): 5,000 devices' state and buffer documents written, restored and resumed exactly.
    (Each device scores one chunk here: that a restored cohort admits the same devices later is
    `test_trainer_state.py`'s test of the cohort.)"""
    frame = many_devices(5000, 70)  # a chunk of 64 scored per device, 6 readings left waiting
    every = {"FLEAD_TRAINER_CHECKPOINT_RECORDS": "60000", "FLEAD_TRAINER_CHECKPOINT_SECONDS": "10"}
    devices, anomalies = assert_a_restart_equals_no_restart(
        services_env, tmp_path, frame, replay_s=20, timeout_s=240, env=every
    )
    assert len(devices) == 5000 and {buffered for _, buffered, _, _ in devices.values()} == {6}
    assert len(anomalies) >= 20


def test_two_processes_split_the_partitions_and_hand_them_over(services_env, tmp_path):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    frame = fleet(tmp_path, devices=6, days=2, seed=11)
    first, second = (
        frame.filter(pl.col("ts") < frame["ts"][0] + timedelta(days=1)),
        frame.filter(pl.col("ts") >= frame["ts"][0] + timedelta(days=1)),
    )
    trainers = [Trainer(env, tmp_path, "--flush-idle", "0.5", name=f"t{i}") for i in range(2)]

    def split(_: dict) -> bool:
        owned = [set((t.health() or {"partitions": []})["partitions"]) for t in trainers]
        return all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == set(range(PARTITIONS))

    trainers[0].wait_for(split, 90, "the partitions split between the two processes")
    replay(settings, first)

    def readings_stored(expected: pl.DataFrame) -> Callable[[], bool]:
        counts = dict(expected.group_by("device_id").len().iter_rows())
        return lambda: {d: r + b for d, (r, b, _, _) in device_table(settings).items()} == counts

    wait_until(readings_stored(first), 90, "the first day's readings in MongoDB")
    healths = [t.health() for t in trainers]
    owner = {p: t.process.pid for t, h in zip(trainers, healths, strict=True) for p in h["partitions"]}
    assert sum(h["counters"]["records_in"] for h in healths) == first.height  # nothing read twice
    client, db = mongo_db(settings)
    try:
        stats = list(db[settings.collection_devices].find())
        beats = {
            d["pid"]: set(d["partitions"])
            for d in db[settings.collection_services].find({"group": settings.consumer_group})
        }
        states = [
            s
            for d in db[settings.collection_checkpoints].find(
                {"kind": "partition", "group": settings.consumer_group}
            )
            for s in d["states"]
        ]
    finally:
        client.close()
    assert beats == {t.process.pid: set(h["partitions"]) for t, h in zip(trainers, healths, strict=True)}
    for doc in stats:  # each device belongs to the process that owns its partition
        assert doc["trainer"].endswith(f":{owner[doc['partition']]}")
    assert Counter(s.split("|")[3] for s in states) == Counter({d: 1 for d in first["device_id"].unique()})

    assert trainers[0].stop() == 0, trainers[0].tail()  # its partitions move to the other process
    survivor = trainers[1]
    created = healths[1]["counters"]["devices_created"]
    survivor.wait_for(
        lambda h: h["partitions"] == list(range(PARTITIONS)), 60, "the survivor owning everything"
    )
    replay(settings, second)
    wait_until(readings_stored(frame), 90, "both days' readings in MongoDB")
    # the devices it took over continue from the checkpoint their previous owner wrote on SIGTERM
    assert survivor.health()["counters"]["devices_created"] == created
    assert survivor.stop() == 0, survivor.tail()
    assert all(d["trainer"].endswith(f":{survivor.process.pid}") for d in db_devices(settings))


def db_devices(settings: Settings) -> list[dict]:
    client, db = mongo_db(settings)
    try:
        return list(db[settings.collection_devices].find())
    finally:
        client.close()
