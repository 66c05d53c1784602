"""Reading messages at the Kafka edge: encode lake rows; decode and validate a polled batch, rejecting
the bad with a reason.

`flead.schema.Reading` defines what is valid (strict JSON types), the fleet schema (`flead.fleet`)
which values a reading may carry, and a message's Kafka key must be its device id: unkeyed or
foreign-keyed readings would spread one device over several partitions, and so over several states.
A poll is decoded column-wise: the messages that are plainly well-formed (one line laid out as
`encode_readings` writes it: the known keys in order, the fleet's every value in its order, the
expected JSON types, a device id of the allowed form, an event time like
``2004-03-01T12:00:31.000000Z``, finite numbers) are parsed together by polars, whose typed
`read_ndjson` refuses a wrong JSON type as `Reading` does, and checked as columns. Every other
message, and every message of a group that polars could not parse, is validated on its own by
`Reading` and `Reading.check_fleet`, which accept the other forms they allow (e.g. a time zone
offset, values left out) and name what is wrong with the rest. Both ways give the same verdict on
every message (`test_codec.py` fuzzes them).

A rejected message keeps its original bytes and where it came from, so the dead-letter topic can hold
exactly what arrived (see `flead.bus.dlq`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import polars as pl
from pydantic import ValidationError

from flead.fleet import INTEL_LAB, FleetSchema
from flead.schema import DEVICE_ID_PATTERN, SCHEMA_VERSION, Reading, lake_schema

_VALUE = r'[^,}"\r\n]*'  # a number or null (what polars reads as another type, it refuses)
_STRING = r'"[^"\r\n]*"'
_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:[0-5]\d:[0-5]\d(?:\.\d{1,6})?Z$"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
_TS_TEXT = "%Y-%m-%dT%H:%M:%S%.6fZ"
_MIN_GROUP = 64  # a group polars cannot parse is halved down to this size, then validated one by one


def decoded_schema(fleet: FleetSchema) -> dict[str, pl.DataType]:
    """A decoded poll's columns: the lake's device, time, epoch and values, and where each came from."""
    lake = lake_schema(fleet)
    return {
        **{name: lake[name] for name in ("device_id", "ts", "epoch", *fleet.columns)},
        "partition": pl.Int32(),
        "offset": pl.Int64(),
    }


@dataclass(frozen=True)
class _Layout:
    """What the column-wise path reads for one fleet: the JSON schema and the plain layout's pattern."""

    json_schema: dict[str, pl.DataType]
    plain: str


@cache
def _layout(fleet: FleetSchema) -> _Layout:
    values = ", ?".join(f'"{re.escape(name)}": ?{_VALUE}' for name in fleet.columns)
    plain = (
        r'^\{(?:"schema_version": ?'
        + _VALUE
        + r", ?)?"
        + r'"fleet": ?"'
        + re.escape(fleet.ref)
        + r'", ?'
        + r'"device_id": ?'
        + _STRING
        + r', ?"ts": ?'
        + _STRING
        + r'(?:, ?"epoch": ?'
        + _VALUE
        + r")?"
        + r', ?"values": ?\{'
        + values
        + r"\}\}$"
    )
    json_schema = {
        "schema_version": pl.Int64(),
        "fleet": pl.String(),
        "device_id": pl.String(),
        "ts": pl.String(),
        "epoch": pl.Int64(),
        "values": pl.Struct({name: pl.Float64() for name in fleet.columns}),
    }
    return _Layout(json_schema, plain)


def encode_readings(frame: pl.DataFrame, fleet: FleetSchema = INTEL_LAB) -> tuple[list[bytes], list[bytes]]:
    """(keys, values): device ids and Reading JSON documents of lake rows, in the frame's order."""
    values = frame.select(
        pl.struct(
            pl.lit(SCHEMA_VERSION).alias("schema_version"),
            pl.lit(fleet.ref).alias("fleet"),
            "device_id",
            pl.col("ts").dt.convert_time_zone("UTC").dt.strftime(_TS_TEXT).alias("ts"),
            "epoch",
            pl.struct(*fleet.columns).alias("values"),
        ).struct.json_encode()
    ).to_series()
    return frame["device_id"].cast(pl.Binary).to_list(), values.cast(pl.Binary).to_list()


@dataclass(frozen=True)
class Rejected:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


def decode_batch(
    records: Iterable, max_bytes: int, fleet: FleetSchema = INTEL_LAB
) -> tuple[pl.DataFrame, list[Rejected]]:
    """Valid readings (`decoded_schema`, in the records' order) and the rejected records (in order)."""
    records = list(records)
    rejected: dict[int, Rejected] = {}
    candidates = []
    for i, record in enumerate(records):
        if record.value is not None and len(record.value) <= max_bytes:
            candidates.append(i)
        else:
            rejected[i] = _reject(record, _problem(record, max_bytes))
    valid, one_by_one = _decode_plain(records, candidates, fleet)
    rows = []
    for i in one_by_one:
        row, reason = _decode_one(records[i], fleet)
        if row is None:
            rejected[i] = _reject(records[i], reason)
        else:
            rows.append({**row, "_i": i})
    if rows:
        valid = pl.concat([valid, pl.DataFrame(rows, schema=valid.schema)]).sort("_i")
    return valid.drop("_i"), [rejected[i] for i in sorted(rejected)]


def _decode_plain(
    records: Sequence, candidates: list[int], fleet: FleetSchema
) -> tuple[pl.DataFrame, list[int]]:
    """(the valid plain messages as `decoded_schema` rows with their index `_i`, the indices of the
    others, left to `_decode_one`)."""
    layout, decoded = _layout(fleet), decoded_schema(fleet)
    values = [records[i].value for i in candidates]
    meta = pl.DataFrame(
        {
            "_i": candidates,
            "_key": [records[i].key for i in candidates],
            "partition": [records[i].partition for i in candidates],
            "offset": [records[i].offset for i in candidates],
        },
        schema={"_i": pl.Int64(), "_key": pl.Binary(), "partition": pl.Int32(), "offset": pl.Int64()},
    )
    try:
        text = pl.Series(values, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.PolarsError:  # not UTF-8 somewhere
        text = pl.Series([""] * len(values))
    plain = text.str.contains(layout.plain).to_list()
    one_by_one = [i for i, ok in zip(candidates, plain, strict=True) if not ok]
    frames = []
    pending = [[k for k, ok in enumerate(plain) if ok]]
    while pending:  # groups polars cannot parse are halved, down to _MIN_GROUP
        group = pending.pop()
        parsed = _parse([values[k] for k in group], layout) if group else None
        if parsed is not None:
            frames.append(pl.concat([parsed, meta[group]], how="horizontal"))
        elif len(group) > _MIN_GROUP:
            half = len(group) // 2
            pending += [group[half:], group[:half]]
        else:
            one_by_one += [candidates[k] for k in group]
    frame = pl.concat(frames) if frames else pl.DataFrame(schema={**layout.json_schema, **meta.schema})
    frame = frame.unnest("values")
    ok = (
        (pl.col("schema_version") == SCHEMA_VERSION)
        & pl.col("device_id").str.contains(DEVICE_ID_PATTERN)
        & pl.col("ts").str.contains(_TS_PATTERN)
        & pl.all_horizontal(pl.col(m).is_finite() | pl.col(m).is_null() for m in fleet.columns)
        & (pl.col("_key") == pl.col("device_id").cast(pl.Binary))
    ).fill_null(False)
    frame = frame.with_columns(
        pl.col("ts").str.strptime(decoded["ts"], _TS_FORMAT, strict=False), _ok=ok
    ).with_columns((pl.col("_ok") & (pl.col("ts").dt.year() >= 1)).fill_null(False))  # Python has no year 0
    one_by_one += frame.filter(~pl.col("_ok"))["_i"].to_list()
    valid = frame.filter("_ok").select(*decoded, "_i")
    return valid, sorted(one_by_one)


def _parse(values: list[bytes], layout: _Layout) -> pl.DataFrame | None:
    """The messages (JSON objects, one per line) as columns; None if polars cannot read them all with
    the schema's types."""
    try:
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(values)), schema=layout.json_schema)
    except pl.exceptions.PolarsError:
        return None
    return frame if frame.height == len(values) else None


def _decode_one(record, fleet: FleetSchema) -> tuple[dict | None, str | None]:
    """(the reading as a `decoded_schema` row, None) or (None, the reason it is rejected)."""
    try:
        reading = Reading.model_validate_json(record.value)
    except ValidationError as exc:
        return None, _summarise(exc)
    if (problem := reading.check_fleet(fleet)) is not None:
        return None, problem
    if record.key != reading.device_id.encode():
        return None, (
            f"key {record.key!r} does not match device_id {reading.device_id!r} (readings are keyed by "
            "their device id, which keeps a device's state in one partition)"
        )
    row = {"device_id": reading.device_id, "ts": reading.ts, "epoch": reading.epoch}
    row.update({name: reading.values.get(name) for name in fleet.columns})
    row["partition"], row["offset"] = record.partition, record.offset
    return row, None


def _reject(record, reason: str) -> Rejected:
    return Rejected(record.topic, record.partition, record.offset, record.key, record.value, reason)


def _problem(record, max_bytes: int) -> str:
    if record.value is None:
        return "empty message (no value)"
    return f"message of {len(record.value)} bytes exceeds the {max_bytes}-byte limit"


def _summarise(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. `values.temperature: Input should be a finite number`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
