"""The synthetic fleet: deterministic, in the real raw format, and realistic where it matters."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flead.datasets import synthetic
from flead.datasets.synthetic import EPOCH_SECONDS, generate_fleet

REAL_DATA = Path("/work/shared/data/intel_lab")
START = date(2004, 2, 28)  # a Saturday: the 8-day window has 4 weekend days and 5 weekdays
NUMBER = r"-?\d+(\.\d+)?"
STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{0,5}[1-9])?"  # no trailing zeros in the fraction
LINE = rf"^{STAMP} \d+ \d+ {NUMBER} {NUMBER} {NUMBER} {NUMBER}$"


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.read().splitlines()


def parse(lines: list[str]) -> pl.DataFrame:
    fields = pl.DataFrame({"line": lines}).select(pl.col("line").str.split(" ").alias("f"))
    get = pl.col("f").list.get
    return fields.select(
        (get(0) + " " + get(1)).str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us").alias("ts"),
        get(2).cast(pl.Int64).alias("epoch"),
        get(3).cast(pl.Int64).alias("mote"),
        *(get(i + 4).cast(pl.Float64).alias(n) for i, n in enumerate(("t", "h", "l", "v"))),
    ).with_columns(hour=pl.col("ts").dt.hour(), weekday=pl.col("ts").dt.weekday() <= 5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticFleet:
    return generate_fleet(tmp_path_factory.mktemp("fleet"), n_devices=12, days=8, start=START, seed=7)


@pytest.fixture(scope="module")
def readings(fleet: synthetic.SyntheticFleet) -> pl.DataFrame:
    return parse(read_lines(fleet.paths[0]))


@pytest.fixture(scope="module")
def healthy(readings: pl.DataFrame, fleet: synthetic.SyntheticFleet) -> pl.DataFrame:
    return readings.filter(~pl.col("mote").is_in(fleet.failing_devices))


def test_same_seed_same_bytes_whatever_the_file_layout(tmp_path: Path) -> None:
    one = generate_fleet(tmp_path / "a", n_devices=5, days=2, seed=3)
    again = generate_fleet(tmp_path / "b", n_devices=5, days=2, seed=3)
    split = generate_fleet(tmp_path / "c", n_devices=5, days=2, seed=3, per_device_files=True, gzip=True)
    split_again = generate_fleet(
        tmp_path / "e", n_devices=5, days=2, seed=3, per_device_files=True, gzip=True
    )
    other = generate_fleet(tmp_path / "d", n_devices=5, days=2, seed=4)

    assert one.paths[0].read_bytes() == again.paths[0].read_bytes()
    assert one.failures == again.failures == split.failures
    assert [p.name for p in split.paths] == [f"Node{m:02d}.txt.gz" for m in range(1, 6)]
    assert [line for p in split.paths for line in read_lines(p)] == read_lines(one.paths[0])
    assert [p.read_bytes() for p in split.paths] == [p.read_bytes() for p in split_again.paths]
    assert one.lines == split.lines == len(read_lines(one.paths[0]))
    assert other.paths[0].read_bytes() != one.paths[0].read_bytes()


def test_lines_are_in_the_real_format(fleet: synthetic.SyntheticFleet) -> None:
    lines = pl.Series(read_lines(fleet.paths[0]))
    assert lines.str.contains(LINE).all(), lines.filter(~lines.str.contains(LINE)).head(3).to_list()
    assert (lines.str.split(" ").list.len() == 8).all()
    # Microseconds without trailing zeros give fractional seconds of varying length, like the real file.
    fraction = lines.str.extract(r"^\S+ \d\d:\d\d:\d\d\.(\d+) ").str.len_chars()
    assert fraction.drop_nulls().n_unique() >= 3
    # Six significant digits and no ".0" on whole numbers, like C's %g.
    numbers = lines.str.split(" ").list.slice(4, 4).explode()
    assert not numbers.str.ends_with(".0").any()
    assert (
        numbers.str.replace(r"^-", "").str.replace(r"\.", "").str.strip_chars_start("0").str.len_chars() <= 6
    ).all()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real Intel Lab subset is not on this machine")
def test_the_format_check_accepts_the_real_file() -> None:
    lines = pl.Series(read_lines(REAL_DATA / "Node01.txt")[:20_000])
    assert lines.str.contains(LINE).all()


def test_fleet_shape(fleet: synthetic.SyntheticFleet, readings: pl.DataFrame) -> None:
    assert fleet.lines == readings.height
    assert sorted(readings["mote"].unique()) == list(range(1, 13))
    assert readings["ts"].min() >= datetime(2004, 2, 28)
    assert readings["ts"].max() < datetime(2004, 3, 7)
    assert readings["ts"].dt.date().n_unique() == 8

    per_mote = readings.group_by("mote", maintain_order=True).agg(
        pl.col("ts").diff().dt.total_seconds(fractional=True).alias("dt"),
        pl.col("epoch").diff().alias("de"),
        (
            (pl.col("ts") - datetime(2004, 2, 28)).dt.total_seconds(fractional=True)
            - pl.col("epoch") * EPOCH_SECONDS
        ).alias("lag"),
    )
    longest_gaps = []
    for row in per_mote.iter_rows(named=True):
        dt, de, lag = np.array(row["dt"][1:]), np.array(row["de"][1:]), np.array(row["lag"])
        assert (dt > 0).all() and (de > 0).all()  # a mote's lines are in time order
        consecutive = dt[de == 1]
        assert abs(np.median(consecutive) - EPOCH_SECONDS) < 1.0  # ~31 s cadence with jitter
        assert consecutive.std() > 0.05
        assert (lag >= 0).all() and (lag < 25).all()  # epoch is the deployment-wide ~31 s sequence
        assert (de > 1).mean() > 0.05  # dropped lines
        longest_gaps.append(dt.max())
    assert np.mean(np.array(longest_gaps) > 600) >= 0.75  # and outages of many minutes

    expected_epochs = math.ceil(8 * 86_400 / EPOCH_SECONDS)
    assert readings.height < 0.9 * 12 * expected_epochs


def test_temperature_follows_the_day(healthy: pl.DataFrame) -> None:
    by_mote = healthy.group_by("mote").agg(
        pl.col("t").filter(pl.col("hour").is_between(12, 16)).mean().alias("afternoon"),
        pl.col("t").filter(pl.col("hour").is_between(0, 5)).mean().alias("night"),
    )
    assert (by_mote["afternoon"] - by_mote["night"]).min() > 1.0
    hourly = healthy.group_by("hour").agg(pl.col("t").mean()).sort("hour")
    daylight = np.clip(np.sin(np.pi * (hourly["hour"].to_numpy() - 6) / 12), 0, None)
    assert np.corrcoef(hourly["t"].to_numpy(), daylight)[0, 1] > 0.7


def test_humidity_falls_as_temperature_rises(healthy: pl.DataFrame) -> None:
    corr = healthy.group_by("mote").agg(pl.corr("t", "h").alias("r"))["r"]
    assert corr.max() < -0.3


def test_lights_are_on_in_office_hours_on_weekdays(healthy: pl.DataFrame) -> None:
    office = healthy.filter(pl.col("hour").is_between(9, 16))
    by_mote = office.group_by("mote").agg(
        pl.col("l").filter(pl.col("weekday")).mean().alias("weekday"),
        pl.col("l").filter(~pl.col("weekday")).mean().alias("weekend"),
    )
    night = healthy.filter(pl.col("hour") < 5).group_by("mote").agg(pl.col("l").mean().alias("night"))
    both = by_mote.join(night, on="mote")
    assert (both["weekday"] > both["weekend"]).mean() >= 0.75  # sunny weekends can outshine a window mote
    assert both["weekday"].mean() > 1.5 * both["weekend"].mean()
    assert (both["weekday"] > both["night"] + 100).all()


def test_failing_devices_fail_like_the_real_motes(
    fleet: synthetic.SyntheticFleet, readings: pl.DataFrame, healthy: pl.DataFrame
) -> None:
    assert len(fleet.failures) == round(0.3 * 12)
    assert healthy["t"].max() < 60
    assert healthy["h"].min() > 0
    for failure in fleet.failures:
        start = failure.start.replace(tzinfo=None)
        mote = readings.filter(pl.col("mote") == failure.mote_id)
        before, after = mote.filter(pl.col("ts") < start), mote.filter(pl.col("ts") >= start)
        assert before["t"].max() < 60
        assert after["t"].max() > 100
        assert before.filter(pl.col("ts") < datetime(2004, 2, 29))["v"].median() > 2.6
        near = mote.filter((pl.col("ts") - start).abs() < timedelta(hours=3))["v"]
        assert near.is_between(2.2, 2.4).all()
        if failure.battery_dead is not None:
            assert mote["ts"].max() < failure.battery_dead.replace(tzinfo=None)
            assert after["v"].min() < 2.15
        if mote["ts"].max() > start + timedelta(hours=60):
            assert after["h"].min() < 0  # humidity collapses a day or two after the temperature


def test_batteries_run_down(healthy: pl.DataFrame) -> None:
    first = healthy.filter(pl.col("ts") < datetime(2004, 2, 29)).group_by("mote").agg(pl.col("v").mean())
    last = healthy.filter(pl.col("ts") >= datetime(2004, 3, 6)).group_by("mote").agg(pl.col("v").mean())
    both = first.join(last, on="mote", suffix="_last")
    assert (both["v"] - both["v_last"]).min() > 0.02
    assert healthy["v"].max() < 2.85


def test_failure_ground_truth_frame(fleet: synthetic.SyntheticFleet) -> None:
    frame = fleet.failures_frame()
    assert frame["mote_id"].to_list() == list(fleet.failing_devices)
    assert frame["failure_start"].dtype == pl.Datetime("us", "UTC")
    assert all(f.start.tzinfo is UTC for f in fleet.failures)
    assert fleet.failure_starts == dict(zip(frame["mote_id"], frame["failure_start"], strict=True))


def test_missing_fields_cut_the_end_of_lines(tmp_path: Path) -> None:
    made = generate_fleet(tmp_path, n_devices=3, days=1, seed=1, missing_field_rate=0.2)
    counts = pl.Series("fields", read_lines(made.paths[0])).str.split(" ").list.len().value_counts()
    seen = dict(zip(counts["fields"], counts["count"], strict=True))
    assert set(seen) == {4, 6, 7, 8}
    assert seen[8] > 3 * sum(seen[k] for k in (4, 6, 7))


def test_chunks_split_devices_and_report_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "CHUNK_CELLS", 1)  # one device per chunk
    calls: list[tuple[int, int]] = []
    made = generate_fleet(
        tmp_path,
        n_devices=4,
        days=1,
        seed=2,
        per_device_files=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    for mote, path in enumerate(made.paths, start=1):
        motes = {int(line.split(" ")[3]) for line in read_lines(path)}
        assert motes == {mote}


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_fleet(tmp_path, n_devices=0)
    with pytest.raises(ValueError):
        generate_fleet(tmp_path, days=1, failing_fraction=1.5)
