"""One poll on its way in: decode and validate every record, reject those too far ahead of the clock,
split off the late ones, and group the rest by (partition, device) as NumPy rows ready for each
device's buffer. Vectorised over the poll, validation included (`flead.bus.codec` checks the poll
column-wise)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from flead.bus.codec import Rejected, decode_batch
from flead.fleet import FleetSchema
from services.stream_trainer.pending import reading_dtype
from services.stream_trainer.watermarks import TS_US, WATERMARK_US, Watermarks

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class DeviceRun:
    """One device's on-time readings in a poll, in offset order."""

    partition: int
    device_id: str
    rows: np.ndarray  # structured, `pending.reading_dtype`
    max_event_us: int


@dataclass(eq=False)
class Intake:
    records: int = 0
    invalid: list[Rejected] = field(default_factory=list)
    late: list[Rejected] = field(default_factory=list)
    late_by_device: list[tuple[int, str, int]] = field(default_factory=list)  # (partition, device, count)
    runs: list[DeviceRun] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset after the poll


def take_in(
    batch: Mapping[object, Sequence],
    *,
    max_bytes: int,
    watermarks: Watermarks,
    columns: Sequence[str],
    fleet: FleetSchema,
) -> Intake:
    """`batch`: what `KafkaConsumer.poll` returned (TopicPartition -> records in offset order)."""
    records = [record for partition_records in batch.values() for record in partition_records]
    intake = Intake(records=len(records))
    for tp, partition_records in batch.items():
        if partition_records:
            intake.next_offsets[tp.partition] = partition_records[-1].offset + 1
    frame, intake.invalid = decode_batch(records, max_bytes, fleet)
    split = watermarks.split(frame)
    if split.ahead.height:
        order = {(r.partition, r.offset): i for i, r in enumerate(records)}
        ahead = _ahead_rejections(split.ahead, records, split.now_us, watermarks.max_future_us)
        intake.invalid = sorted(intake.invalid + ahead, key=lambda r: order[(r.partition, r.offset)])
    if split.late.height:
        intake.late = _late_rejections(split.late, records, watermarks.lateness_us)
        counts = split.late.group_by("partition", "device_id", maintain_order=True).len()
        intake.late_by_device = [(int(p), d, int(n)) for p, d, n in counts.iter_rows()]
    if split.on_time.height:
        intake.runs = _device_runs(split.on_time, tuple(columns))
    return intake


def _device_runs(frame: pl.DataFrame, columns: tuple[str, ...]) -> list[DeviceRun]:
    ordered = frame.sort("partition", "device_id", maintain_order=True)
    rows = np.empty(ordered.height, reading_dtype(len(columns)))
    rows["ts"] = ordered.get_column(TS_US).to_numpy().view("M8[us]")
    rows["offset"] = ordered.get_column("offset").to_numpy()
    rows["values"] = ordered.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy()
    groups = ordered.group_by("partition", "device_id", maintain_order=True).agg(
        pl.len().alias("n"), pl.col(TS_US).max().alias("max_us")
    )
    runs, start = [], 0
    for partition, device_id, n, max_us in groups.iter_rows():
        runs.append(DeviceRun(int(partition), device_id, rows[start : start + n], int(max_us)))
        start += n
    return runs


def _late_rejections(late: pl.DataFrame, records: Sequence, lateness_us: int) -> list[Rejected]:
    reasons = [
        f"late: event time {_iso(ts_us)} is {(watermark_us - ts_us) / 1e6:.3f} s behind the watermark "
        f"{_iso(watermark_us)} of partition {partition} (latest event time seen minus the allowed "
        f"lateness of {lateness_us / 1e6:g} s)"
        for partition, ts_us, watermark_us in late.select("partition", TS_US, WATERMARK_US).iter_rows()
    ]
    return _rejected(late, records, reasons)


def _ahead_rejections(
    ahead: pl.DataFrame, records: Sequence, now_us: int, max_future_us: int
) -> list[Rejected]:
    reasons = [
        f"ts: event time {_iso(ts_us)} is {(ts_us - now_us) / 1e6:.0f} s ahead of the wall clock "
        f"{_iso(now_us)}, more than the allowed {max_future_us / 1e6:g} s (FLEAD_TRAINER_MAX_FUTURE_S)"
        for ts_us in ahead.get_column(TS_US)
    ]
    return _rejected(ahead, records, reasons)


def _rejected(rows: pl.DataFrame, records: Sequence, reasons: list[str]) -> list[Rejected]:
    by_position = {(r.partition, r.offset): r for r in records}
    rejected = []
    for (partition, offset), reason in zip(
        rows.select("partition", "offset").iter_rows(), reasons, strict=True
    ):
        record = by_position[(partition, offset)]
        rejected.append(Rejected(record.topic, partition, offset, record.key, record.value, reason))
    return rejected


def _iso(us: int) -> str:
    return (EPOCH + timedelta(microseconds=int(us))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
