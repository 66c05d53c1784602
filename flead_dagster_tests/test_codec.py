"""Validation of reading messages at the Kafka edge, and dead letters on the real broker."""

from __future__ import annotations

import json
import uuid

from flead.bus.clients import make_consumer, make_producer
from flead.bus.codec import decode_batch
from flead.bus.dlq import send_dead_letters
from flead.bus.topics import ensure_topics
from flead_dagster_tests.test_bus import consume

GOOD = {
    "schema_version": 1,
    "device_id": "mote-01",
    "ts": "2004-02-28T00:58:46.002832Z",
    "epoch": 2,
    "temperature": 19.7,
    "humidity": 37.0,
    "light": 71.76,
    "voltage": 2.69,
}
BAD = {
    b"not json": "Invalid JSON",
    json.dumps({**GOOD, "schema_version": 9}).encode(): "unknown schema_version 9",
    json.dumps({**GOOD, "temperature": "hot"}).encode(): "temperature: Input should be a valid number",
    json.dumps(GOOD).replace("19.7", "NaN").encode(): "temperature: Input should be a finite number",
    json.dumps({k: v for k, v in GOOD.items() if k != "ts"}).encode(): "ts: Field required",
    json.dumps({**GOOD, "device_id": "../etc/passwd"}).encode(): "device_id: String should match pattern",
    json.dumps({**GOOD, "extra": 1}).encode(): "extra: Extra inputs are not permitted",
    json.dumps({**GOOD, "ts": "2004-02-28T00:58:46"}).encode(): "ts must carry a timezone",
    b"{" + b" " * 70_000 + b"}": "exceeds the 65536-byte limit",
}


def test_bad_messages_go_to_the_dlq_with_reasons_and_good_ones_around_them_survive(settings):
    source, dlq = (f"test.{name}.{uuid.uuid4().hex[:8]}" for name in ("readings", "dlq"))
    ensure_topics(settings, {source: 2, dlq: 1})
    producer = make_producer(settings, max_request_size=1_048_576)
    sent = []
    for i, bad in enumerate(BAD):
        good = {**GOOD, "epoch": i, "ts": f"2004-02-28T01:{i:02d}:00Z"}
        producer.send(source, key=b"mote-01", value=json.dumps(good).encode())
        producer.send(source, key=b"mote-01", value=bad)
        sent.append(good)
    producer.flush()

    consumer = make_consumer(settings, source, group_id=f"g-{uuid.uuid4().hex[:8]}")
    records = consume(consumer, 2 * len(BAD))
    consumer.close()
    valid, rejected = decode_batch(records, settings.max_message_bytes)
    assert valid["epoch"].to_list() == [g["epoch"] for g in sent]
    assert len(rejected) == len(BAD)
    for r in rejected:
        assert BAD[r.value] in r.reason, (r.value[:60], r.reason)

    send_dead_letters(producer, dlq, rejected)
    producer.flush()
    producer.close()
    reader = make_consumer(settings, dlq, group_id=f"g-{uuid.uuid4().hex[:8]}")
    letters = consume(reader, len(BAD))
    reader.close()
    assert sorted(letter.value for letter in letters) == sorted(BAD)  # the original bytes, unchanged
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["flead.source.topic"] == source.encode()
        assert BAD[letter.value] in headers["flead.error"].decode()
        assert int(headers["flead.source.offset"]) >= 0


def test_key_must_match_the_device_id():
    class Record:
        topic, partition, offset, key = "t", 0, 7, b"mote-02"
        value = json.dumps(GOOD).encode()

    valid, rejected = decode_batch([Record()], 65536)
    assert valid.is_empty() and "differs from device_id" in rejected[0].reason
