"""Kafka through the flead client factories, against the real embedded broker."""

from __future__ import annotations

import uuid

from kafka.structs import TopicPartition

from flead.bus.clients import make_consumer, make_producer
from flead.bus.topics import ensure_topics
from flead_dagster_tests.helpers.bus import consume


def test_platform_topics_are_created_once_with_enough_partitions(settings):
    states = {t.name: t for t in ensure_topics(settings)}  # the fixture's `up` already created them
    assert not any(t.created for t in states.values())
    assert states[settings.topic_readings].partitions >= 8
    assert {settings.topic_anomalies, settings.topic_dlq, settings.topic_late} <= states.keys()

    extra = f"test.extra.{uuid.uuid4().hex[:8]}"
    assert ensure_topics(settings, {extra: 3})[0].created
    again = ensure_topics(settings, {extra: 3})[0]
    assert (again.created, again.partitions) == (False, 3)


def test_consumer_group_resumes_from_its_committed_offset(settings):
    topic, group = f"test.resume.{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, {topic: 4})
    producer = make_producer(settings)
    for i in range(6):
        producer.send(topic, key=f"device-{i % 3}".encode(), value=f"first-{i}".encode())
    producer.flush()

    first = make_consumer(settings, topic, group_id=group)
    assert first.config["session_timeout_ms"] == settings.kafka_session_timeout_ms == 6000
    seen = consume(first, 6)
    assert sorted(r.value for r in seen) == sorted(f"first-{i}".encode() for i in range(6))
    first.commit()
    committed = {p: first.committed(TopicPartition(topic, p)) for p in range(4)}
    first.close()
    assert sum(v or 0 for v in committed.values()) == 6

    for i in range(3):
        producer.send(topic, key=f"device-{i}".encode(), value=f"second-{i}".encode())
    producer.close()

    resumed = make_consumer(settings, topic, group_id=group)
    try:
        again = consume(resumed, 3)
    finally:
        resumed.close()
    assert sorted(r.value for r in again) == [b"second-0", b"second-1", b"second-2"]


def test_same_key_goes_to_the_same_partition_in_order(settings):
    topic = f"test.keys.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, {topic: 8})
    producer = make_producer(settings)
    sent = [producer.send(topic, key=b"mote-07", value=str(i).encode()).get(30) for i in range(20)]
    producer.close()
    assert len({m.partition for m in sent}) == 1
    assert [m.offset for m in sent] == sorted(m.offset for m in sent)


def test_kafka_python_checks_crcs_with_the_c_implementation():
    """kafka-python falls back to a pure-Python CRC-32C silently when `crc32c` is missing; that fallback
    took ~4x the bare consumer's time (benchmarks/stream.py: 20,403 -> 93,482 records/s with it)."""
    from crc32c import crc32c
    from kafka.record.util import calc_crc32c

    assert calc_crc32c.__defaults__ == (crc32c,)
    assert calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
