"""The typed Parquet lake: one folder per UTC day, ``<root>/date=YYYY-MM-DD/part-0.parquet``.

Rows follow `flead.schema.lake_schema` of the fleet the lake holds (`lake_fleet`: recorded in
``<root>/_fleet/schema.json`` when days are written; a lake without the record holds the Intel Lab
preset); the day comes back as the hive partition column ``date``.
A day's file is replaced atomically (temp file + rename), so rewriting a day is idempotent and never
touches other days. Rejected lines live beside the days in ``<root>/_rejects/`` (readers of hive
layouts, e.g. Spark and DuckDB, skip folders starting with an underscore).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from flead.datasets.intel_lab import REJECT_SCHEMA, parse_files
from flead.fleet import INTEL_LAB, FleetSchema
from flead.schema import lake_schema

PARTITION_FILE = "part-0.parquet"
REJECTS_FILE = Path("_rejects") / "rejects.parquet"
FLEET_FILE = Path("_fleet") / "schema.json"
PARTITION_COLUMN = "date"
_PARTITION_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_FLAGS = ("out_of_range", "low_battery", "missing_fields")


@dataclass(frozen=True)
class FlagCounts:
    out_of_range: int = 0
    low_battery: int = 0
    missing_fields: int = 0

    @classmethod
    def of(cls, rows: pl.DataFrame) -> FlagCounts:
        counts = rows.select(pl.col(flag).sum() for flag in _FLAGS).row(0)
        return cls(*(int(count or 0) for count in counts))

    def __add__(self, other: FlagCounts) -> FlagCounts:
        return FlagCounts(*(getattr(self, f) + getattr(other, f) for f in _FLAGS))


@dataclass(frozen=True)
class PartitionStats:
    day: date
    rows: int
    devices: int
    flags: FlagCounts
    path: Path


@dataclass(frozen=True)
class LakeWriteSummary:
    partitions: tuple[PartitionStats, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def flags(self) -> FlagCounts:
        return sum((p.flags for p in self.partitions), FlagCounts())

    def rows_per_day(self) -> dict[date, int]:
        return {p.day: p.rows for p in self.partitions}


@dataclass(frozen=True)
class IngestSummary:
    lines: int
    rejects: int
    rejects_by_reason: dict[str, int]
    rejects_path: Path
    lake: LakeWriteSummary
    sources: tuple[Path, ...] = field(default=())

    @property
    def rows(self) -> int:
        return self.lake.rows


def partition_path(root: Path, day: date) -> Path:
    return Path(root) / f"{PARTITION_COLUMN}={day.isoformat()}" / PARTITION_FILE


def lake_fleet(root: Path) -> FleetSchema:
    """The fleet whose readings the lake at `root` holds (the Intel Lab preset when none is recorded)."""
    path = Path(root) / FLEET_FILE
    return FleetSchema.model_validate_json(path.read_text()) if path.is_file() else INTEL_LAB


def claim_lake(root: Path, fleet: FleetSchema) -> None:
    """Record that the lake holds `fleet`'s readings; refuse a lake that already holds another fleet's."""
    held = lake_fleet(root)
    if list_partitions(root) and held != fleet:
        raise ValueError(
            f"the lake at {root} holds readings of the fleet schema {held.ref}, not {fleet.ref}: "
            "point FLEAD_LAKE_DIR (or FLEAD_HOME) elsewhere, or remove that lake first"
        )
    path = Path(root) / FLEET_FILE
    if not path.is_file() or held != fleet:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(fleet.model_dump_json(indent=2))
        os.replace(tmp, path)


def write_day(rows: pl.DataFrame, root: Path, day: date, fleet: FleetSchema = INTEL_LAB) -> PartitionStats:
    """Replace the lake's partition for `day` with the rows of `rows` whose ts falls on that UTC day."""
    return _write_partition(conform_to_lake(rows, fleet).filter(pl.col("ts").dt.date() == day), root, day)


def write_days(rows: pl.DataFrame, root: Path, fleet: FleetSchema = INTEL_LAB) -> LakeWriteSummary:
    """Replace the partition of every day present in `rows`; other days stay untouched."""
    rows = conform_to_lake(rows, fleet)
    by_day = rows.with_columns(pl.col("ts").dt.date().alias("_day")).partition_by("_day", as_dict=True)
    stats = [
        _write_partition(frame.drop("_day"), root, day)
        for (day,), frame in sorted(by_day.items(), key=lambda item: item[0])
    ]
    return LakeWriteSummary(partitions=tuple(stats))


def list_partitions(root: Path) -> list[date]:
    """Days that have a partition file, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    days = []
    for child in root.iterdir():
        match = _PARTITION_DIR.fullmatch(child.name)
        if match and (child / PARTITION_FILE).is_file():
            days.append(date.fromisoformat(match.group(1)))
    return sorted(days)


def scan_lake(
    root: Path,
    start: date | str | None = None,
    end: date | str | None = None,
    devices: Iterable[str] | None = None,
) -> pl.LazyFrame:
    """The lake's rows for days `start`..`end` (inclusive, either open) as its `lake_schema` + ``date``."""
    first = date.fromisoformat(start) if isinstance(start, str) else start
    last = date.fromisoformat(end) if isinstance(end, str) else end
    days = [d for d in list_partitions(root) if (first is None or d >= first) and (last is None or d <= last)]
    schema = lake_schema(lake_fleet(root))
    columns = [*schema, PARTITION_COLUMN]
    if not days:
        return pl.LazyFrame(schema={**schema, PARTITION_COLUMN: pl.Date()})
    frame = pl.scan_parquet(
        [partition_path(root, d) for d in days],
        hive_partitioning=True,
        hive_schema={PARTITION_COLUMN: pl.Date()},
    ).select(columns)
    if devices is not None:
        frame = frame.filter(pl.col("device_id").is_in(list(devices)))
    return frame


def write_rejects(rejects: pl.DataFrame, root: Path) -> Path:
    """Replace the lake's rejects file (source, line, raw, reason) with `rejects`."""
    path = Path(root) / REJECTS_FILE
    write_parquet_atomic(rejects.select(pl.col(n).cast(t) for n, t in REJECT_SCHEMA.items()), path)
    return path


def read_rejects(root: Path) -> pl.DataFrame:
    path = Path(root) / REJECTS_FILE
    return pl.read_parquet(path) if path.is_file() else pl.DataFrame(schema=REJECT_SCHEMA)


def ingest(sources: Sequence[Path], root: Path) -> IngestSummary:
    """Parse Intel Lab files and write every day they cover, plus the rejects file, into the lake."""
    parsed = parse_files(sources)
    lake = write_days(parsed.rows, root)
    return IngestSummary(
        lines=parsed.lines,
        rejects=parsed.rejects.height,
        rejects_by_reason=parsed.rejects_by_reason(),
        rejects_path=write_rejects(parsed.rejects, root),
        lake=lake,
        sources=tuple(Path(s) for s in sources),
    )


def conform_to_lake(rows: pl.DataFrame, fleet: FleetSchema = INTEL_LAB) -> pl.DataFrame:
    """`rows` with exactly the fleet's lake columns, refusing any other dtype rather than casting it."""
    schema = lake_schema(fleet)
    missing = [name for name in schema if name not in rows.columns]
    wrong = [
        f"{n}: {rows.schema[n]} (want {t})"
        for n, t in schema.items()
        if n in rows.columns and rows.schema[n] != t
    ]
    if missing or wrong:
        raise ValueError(f"rows do not match the {fleet.ref} lake: missing {missing}, wrong dtypes {wrong}")
    return rows.select(list(schema))


def _write_partition(rows: pl.DataFrame, root: Path, day: date) -> PartitionStats:
    # Sorted so the same rows always give the same file, whatever order they came in.
    rows = rows.sort("ts", "device_id", "epoch", maintain_order=True)
    path = partition_path(root, day)
    write_parquet_atomic(rows, path)
    return PartitionStats(
        day=day, rows=rows.height, devices=rows["device_id"].n_unique(), flags=FlagCounts.of(rows), path=path
    )


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and not *.parquet, so no reader ever picks up a half-written temp file.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
