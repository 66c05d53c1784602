"""Hostile cases for the stream trainer's recovery, against the real broker, MongoDB and global API: a
message too large to dead-letter as it is, device states that start over (update ids), readings
microseconds apart, topics recreated under surviving checkpoints, and a main job whose trainer makes
no progress."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import polars as pl
from dagster import materialize
from kafka.structs import TopicPartition

from flead.bus import lag
from flead.bus.clients import make_admin, make_producer
from flead.bus.codec import Rejected, encode_readings
from flead.bus.topics import ensure_topics, topic_id
from flead.config import Settings
from flead.datasets import pipeline
from flead.fleet import INTEL_LAB
from flead.model.config import TrainConfig
from flead.schema import MEASUREMENTS
from flead_dagster.defs.assets.stream import stream_replay
from flead_dagster.defs.resources import default_resources
from flead_dagster_tests.helpers.exchange import OPTIONS, api, feed  # noqa: F401 (fixture)
from flead_dagster_tests.helpers.readings import SMALL, readings, records
from flead_dagster_tests.helpers.trainer import (
    PARTITIONS,
    Trainer,
    create_topics,
    device_table,
    isolated_env,
    mongo_db,
    no_leftover_trainers,  # noqa: F401 (autouse: kills the trainers of a failed test)
    offsets_total,
    read_all,
    settings_for,
    wait_until,
)
from services.stream_trainer.checkpoints import PartitionRecord, stale_reason
from services.stream_trainer.devices import Federation
from services.stream_trainer.exchange import InProcessExchange
from services.stream_trainer.exchange_http import HttpExchange
from services.stream_trainer.health import Counters
from services.stream_trainer.intake import Watermarks, take_in
from services.stream_trainer.options import TrainerOptions
from services.stream_trainer.outputs import Outputs
from services.stream_trainer.state_codec import slot_document, slot_from_document

T0 = datetime(2004, 3, 1, tzinfo=UTC)
BIG = b'{"x":"' + b"x" * 2_000_000 + b'"}'  # the tester's probe: 2 MB, over the producer's 1 MB limit


def good_readings(device: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    frame = pl.DataFrame(
        {
            "device_id": [device] * n,
            "ts": [T0 + timedelta(seconds=30 * (start + i)) for i in range(n)],
            "epoch": list(range(start, start + n)),
            "temperature": [20.0 + (i % 7) * 0.1 for i in range(n)],
            "humidity": [40.0] * n,
            "light": [100.0] * n,
            "voltage": [2.7] * n,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    keys, values = encode_readings(frame)
    return list(zip(keys, values, strict=True))


def test_a_message_too_large_to_dead_letter_is_stored_truncated_and_the_trainer_goes_on(
    services_env, tmp_path
):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    before, after = good_readings("dev-a", 128), good_readings("dev-a", 128, start=128)
    producer = make_producer(settings, max_request_size=8 << 20)
    partition = producer.send(settings.topic_readings, key=before[0][0], value=before[0][1]).get(10).partition
    for key, value in before[1:]:
        producer.send(settings.topic_readings, key=key, value=value, partition=partition)
    big = producer.send(settings.topic_readings, key=b"probe-09", value=BIG, partition=partition).get(30)
    for key, value in after:
        producer.send(settings.topic_readings, key=key, value=value, partition=partition)
    producer.flush(30)
    producer.close()
    total = len(before) + 1 + len(after)

    trainer = Trainer(env, tmp_path)
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == total,
        90,
        "every record, the big one included, consumed and checkpointed",
    )
    counters = health["counters"]
    assert counters["scored"] == len(before) + len(after)  # the good readings on both sides trained
    assert counters["dlq"] == 1 and counters["dlq_truncated"] == 1 and health["healthy"]

    # killed after its checkpoint and restarted: the big record is not read (nor dead-lettered) again
    trainer.kill()
    again = Trainer(env, tmp_path, name="restarted")
    again.wait_for(
        lambda h: len(h["partitions"]) > 0 and offsets_total(h, "checkpointed_offsets") == total,
        90,
        "the restarted trainer resumed from the checkpoint",
    )
    assert again.stop() == 0, again.tail()
    assert lag.end_offsets(settings, settings.topic_dlq) == {0: 1}, "exactly one dead letter"
    [letter] = read_all(settings, settings.topic_dlq, 1)
    headers = dict(letter.headers)
    assert headers["flead.truncated"] == b"true"
    assert headers["flead.original.value_size"] == str(len(BIG)).encode()
    assert headers["flead.source.offset"] == str(big.offset).encode()
    assert headers["flead.source.partition"] == str(partition).encode()
    assert b"exceeds the 65536-byte limit" in headers["flead.error"]
    assert b"dead-letter limit" in headers["flead.truncated.reason"]
    assert letter.value == BIG[: settings.max_message_bytes]  # a bounded prefix of the original


def test_device_states_that_start_over_never_reuse_an_update_id(api):  # noqa: F811 (fixture)
    settings, _servers = api
    exchange = HttpExchange(settings, OPTIONS)
    assert exchange.open(lambda: False)
    try:
        fed = Federation(settings, OPTIONS, exchange, Counters())
        for seed in (1, 2):  # the same device, its trainer state new each time (lost or reset)
            slots: dict = {}
            feed(fed, slots, "dev-a", 256, seed=seed)
        assert exchange.flush(30), exchange.stats()
        stats = exchange.stats()
        assert stats["duplicate"] == 0, "an update of a new state was taken for one already received"
        assert stats["pushed"] >= 4 and stats["delivered"] == stats["pushed"], stats
    finally:
        exchange.close()
    client, db = mongo_db(settings)
    try:
        received = [
            d["update_id"] for d in db[settings.collection_local_updates].find({"device_id": "dev-a"})
        ]
    finally:
        client.close()
    assert len(received) == stats["pushed"] == len(set(received))

    # a restored state continues its own sequence under its own epoch
    slot = slots["dev-a"]
    document = slot_document(slot, state_id="s", owner={"partition": 0}, adopted_digest=None)
    restored, _ = slot_from_document(document, adopted=lambda _d: None, push_every=128)
    assert (restored.client.epoch, restored.client.sequence) == (slot.client.epoch, slot.client.sequence)


def test_anomalies_171_microseconds_apart_are_two_documents(settings):
    options = TrainerOptions(model=SMALL, train=TrainConfig(warmup=100, batch_size=2))
    fed = Federation(settings, options, InProcessExchange(settings, SMALL), Counters())
    device = f"dev-{uuid.uuid4().hex[:8]}"
    frame = readings(device, 2).with_columns(
        pl.Series("ts", [T0, T0 + timedelta(microseconds=171)]).cast(pl.Datetime("us", "UTC")),
        pl.lit(150.0).alias("temperature"),  # beyond what the sensor can report: always an anomaly
    )
    tp = TopicPartition("t", 0)
    intake = take_in(
        {tp: records(frame)},
        max_bytes=65536,
        watermarks=Watermarks(3600),
        columns=MEASUREMENTS,
        fleet=INTEL_LAB,
    )
    [run] = intake.runs
    slot = fed.new_slot(device, 0)
    slot.receive(run.rows, run.max_event_us)
    chunk = slot.score(slot.pending.take(2))
    assert chunk.is_anomaly.all()
    client, db = mongo_db(settings)
    producer = make_producer(settings)
    collection = db[settings.collection_anomalies]
    outputs = Outputs(settings, producer, db, Counters(), "test")
    try:
        for _ in range(2):  # written twice (a replay): still two documents
            outputs.anomaly_events(slot, chunk)
            outputs.anomalies.flush()
            outputs.events.flush()
        documents = list(collection.find({"device_id": device}).sort("ts_us", 1))
        epoch_us = int(T0.timestamp() * 1_000_000)
        assert [d["ts_us"] for d in documents] == [epoch_us, epoch_us + 171]
        assert len({d["_id"] for d in documents}) == 2
        # the BSON date, for queries, holds milliseconds: the same for both
        assert {d["ts"].replace(tzinfo=None) for d in documents} == {T0.replace(tzinfo=None)}
        assert [json.loads(json.dumps(d["values"]))["temperature"] for d in documents] == [150.0, 150.0]
    finally:
        collection.delete_many({"device_id": device})
        outputs.close()
        producer.close()
        client.close()


def recreate_topic(settings, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again, empty (as a memory-only broker's restart does)."""
    before = topic_id(settings, topic)
    admin = make_admin(settings)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    wait_until(lambda: topic_id(settings, topic) is None, 30, f"{topic} deleted")
    ensure_topics(settings, {topic: partitions})
    after = wait_until(lambda: topic_id(settings, topic), 30, f"{topic} created again")
    assert after != before and lag.end_offsets(settings, topic) == dict.fromkeys(range(partitions), 0)


def produce(settings, stream: dict[int, list[tuple[bytes, bytes]]]) -> None:
    producer = make_producer(settings)
    for partition, messages in stream.items():
        for key, value in messages:
            producer.send(settings.topic_readings, key=key, value=value, partition=partition)
    producer.flush(30)
    producer.close()


def test_checkpoints_of_a_recreated_topic_are_reset_and_every_new_reading_is_trained(services_env, tmp_path):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    produce(settings, {0: good_readings("dev-a", 256), 1: good_readings("dev-b", 256)})
    first = Trainer(env, tmp_path, name="first")
    first.wait_for(lambda h: offsets_total(h, "checkpointed_offsets") == 512, 90, "the first topic trained")
    assert first.stop() == 0, first.tail()

    # the broker loses its topics; MongoDB keeps the checkpoints (offsets 256 and 256)
    recreate_topic(settings, settings.topic_readings, PARTITIONS)
    # partition 0 gets more readings than before (only the topic id tells), partition 1 fewer
    produce(
        settings, {0: good_readings("dev-a", 384, start=1000), 1: good_readings("dev-b", 128, start=1000)}
    )
    second = Trainer(env, tmp_path, name="second")
    health = second.wait_for(
        lambda h: h["checkpointed_offsets"].get("0") == 384 and h["checkpointed_offsets"].get("1") == 128,
        90,
        "every reading of the new topic trained and checkpointed",
    )
    assert health["counters"]["scored"] == 384 + 128 and health["counters"]["partition_resets"] == 2
    resets = {r["partition"]: r for r in health["partition_resets"]}
    assert sorted(resets) == [0, 1] and all(r["offset_before"] == 256 for r in resets.values())
    assert "the topic was recreated" in resets[0]["reason"]
    assert "discarded" in second.log.read_text()
    wait_until(
        lambda: {d: t[0] for d, t in device_table(settings).items()} == {"dev-a": 384, "dev-b": 128},
        30,
        "device statistics of the new states only",
    )
    client, db = mongo_db(settings)
    try:
        found = db[settings.collection_checkpoints].find({"kind": "partition", "partition": {"$in": [0, 1]}})
        assert all(d["topic_id"] == topic_id(settings, settings.topic_readings) for d in found)
    finally:
        client.close()
    assert second.stop() == 0, second.tail()


def test_stream_replay_fails_fast_when_the_trainer_makes_no_progress(services_env, tmp_path, monkeypatch):
    env = isolated_env(services_env, FLEAD_HOME=str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    raw = pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(2, 1, 3))
    pipeline.stage(raw, settings)
    [day] = pipeline.dataset_days(settings)[:1]
    pipeline.write_lake_days(settings, [day])
    create_topics(settings)
    # no trainer reads the topic: nothing is ever committed
    result = materialize(
        [stream_replay],
        partition_key=day.isoformat(),
        resources=default_resources(settings),
        run_config={"ops": {"stream_replay": {"config": {"stall_timeout_s": 2, "wait_timeout_s": 600}}}},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description or str(failure.step_failure_data.error)
    assert "made no progress" in message and settings.consumer_group in message, message
    assert "are not trained" in message


def test_a_checkpoint_is_stale_only_when_the_topic_tells_so():
    def record(offset, topic_id="id-1"):
        return PartitionRecord(0, 1, 1, offset, None, (), topic_id)

    assert stale_reason(record(None), "id-2", (0, 0)) is None  # nothing checkpointed yet
    assert stale_reason(record(500), "id-1", (0, 600)) is None
    assert "recreated" in stale_reason(record(500), "id-2", (0, 900))  # even with more records now
    # no topic ids (a legacy checkpoint, or a broker without them): only an empty partition tells
    assert "empty partition" in stale_reason(record(500, None), "id-2", (0, 0))
    assert "empty partition" in stale_reason(record(500, "id-1"), None, (0, 0))
    # a broker may report an end short of the records it holds (Tansu: its last batch's base + 1)
    assert stale_reason(record(500, None), None, (0, 430)) is None
    assert stale_reason(record(500, None), None, (500, 500)) is None  # all expired, offsets kept
    assert stale_reason(record(500), None, None) is None  # Kafka could not be asked


def test_a_dead_letter_kafka_refuses_is_resent_truncated_then_dropped_never_retried_for_ever(settings):
    topic = f"test.dlq.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, {topic: 1})
    dlq_settings = settings.model_copy(update={"topic_dlq": topic})
    producer = make_producer(settings, max_request_size=4000)  # whole values up to 2000 bytes
    client, db = mongo_db(settings)
    counters = Counters()
    outputs = Outputs(dlq_settings, producer, db, counters, "test")
    try:
        # each fits the value limit, but with its long reason is more than the producer sends
        fits_truncated = Rejected("src", 0, 7, b"dev-a", b"a" * 1900, "r" * 2500)
        never_fits = Rejected("src", 0, 8, b"dev-a", b"b" * 1900, "r" * 4096)
        outputs.dead_letters([fits_truncated, never_fits])
        outputs.kafka.flush(timeout_s=10)  # returns: nothing left to retry
        assert counters.get("dlq_truncated") == 2 and counters.get("dlq_undeliverable") == 1
        assert lag.end_offsets(settings, topic) == {0: 1}
        [letter] = read_all(settings, topic, 1)
        headers = dict(letter.headers)
        assert letter.value == b"a" * 1024 and headers["flead.source.offset"] == b"7"
        assert headers["flead.original.value_size"] == b"1900"
        assert headers["flead.truncated.reason"].startswith(b"refused by Kafka: MessageSizeTooLargeError")
    finally:
        outputs.close()
        producer.close()
        client.close()


def test_a_topic_recreated_under_a_running_trainer_is_read_again_from_its_start(services_env, tmp_path):
    env = isolated_env(services_env)
    settings = settings_for(env)
    create_topics(settings)
    produce(settings, {0: good_readings("dev-a", 256)})
    trainer = Trainer(env, tmp_path, name="live")
    trainer.wait_for(lambda h: offsets_total(h, "checkpointed_offsets") == 256, 90, "the first topic trained")
    recreate_topic(settings, settings.topic_readings, PARTITIONS)  # no restart, perhaps no rebalance
    # fewer readings than before: read from the old position, the new topic would give nothing
    produce(settings, {0: good_readings("dev-a", 128, start=1000)})
    health = trainer.wait_for(
        lambda h: h["counters"]["scored"] == 256 + 128 and h["checkpointed_offsets"].get("0") == 128,
        90,
        "the new topic read from its start",
    )
    assert health["counters"]["partition_resets"] >= 1
    assert "recreated while it was read" in health["partition_resets"][-1]["reason"]
    wait_until(lambda: device_table(settings).get("dev-a", (0,))[0] == 128, 30, "the new state's statistics")
    assert trainer.stop() == 0, trainer.tail()
