"""One poll on its way in: decode and validate every record, reject those too far ahead of the clock,
split off the late ones, and group the rest by (partition, device) as NumPy rows ready for each
device's buffer. Vectorised over the poll, validation included (`flead.bus.codec` checks the poll
column-wise).

Event time per partition (`Watermarks`): the watermark is the latest event time seen on the partition
minus the allowed lateness; a reading older than the watermark when it arrives is late.

Event time is bounded by the trainer's clock: a reading more than the allowed skew ahead of it (a
device with a wrong clock, a corrupt or hostile message) is rejected and never moves the watermark,
which would otherwise make every later reading of the partition late, for good once checkpointed.
Only the future is bounded: a replay of historical data is on time however old it is.

Computed for a whole poll at once, in the partitions' offset order, so the split depends only on the
stream (and the checkpointed maxima), never on how it was cut into polls; the bound alone depends on
when a reading is read, and only for readings within seconds of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import polars as pl

from flead.bus.codec import Rejected, decode_batch
from flead.config import Settings
from flead.fleet import FleetSchema
from flead.schema import EPOCH
from services.stream_trainer.devices import reading_dtype

log = logging.getLogger(__name__)

TS_US = "_ts_us"
WATERMARK_US = "_watermark_us"

# ------------------------------------------------------------------------------------ event time


@dataclass(frozen=True, eq=False)
class EventTimeSplit:
    """A decoded poll's rows (in record order, with the event time in microseconds, `TS_US`)."""

    on_time: pl.DataFrame
    late: pl.DataFrame  # also carries the watermark each row missed (`WATERMARK_US`)
    ahead: pl.DataFrame  # more than the allowed skew ahead of `now_us`: rejected, no part of the watermark
    now_us: int  # the trainer's clock at the split


class Watermarks:
    def __init__(
        self,
        allowed_lateness_s: float,
        max_future_s: float = Settings.model_fields["trainer_max_future_s"].default,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lateness_us = round(allowed_lateness_s * 1_000_000)
        self.max_future_us = round(max_future_s * 1_000_000)
        self.max_event_us: dict[int, int] = {}
        self._clock = clock

    def now_us(self) -> int:
        return round(self._clock() * 1_000_000)

    def restore(self, partition: int, max_event_us: int | None) -> None:
        if max_event_us is not None and max_event_us > self.now_us() + self.max_future_us:
            # moved by a reading from the future before event time was bounded: the partition's true
            # latest event time is unknown, and keeping this one would make every reading late
            log.warning(
                "partition %d: discarding the checkpointed latest event time %d us, beyond the trainer's "
                "clock plus %g s; the next readings set the watermark again",
                partition,
                max_event_us,
                self.max_future_us / 1e6,
            )
            max_event_us = None
        if max_event_us is None:
            self.max_event_us.pop(partition, None)
        else:
            self.max_event_us[partition] = int(max_event_us)

    def drop(self, partition: int) -> None:
        self.max_event_us.pop(partition, None)

    def watermark_us(self, partition: int) -> int | None:
        latest = self.max_event_us.get(partition)
        return None if latest is None else latest - self.lateness_us

    def split(self, frame: pl.DataFrame) -> EventTimeSplit:
        """Split a decoded poll into on-time, late and too-far-ahead rows; advance the partitions'
        maxima with the rows that are not ahead."""
        now_us = self.now_us()
        marked = frame.with_columns(pl.col("ts").dt.epoch("us").alias(TS_US))
        ahead = pl.col(TS_US) > now_us + self.max_future_us
        marked, too_far = marked.filter(ahead.not_()), marked.filter(ahead)
        if marked.is_empty():
            late = marked.with_columns(pl.lit(None, pl.Int64).alias(WATERMARK_US))
            return EventTimeSplit(marked, late, too_far, now_us)
        before = pl.col("partition").replace_strict(self.max_event_us, default=None, return_dtype=pl.Int64)
        seen = pl.max_horizontal(pl.col(TS_US).cum_max().shift(1).over("partition"), before)
        marked = marked.with_columns((seen - self.lateness_us).alias(WATERMARK_US))
        late = pl.col(TS_US) < pl.col(WATERMARK_US)
        for partition, latest in marked.group_by("partition").agg(pl.col(TS_US).max()).iter_rows():
            if latest is not None:
                self.max_event_us[partition] = max(self.max_event_us.get(partition, latest), latest)
        return EventTimeSplit(
            marked.filter(late.not_() | late.is_null()).drop(WATERMARK_US),
            marked.filter(late.fill_null(False)),
            too_far,
            now_us,
        )


# ------------------------------------------------------------------------------------ one poll


@dataclass(frozen=True, eq=False)
class DeviceRun:
    """One device's on-time readings in a poll, in offset order."""

    partition: int
    device_id: str
    rows: np.ndarray  # structured, `devices.reading_dtype`
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
