"""Event time per partition: the watermark is the latest event time seen on the partition minus the
allowed lateness; a reading older than the watermark when it arrives is late.

Computed for a whole poll at once, in the partitions' offset order, so the split depends only on the
stream (and the checkpointed maxima), never on how it was cut into polls.
"""

from __future__ import annotations

import polars as pl

TS_US = "_ts_us"
WATERMARK_US = "_watermark_us"


class Watermarks:
    def __init__(self, allowed_lateness_s: float) -> None:
        self.lateness_us = round(allowed_lateness_s * 1_000_000)
        self.max_event_us: dict[int, int] = {}

    def restore(self, partition: int, max_event_us: int | None) -> None:
        if max_event_us is None:
            self.max_event_us.pop(partition, None)
        else:
            self.max_event_us[partition] = int(max_event_us)

    def drop(self, partition: int) -> None:
        self.max_event_us.pop(partition, None)

    def watermark_us(self, partition: int) -> int | None:
        latest = self.max_event_us.get(partition)
        return None if latest is None else latest - self.lateness_us

    def split(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(on time, late) rows of a decoded poll (in record order), both with the event time in
        microseconds (`TS_US`); late rows also carry the watermark they missed (`WATERMARK_US`).
        Advances the partitions' maxima."""
        marked = frame.with_columns(pl.col("ts").dt.epoch("us").alias(TS_US))
        if marked.is_empty():
            return marked, marked.with_columns(pl.lit(None, pl.Int64).alias(WATERMARK_US))
        before = pl.col("partition").replace_strict(self.max_event_us, default=None, return_dtype=pl.Int64)
        seen = pl.max_horizontal(pl.col(TS_US).cum_max().shift(1).over("partition"), before)
        marked = marked.with_columns((seen - self.lateness_us).alias(WATERMARK_US))
        late = pl.col(TS_US) < pl.col(WATERMARK_US)
        for partition, latest in marked.group_by("partition").agg(pl.col(TS_US).max()).iter_rows():
            if latest is not None:
                self.max_event_us[partition] = max(self.max_event_us.get(partition, latest), latest)
        return (
            marked.filter(late.not_() | late.is_null()).drop(WATERMARK_US),
            marked.filter(late.fill_null(False)),
        )
