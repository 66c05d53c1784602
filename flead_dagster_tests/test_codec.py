"""Validation of reading messages at the Kafka edge, and dead letters on the real broker."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime

import polars as pl
import pytest
from pydantic import ValidationError

from flead.bus.clients import make_consumer, make_producer
from flead.bus.codec import decode_batch, encode_readings
from flead.bus.dlq import dead_letter, value_limit
from flead.bus.topics import ensure_topics
from flead.fleet import INTEL_LAB, Feature, FleetSchema
from flead.schema import MEASUREMENTS, Reading
from flead_dagster_tests.helpers.bus import consume

GOOD = {
    "schema_version": 2,
    "fleet": "intel_lab@1",
    "device_id": "mote-01",
    "ts": "2004-02-28T00:58:46.002832Z",
    "epoch": 2,
    "values": {"temperature": 19.7, "humidity": 37.0, "light": 71.76, "voltage": 2.69},
}


def good(**values) -> dict:
    """GOOD with some of its values replaced."""
    return {**GOOD, "values": {**GOOD["values"], **values}}


BAD = {
    b"not json": "Invalid JSON",
    json.dumps({**GOOD, "schema_version": 9}).encode(): "unknown schema_version 9",
    json.dumps(
        {"schema_version": 1, "device_id": "mote-01", "ts": GOOD["ts"], "temperature": 19.7}
    ).encode(): "schema_version 1 (flat Intel Lab fields) is no longer read",
    json.dumps(
        {**GOOD, "fleet": "plant_a@1"}
    ).encode(): "fleet 'plant_a@1' is not this deployment's fleet schema",
    json.dumps(good(pressure=1.0)).encode(): "values ['pressure'] are not in the fleet schema intel_lab@1",
    json.dumps(good(temperature="hot")).encode(): "values.temperature: Input should be a valid number",
    json.dumps(GOOD).replace("19.7", "NaN").encode(): "values.temperature: Input should be a finite number",
    json.dumps({k: v for k, v in GOOD.items() if k != "ts"}).encode(): "ts: Field required",
    json.dumps({k: v for k, v in GOOD.items() if k != "values"}).encode(): "values: Field required",
    json.dumps({**GOOD, "device_id": "../etc/passwd"}).encode(): "device_id: String should match pattern",
    json.dumps({**GOOD, "extra": 1}).encode(): "extra: Extra inputs are not permitted",
    json.dumps({**GOOD, "ts": "2004-02-28T00:58:46"}).encode(): "ts must carry a timezone",
    b"{" + b" " * 70_000 + b"}": "exceeds the 65536-byte limit",
    # strict JSON types: nothing is converted
    json.dumps(good(temperature="21.5")).encode(): "values.temperature: Input should be a valid number",
    json.dumps(good(humidity=True)).encode(): "values.humidity: Input should be a valid number",
    json.dumps({**GOOD, "values": [19.7]}).encode(): "values: Input should be an object",
    json.dumps({**GOOD, "epoch": "7"}).encode(): "epoch: Input should be a valid integer",
    json.dumps({**GOOD, "epoch": 7.0}).encode(): "epoch: Input should be a valid integer",
    json.dumps({**GOOD, "epoch": 2**63}).encode(): "epoch: Input should be less than or equal to",
    json.dumps({**GOOD, "schema_version": "2"}).encode(): "schema_version: Input should be a valid integer",
    json.dumps({**GOOD, "schema_version": True}).encode(): "schema_version: Input should be a valid integer",
    json.dumps({**GOOD, "ts": 1078142400}).encode(): "ts: Value error, ts must be an ISO-8601 date and time",
    json.dumps(
        {**GOOD, "ts": "1078142400"}
    ).encode(): "ts: Value error, ts must be an ISO-8601 date and time",
    json.dumps(
        {**GOOD, "ts": "9999-12-31T23:59:59-01:00"}
    ).encode(): "ts: Value error, ts is out of range in UTC",
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

    for letter in (dead_letter(r, value_limit(producer)) for r in rejected):
        producer.send(dlq, key=letter.key, value=letter.value, headers=letter.headers)
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


class Record:
    def __init__(self, offset: int, key: bytes | None, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", 0, offset, key, value


@pytest.mark.parametrize("key", [b"mote-02", None, b""])
def test_the_key_must_be_the_device_id(key):
    valid, rejected = decode_batch([Record(7, key, json.dumps(GOOD).encode())], 65536)
    assert valid.is_empty() and f"key {key!r} does not match device_id 'mote-01'" in rejected[0].reason


def test_integer_values_left_out_values_and_time_zone_offsets_are_valid():
    reading = {**good(temperature=21, light=0), "ts": "2004-02-28T01:58:46.5+01:00"}
    del reading["values"]["voltage"]
    valid, rejected = decode_batch([Record(0, b"mote-01", json.dumps(reading).encode())], 65536)
    assert not rejected
    row = valid.row(0, named=True)
    assert row["temperature"] == 21.0 and row["light"] == 0.0 and row["voltage"] is None
    assert row["ts"] == datetime(2004, 2, 28, 0, 58, 46, 500_000, tzinfo=UTC)


def test_a_fleet_of_its_own_decodes_its_values_and_refuses_the_intel_labs(tmp_path):
    fleet = FleetSchema(
        name="plant_a", features=(Feature(name="pressure"),), inputs=(Feature(name="valve_open"),)
    )
    frame = pl.DataFrame(
        {
            "device_id": ["pump-1", "pump-2"],
            "ts": [datetime(2024, 5, 1, tzinfo=UTC)] * 2,
            "epoch": [None, None],
            "pressure": [5.5, None],
            "valve_open": [1.0, 0.0],
        },
        schema_overrides={"epoch": pl.Int64, "pressure": pl.Float64},
    )
    keys, values = encode_readings(frame, fleet)
    assert json.loads(values[0])["values"] == {"pressure": 5.5, "valve_open": 1.0}
    records = [Record(i, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
    valid, rejected = decode_batch([*records, Record(2, b"mote-01", json.dumps(GOOD).encode())], 65536, fleet)
    assert valid.select("device_id", "pressure", "valve_open").rows() == [
        ("pump-1", 5.5, 1.0),
        ("pump-2", None, 0.0),
    ]
    assert rejected[0].reason == "fleet 'intel_lab@1' is not this deployment's fleet schema 'plant_a@1'"


# ------------------------------------------- the column-wise path and `Reading` agree on every message

VARIANTS = {
    "schema_version": [2, 2, "2", True, 2.0, 1, 3, 0, -1, None],
    "fleet": ["intel_lab@1", "intel_lab@1", "intel_lab@2", "plant@1", "", 5, None],
    "values": [{}, None, [1], "x", {"temperature": 1.0}, {"pressure": 1.0}],
    "device_id": ["mote-01", "mote-02", 5, "", "m" * 64, "m" * 65, "mote 1", "mote-01\n", "m\u00f6te", None],
    "ts": [
        "2004-02-28T00:58:46.002832Z",
        "2004-02-28T00:58:46Z",
        "2004-02-28T00:58:46.5Z",
        "2004-02-28T00:58:46.1234567Z",
        "2004-02-28T00:58:46+01:00",
        "2004-02-28 00:58:46Z",
        "2004-02-28t00:58:46z",
        "2004-02-28T00:58:46",
        "2004-02-28",
        "2004-02-30T00:00:00Z",
        "2004-02-28T24:00:00Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-01:00",
        "1078142400",
        1078142400,
        1078142400.5,
        True,
        None,
    ],
    "epoch": [2, 0, -5, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**70, 7.0, 7.5, 1e3, "7", True, None],
    "measurement": [
        19.7,
        21,
        0,
        -0.0,
        1e-300,
        1e308,
        2**70,
        10**400,
        "21.5",
        "NaN",
        True,
        False,
        None,
        [1],
        {},
    ],
}
RAW = [  # text edits json.dumps cannot make
    ("19.7", "NaN"),
    ("19.7", "Infinity"),
    ("19.7", "1e400"),
    ("19.7", "19.7e0"),
    ("19.7", "0019.7"),
    (", ", ","),
    (": ", ":"),
    ('"epoch": 2', '"epoch": 2, "epoch": 3'),
    ("}", "}\n"),
    ("}", "} "),
]


def fuzzed_records(n: int, seed: int) -> list[Record]:
    """Messages in runs of 100, each run with its own share of edited ones: a run of mostly plain
    messages is parsed by polars in groups, a run of mostly edited ones falls back to `Reading`."""
    rng = random.Random(seed)
    records = []
    for offset in range(n):
        if offset % 100 == 0:
            edited = rng.choice([0.0, 0.01, 0.05, 0.3, 0.9])
        message = {**good(temperature=round(rng.uniform(-10, 40), rng.randint(0, 6))), "epoch": offset}
        for _ in range(rng.choice([1, 1, 2]) if rng.random() < edited else 0):
            name = rng.choice([*GOOD, *MEASUREMENTS, "missing", "missing value", "extra", "extra value"])
            values = message["values"] if isinstance(message.get("values"), dict) else {}
            if name == "missing":
                message.pop(rng.choice(list(message)), None)
            elif name == "missing value" and values:
                values.pop(rng.choice(list(values)))
            elif name == "extra":
                message["extra"] = 1
            elif name == "extra value":
                values["extra"] = 1.0
            elif name in MEASUREMENTS:
                values[name] = rng.choice(VARIANTS["measurement"])
            elif name in VARIANTS:
                message[name] = rng.choice(VARIANTS[name])
        if rng.random() < edited / 3:
            message = dict(rng.sample(list(message.items()), len(message)))  # another key order
        text = json.dumps(message)
        if rng.random() < edited / 3:
            text = text.replace(*rng.choice(RAW), 1)
        key = b"mote-01"
        if rng.random() < edited / 3:
            key = rng.choice([None, b"", b"mote-02", str(message.get("device_id")).encode()])
        records.append(Record(offset, key, text.encode()))
    return records


def reference(record: Record) -> dict | None:
    """What `Reading` alone makes of one message: the decoded row, or None if it is rejected."""
    try:
        reading = Reading.model_validate_json(record.value)
    except ValidationError:
        return None
    if reading.check_fleet(INTEL_LAB) is not None or record.key != reading.device_id.encode():
        return None
    values = {name: reading.values.get(name) for name in MEASUREMENTS}
    row = {"device_id": reading.device_id, "ts": reading.ts, "epoch": reading.epoch, **values}
    return {**row, "partition": 0, "offset": record.offset}


@pytest.mark.parametrize("seed", range(3))
def test_the_column_wise_path_gives_the_per_record_verdict_on_every_message(seed):
    records = fuzzed_records(3000, seed)
    expected = {r.offset: row for r in records if (row := reference(r)) is not None}
    assert 0.5 * len(records) < len(expected) < 0.95 * len(records)  # both verdicts well represented
    for size in (len(records), 500, 64, 7):  # however the stream is cut into polls
        valid, rejected = [], []
        for start in range(0, len(records), size):
            v, r = decode_batch(records[start : start + size], 1 << 20)
            valid += v.to_dicts()
            rejected += r
        assert {row["offset"]: row for row in valid} == expected, size
        assert len(valid) + len(rejected) == len(records)
        assert all(r.reason for r in rejected)
