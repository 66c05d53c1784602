"""Reading messages at the Kafka edge: decode and validate a polled batch; reject the bad with a reason.

A rejected message keeps its original bytes and where it came from, so the dead-letter topic can hold
exactly what arrived (see `flead.bus.dlq`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
from pydantic import ValidationError

from flead.schema import LAKE_SCHEMA, MEASUREMENTS, Reading

DECODED_SCHEMA: dict[str, pl.DataType] = {
    **{name: LAKE_SCHEMA[name] for name in ("device_id", "ts", "epoch", *MEASUREMENTS)},
    "partition": pl.Int32(),
    "offset": pl.Int64(),
}


@dataclass(frozen=True)
class Rejected:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


def decode_batch(records: Iterable, max_bytes: int) -> tuple[pl.DataFrame, list[Rejected]]:
    """Valid readings (DECODED_SCHEMA, in the records' order) and the rejected records."""
    rows: list[dict] = []
    rejected: list[Rejected] = []
    for record in records:
        reason = _problem(record, max_bytes)
        if reason is None:
            try:
                reading = Reading.model_validate_json(record.value)
            except ValidationError as exc:
                reason = _summarise(exc)
            else:
                if record.key is not None and record.key != reading.device_id.encode():
                    reason = f"key {record.key!r} differs from device_id {reading.device_id!r}"
                else:
                    row = reading.model_dump(exclude={"schema_version"})
                    row["partition"], row["offset"] = record.partition, record.offset
                    rows.append(row)
                    continue
        rejected.append(
            Rejected(record.topic, record.partition, record.offset, record.key, record.value, reason)
        )
    return pl.DataFrame(rows, schema=DECODED_SCHEMA), rejected


def _problem(record, max_bytes: int) -> str | None:
    if record.value is None:
        return "empty message (no value)"
    if len(record.value) > max_bytes:
        return f"message of {len(record.value)} bytes exceeds the {max_bytes}-byte limit"
    return None


def _summarise(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. `temperature: Input should be a finite number`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
