"""Hostile messages at the Kafka edge of the stream trainer, against the real broker, MongoDB and
trainer process: wrong JSON types, readings without their device's key or with another device's key,
event times far in the future, and a far-future watermark left in a checkpoint by an older trainer.

Every hostile record is followed by good readings on the same partition. The trainer must keep
running, each hostile record must be in the dead-letter topic with a reason naming what is wrong, the
good readings after it must be trained on, and every device must keep one state and true statistics.
One trainer run serves all the cases (the module's `edge_run`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from flead.bus.clients import make_producer
from flead.config import Settings
from flead.fleet import INTEL_LAB
from flead.schema import MEASUREMENTS
from flead_dagster_tests.helpers.trainer import (
    PARTITIONS,
    Trainer,
    create_topics,
    device_table,
    isolated_env,
    mongo_db,
    offsets_total,
    read_all,
    settings_for,
)
from services.stream_trainer.intake import Watermarks, take_in

PARTITION = 0  # where the hostile records and the readings after them go (unless a case says otherwise)
T0 = datetime(2004, 3, 1, tzinfo=UTC)  # historical, as a replay publishes it
GOOD_AFTER = 20  # good readings of `dev-a` after each hostile record
UNKEYED = 128  # readings of `dev-u` without a key, spread over every partition
FAR_FUTURE = "2999-01-01T00:00:00Z"
A_DAY_AHEAD = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

# name -> (fields replacing those of a good `dev-a` reading, the reason the dead letter must give)
WRONG_TYPES = {
    "temperature as a string": (
        {"temperature": "21.5"},
        "values.temperature: Input should be a valid number",
    ),
    "temperature as a boolean": ({"temperature": True}, "values.temperature: Input should be a valid number"),
    "a value the fleet schema lacks": ({"pressure": 1.0}, "values ['pressure'] are not in the fleet schema"),
    "another fleet's reading": (
        {"fleet": "plant@1"},
        "fleet 'plant@1' is not this deployment's fleet schema",
    ),
    "epoch as a string": ({"epoch": "7"}, "epoch: Input should be a valid integer"),
    "epoch as a boolean": ({"epoch": True}, "epoch: Input should be a valid integer"),
    "epoch as a fraction": ({"epoch": 7.5}, "epoch: Input should be a valid integer"),
    "epoch beyond 64 bits": ({"epoch": 2**70}, "epoch: Input should be less than or equal to"),
    "schema_version as a string": (
        {"schema_version": "2"},
        "schema_version: Input should be a valid integer",
    ),
    "schema_version as a boolean": (
        {"schema_version": True},
        "schema_version: Input should be a valid integer",
    ),
    "ts as an integer": ({"ts": 1078142400}, "ts: Value error, ts must be an ISO-8601"),
    "ts as digits in a string": ({"ts": "1078142400"}, "ts: Value error, ts must be an ISO-8601"),
    "ts before year 1 in UTC": ({"ts": "0001-01-01T00:00:00+01:00"}, "ts: Value error, ts is out of range"),
    "ts after year 9999 in UTC": ({"ts": "9999-12-31T23:59:59-01:00"}, "ts: Value error, ts is out of range"),
    "ts far in the future": ({"ts": FAR_FUTURE}, "ahead of the wall clock"),
    "ts a day ahead": ({"ts": A_DAY_AHEAD}, "ahead of the wall clock"),
    "device_id of another device than the key": (
        {"device_id": "dev-m"},
        "key b'dev-a' does not match device_id 'dev-m'",
    ),
}


@dataclass
class Sent:
    """What the test produced, in order, and what the trainer's outputs must account for."""

    messages: int = 0
    index: int = 0  # event time and epoch of the next reading: T0 + 30 s * index
    good: Counter = field(default_factory=Counter)  # device -> readings that must be trained on
    hostile: dict[bytes, tuple[str, str, int]] = field(
        default_factory=dict
    )  # value -> (case, reason, partition)


def reading(device_id: str, index: int) -> dict:
    whole = index % 5 == 0  # integer JSON numbers are valid measurements
    return {
        "schema_version": 2,
        "fleet": "intel_lab@1",
        "device_id": device_id,
        "ts": (T0 + timedelta(seconds=30 * index)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "epoch": index,
        "values": {
            "temperature": 21 if whole else 20.0 + (index % 7) * 0.1,
            "humidity": 40 if whole else 40.5,
            "light": None,
            "voltage": 2.7,
        },
    }


def replaced(message: dict, fields: dict) -> dict:
    """The message with `fields` replaced: top-level keys, or values of the fleet schema (any name
    that is not a top-level key of a reading)."""
    out = {**message, "values": dict(message["values"])}
    for name, value in fields.items():
        (out if name in message else out["values"])[name] = value
    return out


class Stream:
    def __init__(self, settings: Settings) -> None:
        self.settings, self.sent = settings, Sent()
        self.producer = make_producer(settings)

    def good(self, device_id: str, n: int, partition: int = PARTITION) -> None:
        for _ in range(n):
            self._send(
                device_id.encode(), json.dumps(reading(device_id, self.sent.index)).encode(), partition
            )
            self.sent.good[device_id] += 1
            self.sent.index += 1

    def hostile(self, case: str, key: bytes | None, value: bytes, reason: str, partition: int = PARTITION):
        assert value not in self.sent.hostile, case  # each dead letter is told apart by its bytes
        self._send(key, value, partition)
        self.sent.hostile[value] = (case, reason, partition)

    def _send(self, key: bytes | None, value: bytes, partition: int) -> None:
        self.producer.send(self.settings.topic_readings, key=key, value=value, partition=partition).get(10)
        self.sent.messages += 1

    def close(self) -> None:
        self.producer.close()


@dataclass
class EdgeRun:
    env: dict[str, str]
    settings: Settings
    sent: Sent
    trainer: Trainer
    exit_code: int | None  # None: still running when the snapshot below was taken
    health: dict
    dead_letters: dict[bytes, dict[str, bytes]]  # value -> headers
    devices: dict[str, tuple]
    states: Counter  # device -> state documents its partition's checkpoint references


def hostile_stream(settings: Settings) -> Sent:
    stream = Stream(settings)
    try:
        stream.good("dev-a", GOOD_AFTER)
        for case, (fields, reason) in WRONG_TYPES.items():
            message = replaced(reading("dev-a", stream.sent.index), fields)
            stream.sent.index += 1
            stream.hostile(case, b"dev-a", json.dumps(message).encode(), reason)
            stream.good("dev-a", GOOD_AFTER)
        stream.hostile(
            "no key",
            None,
            json.dumps(reading("dev-a", stream.sent.index)).encode(),
            "key None does not match",
        )
        stream.sent.index += 1
        stream.good("dev-a", GOOD_AFTER)
        for i in range(UNKEYED):  # one device's unkeyed readings, over every partition
            value = json.dumps(reading("dev-u", stream.sent.index)).encode()
            stream.hostile("no key", None, value, "key None does not match device_id 'dev-u'", i % PARTITIONS)
            stream.sent.index += 1
        stream.good("dev-u", 100)
        for p in range(1, PARTITIONS):
            stream.good(f"dev-p{p}", 70, partition=p)
    finally:
        stream.close()
    return stream.sent


def all_checkpointed(sent: Sent):
    return lambda h: offsets_total(h, "checkpointed_offsets") == sent.messages and h["buffered"] == 0


def checkpointed_states(settings: Settings) -> Counter:
    client, db = mongo_db(settings)
    try:
        found = db[settings.collection_checkpoints].find(
            {"kind": "partition", "group": settings.consumer_group}
        )
        return Counter(state.split("|")[3] for d in found for state in d["states"])
    finally:
        client.close()


@pytest.fixture(scope="module")
def edge_run(services_env, tmp_path_factory) -> Iterator[EdgeRun]:
    env = isolated_env(services_env, FLEAD_TRAINER_ALLOWED_LATENESS_S="60")
    settings = settings_for(env)
    create_topics(settings)
    sent = hostile_stream(settings)
    trainer = Trainer(env, tmp_path_factory.mktemp("edge"), "--flush-idle", "0.5")
    try:
        health = trainer.wait_for(all_checkpointed(sent), 120, "every record consumed and checkpointed")
        letters = read_all(settings, settings.topic_dlq, len(sent.hostile))
        yield EdgeRun(
            env=env,
            settings=settings,
            sent=sent,
            trainer=trainer,
            exit_code=trainer.process.poll(),
            health=health,
            dead_letters={r.value: {k: v for k, v in r.headers} for r in letters},
            devices=device_table(settings),
            states=checkpointed_states(settings),
        )
    finally:
        if trainer.process.poll() is None:
            trainer.kill()


def test_the_trainer_survives_every_hostile_record(edge_run):
    assert edge_run.exit_code is None and edge_run.health["status"] == "running", edge_run.trainer.tail()
    counters = edge_run.health["counters"]
    assert counters["records_in"] == edge_run.sent.messages
    assert counters["dlq"] == len(edge_run.sent.hostile) and counters["late"] == 0
    assert counters["scored"] == sum(edge_run.sent.good.values())


@pytest.mark.parametrize("case", [*WRONG_TYPES, "no key"])
def test_each_hostile_record_is_dead_lettered_with_its_reason(edge_run, case):
    letters = {
        v: h for v, h in edge_run.dead_letters.items() if edge_run.sent.hostile.get(v, ("",))[0] == case
    }
    expected = [v for v, (name, _, _) in edge_run.sent.hostile.items() if name == case]
    assert sorted(letters) == sorted(expected)  # the original bytes, each once
    for value, headers in letters.items():
        _, reason, partition = edge_run.sent.hostile[value]
        assert reason in headers["flead.error"].decode(), (value[:80], headers["flead.error"])
        assert headers["flead.source.partition"] == str(partition).encode()


def test_nothing_else_is_dead_lettered(edge_run):
    assert set(edge_run.dead_letters) == set(edge_run.sent.hostile)


def test_the_good_readings_after_each_hostile_record_are_trained_on(edge_run):
    trained = {
        d: (readings + buffered, late) for d, (readings, buffered, _, late) in edge_run.devices.items()
    }
    assert trained == {d: (n, 0) for d, n in edge_run.sent.good.items()}  # and no device from a bad body


def test_every_device_has_one_state(edge_run):
    assert edge_run.states == Counter({d: 1 for d in edge_run.sent.good})


def test_a_far_future_watermark_in_an_old_checkpoint_does_not_silence_the_partition(edge_run, tmp_path):
    """An older trainer checkpointed the watermark a far-future reading had moved; after the upgrade the
    partition's readings are trained on again (the restored watermark is bounded too)."""
    settings, sent = edge_run.settings, edge_run.sent
    if edge_run.trainer.process.poll() is None:
        assert edge_run.trainer.stop() == 0, edge_run.trainer.tail()
    client, db = mongo_db(settings)
    try:
        poisoned = db[settings.collection_checkpoints].update_one(
            {"kind": "partition", "group": settings.consumer_group, "partition": PARTITION},
            {"$set": {"max_event_us": int(datetime(2999, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)}},
        )
    finally:
        client.close()
    assert poisoned.matched_count == 1

    before = sent.messages
    trainer = Trainer(edge_run.env, tmp_path, "--flush-idle", "0.5", name="upgraded")
    try:
        trainer.wait_for(lambda h: len(h["partitions"]) == PARTITIONS, 90, "partitions assigned")
        stream = Stream(settings)
        stream.sent = sent = Sent(messages=sent.messages, index=sent.index, good=Counter(sent.good))
        try:
            stream.good("dev-a", 100)
        finally:
            stream.close()
        health = trainer.wait_for(all_checkpointed(sent), 90, "the new readings consumed and checkpointed")
        assert health["counters"]["records_in"] == sent.messages - before
        assert health["counters"]["late"] == 0 and health["counters"]["dlq"] == 0
        readings, buffered, _, late = device_table(settings)["dev-a"]
        assert (readings + buffered, late) == (sent.good["dev-a"], 0)
        assert trainer.stop() == 0, trainer.tail()
    finally:
        if trainer.process.poll() is None:
            trainer.kill()


# ------------------------------------------------------------ event-time bound, in process (a fixed clock)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def consumer_records(messages: list[dict]) -> dict[TopicPartition, list[ConsumerRecord]]:
    values = [json.dumps(m).encode() for m in messages]
    records = [
        ConsumerRecord("t", 0, None, i, 0, 0, m["device_id"].encode(), v, [], None, 5, len(v), -1)
        for i, (m, v) in enumerate(zip(messages, values, strict=True))
    ]
    return {TopicPartition("t", 0): records}


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_reading_beyond_the_allowed_skew_is_rejected_and_never_moves_the_watermark():
    watermarks = Watermarks(60.0, max_future_s=300.0, clock=NOW.timestamp)
    stream = [reading("dev-a", i) for i in range(3)]
    stream.insert(1, {**reading("dev-a", 9), "ts": iso(NOW + timedelta(seconds=301))})
    stream.insert(2, {**reading("dev-a", 10), "ts": FAR_FUTURE})
    intake = take_in(
        consumer_records(stream),
        max_bytes=65536,
        watermarks=watermarks,
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    assert [r.offset for r in intake.invalid] == [1, 2] and not intake.late
    assert "301 s ahead of the wall clock 2026-01-01T00:00:00.000000Z" in intake.invalid[0].reason
    assert "more than the allowed 300 s (FLEAD_TRAINER_MAX_FUTURE_S)" in intake.invalid[1].reason
    assert sum(len(run.rows) for run in intake.runs) == 3  # the readings of 2004 around them
    assert watermarks.max_event_us == {0: int((T0 + timedelta(seconds=60)).timestamp() * 1_000_000)}

    within = {**reading("dev-a", 11), "ts": iso(NOW + timedelta(seconds=299))}  # a clock a little fast
    intake = take_in(
        consumer_records([within]),
        max_bytes=65536,
        watermarks=watermarks,
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    assert not intake.invalid and len(intake.runs) == 1


def test_a_checkpointed_latest_event_time_beyond_the_skew_is_discarded_on_restore():
    watermarks = Watermarks(60.0, max_future_s=300.0, clock=NOW.timestamp)
    near = int((NOW + timedelta(seconds=299)).timestamp() * 1_000_000)
    watermarks.restore(0, int(datetime(2999, 1, 1, tzinfo=UTC).timestamp() * 1_000_000))
    watermarks.restore(1, near)
    assert watermarks.max_event_us == {1: near}
    intake = take_in(
        consumer_records([reading("dev-a", 0)]),
        max_bytes=65536,
        watermarks=watermarks,
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    assert not intake.late and len(intake.runs) == 1  # 2004 is on time again on partition 0
