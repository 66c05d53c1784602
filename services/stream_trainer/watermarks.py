"""Event time per partition: the watermark is the latest event time seen on the partition minus the
allowed lateness; a reading older than the watermark when it arrives is late.

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
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from flead.config import Settings

TS_US = "_ts_us"
WATERMARK_US = "_watermark_us"

log = logging.getLogger(__name__)


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
