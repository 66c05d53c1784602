"""The day-partitioned Parquet lake: layout, idempotent rewrites, range scans, ingest summaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flead.datasets.lake import (
    FlagCounts,
    ingest,
    list_partitions,
    partition_path,
    read_rejects,
    scan_lake,
    write_day,
    write_days,
)
from flead.schema import LAKE_SCHEMA

DAY_A, DAY_B, DAY_C = date(2004, 3, 1), date(2004, 3, 2), date(2004, 3, 3)


def rows(*readings: tuple[str, datetime, float], low_battery: bool = False) -> pl.DataFrame:
    """Lake rows from (device, ts, temperature); a temperature above 60 is out of range."""
    return pl.DataFrame(
        [
            {
                "device_id": device,
                "ts": ts,
                "epoch": i,
                "temperature": temperature,
                "humidity": 40.0,
                "light": 100.0,
                "voltage": 2.2 if low_battery else 2.6,
                "out_of_range": temperature > 60,
                "low_battery": low_battery,
                "missing_fields": False,
            }
            for i, (device, ts, temperature) in enumerate(readings)
        ],
        schema=LAKE_SCHEMA,
    )


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


@pytest.fixture
def two_days() -> pl.DataFrame:
    return rows(
        ("mote-02", at(DAY_B, 9), 21.0),
        ("mote-01", at(DAY_A, 23, 59), 122.0),
        ("mote-01", at(DAY_A, 0), 20.0),
        ("mote-02", at(DAY_A, 0), 19.5),
        ("mote-01", at(DAY_B, 0, 1), 20.5),
    )


def test_write_days_lays_out_one_file_per_utc_day(tmp_path: Path, two_days: pl.DataFrame) -> None:
    summary = write_days(two_days, tmp_path)
    assert summary.rows_per_day() == {DAY_A: 3, DAY_B: 2}
    assert summary.rows == 5
    assert summary.flags == FlagCounts(out_of_range=1, low_battery=0, missing_fields=0)
    assert [p.devices for p in summary.partitions] == [2, 2]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "date=2004-03-01/part-0.parquet",
        "date=2004-03-02/part-0.parquet",
    ]
    day_a = pl.read_parquet(partition_path(tmp_path, DAY_A))
    assert day_a.schema == pl.Schema(LAKE_SCHEMA)
    # Sorted by time, then device, whatever order the rows came in.
    assert day_a.select("device_id", "temperature").rows() == [
        ("mote-01", 20.0),
        ("mote-02", 19.5),
        ("mote-01", 122.0),
    ]
    assert list_partitions(tmp_path) == [DAY_A, DAY_B]


def test_rewriting_a_day_is_idempotent_and_leaves_other_days_alone(tmp_path: Path, two_days) -> None:
    write_days(two_days, tmp_path)
    file_a, file_b = partition_path(tmp_path, DAY_A), partition_path(tmp_path, DAY_B)
    bytes_a, bytes_b, stat_b = file_a.read_bytes(), file_b.read_bytes(), file_b.stat()

    write_day(two_days.reverse(), tmp_path, DAY_A)  # same rows, other order: the very same file
    assert file_a.read_bytes() == bytes_a
    assert file_b.stat().st_mtime_ns == stat_b.st_mtime_ns and file_b.stat().st_ino == stat_b.st_ino

    stats = write_day(rows(("mote-03", at(DAY_A, 12), 18.0)), tmp_path, DAY_A)  # replaced, not appended
    assert stats.rows == 1
    assert pl.read_parquet(file_a)["device_id"].to_list() == ["mote-03"]
    assert file_b.read_bytes() == bytes_b
    assert sorted(p.name for p in file_a.parent.iterdir()) == ["part-0.parquet"]  # no temp files left


def test_write_day_takes_only_that_days_rows(tmp_path: Path, two_days) -> None:
    stats = write_day(two_days, tmp_path, DAY_B)
    assert (stats.day, stats.rows, stats.path) == (DAY_B, 2, partition_path(tmp_path, DAY_B))
    assert list_partitions(tmp_path) == [DAY_B]
    # A day without rows still gets a (empty) file, so rerunning it clears what was there.
    write_day(two_days, tmp_path, DAY_A)
    assert write_day(two_days, tmp_path, DAY_C).rows == 0
    assert pl.read_parquet(partition_path(tmp_path, DAY_C)).schema == pl.Schema(LAKE_SCHEMA)
    assert list_partitions(tmp_path) == [DAY_A, DAY_B, DAY_C]


def test_rows_must_match_the_lake_schema(tmp_path: Path, two_days) -> None:
    with pytest.raises(ValueError, match="missing \\['low_battery'\\]"):
        write_days(two_days.drop("low_battery"), tmp_path)
    with pytest.raises(ValueError, match="epoch"):
        write_days(two_days.with_columns(pl.col("epoch").cast(pl.Int32)), tmp_path)
    assert list_partitions(tmp_path) == []


def test_scan_lake_filters_days_and_devices(tmp_path: Path) -> None:
    readings = [
        (f"mote-0{m}", at(DAY_A + timedelta(days=d), 6 + m), 20.0 + d) for d in range(3) for m in (1, 2)
    ]
    write_days(rows(*readings), tmp_path)

    everything = scan_lake(tmp_path).collect()
    assert everything.schema == pl.Schema({**LAKE_SCHEMA, "date": pl.Date()})
    assert everything.height == 6
    assert everything.select((pl.col("ts").dt.date() == pl.col("date")).all()).item()

    middle = scan_lake(tmp_path, start=DAY_B, end="2004-03-02").collect()
    assert middle["date"].unique().to_list() == [DAY_B]
    assert scan_lake(tmp_path, start=DAY_B).collect()["date"].unique().sort().to_list() == [DAY_B, DAY_C]
    assert scan_lake(tmp_path, end=DAY_A).collect().height == 2

    mote_2 = scan_lake(tmp_path, devices=["mote-02"]).collect()
    assert mote_2["device_id"].unique().to_list() == ["mote-02"] and mote_2.height == 3

    nothing = scan_lake(tmp_path, start="2005-01-01").collect()
    assert nothing.height == 0 and nothing.schema == everything.schema
    assert scan_lake(tmp_path / "no-lake-here").collect().schema == everything.schema


def test_ingest_writes_days_and_rejects_and_accounts_for_every_line(tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    source.write_text(
        "2004-03-01 10:00:00.5 1 1 20 40 100 2.6\n"
        "2004-03-01 10:00:31 2 1 122.1 4 9 2.0\n"
        "garbage\n"
        "2004-03-02 00:00:01.25 3 2 21 41\n"
        "2004-03-02 00:00:01.25 3 2 21 41\n"
        "2004-03-02 00:00:02 4 77 21 41 1 2.5\n"
    )
    lake = tmp_path / "lake"
    summary = ingest([source], lake)
    assert (summary.lines, summary.rows, summary.rejects) == (6, 3, 3)
    assert summary.rejects_by_reason == {"duplicate": 1, "fewer than 4 fields": 1, "mote id outside 1..54": 1}
    assert summary.lake.rows_per_day() == {DAY_A: 2, DAY_B: 1}
    assert summary.lake.flags == FlagCounts(out_of_range=1, low_battery=1, missing_fields=1)
    assert read_rejects(lake).select("line", "reason").rows() == [
        (3, "fewer than 4 fields"),
        (5, "duplicate"),
        (6, "mote id outside 1..54"),
    ]
    assert scan_lake(lake).collect().height == 3
    assert list_partitions(lake) == [DAY_A, DAY_B]  # the rejects folder is no partition

    first = partition_path(lake, DAY_A).read_bytes()
    assert ingest([source], lake).rows == 3
    assert partition_path(lake, DAY_A).read_bytes() == first
    assert read_rejects(lake).height == 3
