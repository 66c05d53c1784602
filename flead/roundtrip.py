"""The platform round trip: one reading through Kafka (via a consumer group) into MongoDB and back.

It proves the wiring a deployment depends on: the broker accepts and delivers keyed messages, a
consumer group commits its offset, and the document store writes and reads back what it got.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka.structs import TopicPartition

from flead.bus.clients import make_consumer, make_producer
from flead.config import Settings
from flead.schema import Reading
from flead.storage.mongo import get_database, make_mongo_client


class RoundTripError(RuntimeError):
    pass


@dataclass
class RoundTripReport:
    reading: Reading
    partition: int = -1
    offset: int = -1
    committed_offset: int | None = None
    document_id: str = ""
    steps: list[tuple[str, float]] = field(default_factory=list)  # (what happened, seconds it took)

    def step(self, what: str, started: float) -> None:
        self.steps.append((what, time.perf_counter() - started))


def run_round_trip(
    settings: Settings,
    timeout_s: float = 30.0,
    on_step: Callable[[str], None] = lambda _msg: None,
) -> RoundTripReport:
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    reading = Reading(
        device_id="roundtrip-0",
        ts=now.replace(microsecond=now.microsecond // 1000 * 1000),  # BSON dates hold milliseconds
        fleet=settings.fleet.ref,
        values={name: _inside(low, high) for name, (low, high) in _ranges(settings).items()},
    )
    report = RoundTripReport(reading=reading)
    payload = reading.model_dump_json().encode()

    started = time.perf_counter()
    producer = make_producer(settings)
    try:
        sent = producer.send(
            settings.topic_smoke,
            key=reading.device_id.encode(),
            value=payload,
            headers=[("run_id", run_id.encode())],
        ).get(timeout=timeout_s)
    finally:
        producer.close()
    report.partition, report.offset = sent.partition, sent.offset
    report.step(
        f"produced to {settings.topic_smoke} partition {sent.partition} offset {sent.offset}", started
    )
    on_step(report.steps[-1][0])

    started = time.perf_counter()
    consumer = make_consumer(settings, settings.topic_smoke, group_id=settings.smoke_consumer_group)
    try:
        received = _consume_run(consumer, run_id, timeout_s)
        consumer.commit()
        report.committed_offset = consumer.committed(TopicPartition(received.topic, received.partition))
    finally:
        consumer.close()
    if Reading.model_validate_json(received.value) != reading:
        raise RoundTripError("the consumed reading differs from the one produced")
    report.step(
        f"consumed by group {settings.smoke_consumer_group} at offset {received.offset}, "
        f"committed offset {report.committed_offset}",
        started,
    )
    on_step(report.steps[-1][0])

    started = time.perf_counter()
    client = make_mongo_client(settings)
    try:
        collection = get_database(client, settings)[settings.collection_smoke]
        document = {"_id": run_id, **reading.model_dump(mode="python"), "kafka_offset": received.offset}
        collection.replace_one({"_id": run_id}, document, upsert=True)
        stored = collection.find_one({"_id": run_id})
    finally:
        client.close()
    if stored is None or Reading.model_validate({k: stored[k] for k in Reading.model_fields}) != reading:
        raise RoundTripError(f"document {run_id} did not read back as written: {stored}")
    report.document_id = run_id
    report.step(
        f"written to {settings.mongo_db}.{settings.collection_smoke} and read back (_id {run_id})", started
    )
    on_step(report.steps[-1][0])
    return report


def _consume_run(consumer, run_id: str, timeout_s: float):
    """Poll until the message of this run arrives; earlier runs' messages are skipped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if dict(record.headers).get("run_id") == run_id.encode():
                    return record
    raise RoundTripError(f"the produced reading was not consumed within {timeout_s:.0f} s")


def _ranges(settings: Settings) -> dict[str, tuple[float, float]]:
    limits = settings.fleet.valid_ranges
    return {name: limits.get(name, (-math.inf, math.inf)) for name in settings.fleet.columns}


def _inside(low: float, high: float) -> float:
    """A value within the limits (the middle where both are finite)."""
    if math.isfinite(low) and math.isfinite(high):
        return round((low + high) / 2, 3)
    return low + 1.0 if math.isfinite(low) else (high - 1.0 if math.isfinite(high) else 1.0)
