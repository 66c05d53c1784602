"""Raw source -> staged -> lake -> registry -> labelled set, through the core and through `flead data`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from flead.config import Settings
from flead.datasets import lake, pipeline
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet

FLEAD = str(Path(sys.executable).parent / "flead")
SHARED = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "home"))
    return Settings()


def test_synthetic_fleet_round_trips_through_the_parser_into_the_lake(settings):
    raw = pipeline.acquire(
        settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(60, 3, 7)
    )
    assert raw.mote_ids == range(1, 61)  # beyond the deployment's 54 motes
    staged = pipeline.stage(raw, settings)
    lines = sum(1 for path in raw.files for _ in path.open())
    assert (staged.lines, staged.rows, staged.rejects) == (lines, lines, 0)
    assert staged.devices == 60
    assert staged.days == ["2004-02-28", "2004-02-29", "2004-03-01"]

    written = pipeline.write_lake_days(settings, pipeline.dataset_days(settings)[:3])
    assert written.rows == lines
    rows = lake.scan_lake(Path(settings.lake_dir)).collect()
    assert rows.height == lines and rows["device_id"].n_unique() == 60

    # The planted battery failures arrive in the lake flagged; healthy devices are never flagged.
    fleet = generate_fleet(Path(settings.home) / "again", n_devices=60, days=3, seed=7)
    failing = {f"mote-{m:02d}" for m in fleet.failing_devices}
    flagged = set(rows.filter(pl.col("out_of_range"))["device_id"].unique())
    assert failing and flagged and flagged <= failing


def test_path_source_rejects_mote_ids_beyond_its_range_with_a_reason(settings, tmp_path):
    folder = tmp_path / "fleet"
    generate_fleet(folder, n_devices=56, days=1, seed=1)
    narrow = pipeline.stage(pipeline.acquire(settings, pipeline.SourceKind.PATH, folder), settings)
    assert narrow.rejects_by_reason == {"mote id outside 1..54": narrow.lines - narrow.rows}
    assert narrow.rejects > 0
    wide = pipeline.acquire(settings, pipeline.SourceKind.PATH, folder, mote_ids=range(1, 57))
    assert pipeline.stage(wide, settings).rejects == 0


def test_rewriting_days_is_idempotent_and_touches_only_those_days(settings):
    pipeline.stage(
        pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(4, 3, 0)),
        settings,
    )
    days = pipeline.dataset_days(settings)[:3]
    pipeline.write_lake_days(settings, days)
    root = Path(settings.lake_dir)
    before = {
        d: (lake.partition_path(root, d).read_bytes(), lake.partition_path(root, d).stat().st_mtime_ns)
        for d in days
    }
    pipeline.write_lake_days(settings, [days[1]])
    after = {
        d: (lake.partition_path(root, d).read_bytes(), lake.partition_path(root, d).stat().st_mtime_ns)
        for d in days
    }
    assert after[days[1]][0] == before[days[1]][0] and after[days[1]][1] != before[days[1]][1]
    assert after[days[0]] == before[days[0]] and after[days[2]] == before[days[2]]


def test_registry_and_labelled_set(settings):
    pipeline.stage(
        pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(5, 2, 3)),
        settings,
    )
    pipeline.write_lake_days(settings, pipeline.dataset_days(settings)[:2])
    registry = pipeline.build_device_registry(settings)
    assert registry["device_id"].to_list() == [f"mote-0{i}" for i in range(1, 6)]
    assert registry["readings"].sum() == lake.scan_lake(Path(settings.lake_dir)).collect().height
    assert pl.read_parquet(pipeline.registry_path(settings)).equals(registry)

    labelled = pipeline.label_lake(settings, seed=1)
    assert labelled.events.height > 0
    on_disk = pl.read_parquet(Path(settings.labelled_dir) / "date=*" / lake.PARTITION_FILE)
    assert on_disk["label"].sum() == labelled.readings["label"].sum() > 0
    # Relabelling fewer days rebuilds the set whole: no stale day survives.
    pipeline.label_lake(settings, [date(2004, 2, 28)], seed=1)
    assert lake.list_partitions(Path(settings.labelled_dir)) == [date(2004, 2, 28)]


def test_download_source_falls_back_to_synthetic_when_offline(settings, monkeypatch):
    monkeypatch.setenv("FLEAD_INTEL_LAB_DATA_URL", "http://127.0.0.1:9/data.txt.gz")  # nothing listens on 9
    offline = Settings()
    raw = pipeline.acquire(offline, pipeline.SourceKind.AUTO, synthetic=pipeline.SyntheticSpec(3, 1, 0))
    assert raw.kind is pipeline.SourceKind.SYNTHETIC
    assert "download failed" in raw.note and "synthetic" in raw.note
    with pytest.raises(Exception, match="could not download"):
        pipeline.acquire(offline, pipeline.SourceKind.DOWNLOAD)


def test_write_lake_days_without_staging_is_a_clear_error(settings):
    with pytest.raises(FileNotFoundError, match="flead data ingest"):
        pipeline.write_lake_days(settings, [date(2004, 3, 1)])


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([FLEAD, "data", *args], env=env, capture_output=True, text=True, timeout=300)


def test_cli_synth_ingest_inject_inspect(tmp_path):
    home = tmp_path / "home"
    synth = run(
        home, "synth", "--devices", "58", "--days", "2", "--seed", "5", "--out", str(tmp_path / "raw")
    )
    assert synth.returncode == 0, synth.stdout + synth.stderr

    ingest = run(home, "ingest", str(tmp_path / "raw"), "--max-mote", "58")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "0 rejects" in ingest.stdout and "rows per device" in ingest.stdout
    rows = lake.scan_lake(home / "lake").collect()
    assert rows["device_id"].n_unique() == 58 and set(rows["date"].unique()) == {
        date(2004, 2, 28),
        date(2004, 2, 29),
    }

    inject = run(home, "inject", "--seed", "2", "--rate-scale", "2")
    assert inject.returncode == 0, inject.stdout + inject.stderr
    assert "injected anomalies" in inject.stdout

    inspect = run(home, "inspect")
    assert (
        inspect.returncode == 0
        and "lake: rows per day" in inspect.stdout
        and "injected anomalies" in inspect.stdout
    )


def test_cli_ingest_of_a_damaged_copy_accounts_for_every_line(tmp_path):
    raw = tmp_path / "damaged"
    generate_fleet(raw, n_devices=3, days=1, seed=4, per_device_files=True)
    node = raw / "Node02.txt"
    lines = node.read_text().splitlines()
    damaged = [
        *lines[:10],
        lines[10].rsplit(" ", 2)[0],  # cut short: keeps the row, flags missing fields
        "",  # blank
        "garbage ~~ not a reading",
        lines[12],
        lines[12],  # the same packet twice
        lines[13].split(" ")[0],  # cut to one field
        *lines[14:],
    ]
    node.write_text("\n".join(damaged) + "\n")
    expected = sum(len(p.read_text().splitlines()) for p in raw.glob("Node*.txt"))

    result = run(tmp_path / "home", "ingest", str(raw))
    assert result.returncode == 0, result.stdout + result.stderr
    rejects = lake.read_rejects(tmp_path / "home" / "lake")
    by_line = dict(
        rejects.filter(pl.col("source").str.ends_with("Node02.txt")).select("line", "reason").iter_rows()
    )
    assert by_line == {
        12: "blank line",
        13: "bad timestamp",
        15: "duplicate",
        16: "fewer than 4 fields",
    }
    rows = lake.scan_lake(tmp_path / "home" / "lake").collect()
    assert rows.height + rejects.height == expected
    assert rows.filter(pl.col("missing_fields")).height == 1
    # The summary's rejects table: a named count column (not polars' "len"), one row per reason.
    table = result.stdout[result.stdout.index("rejected lines by reason") :]
    header = next(line for line in table.splitlines() if "reason" in line and "┃" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == ["reason", "lines"], header
    assert re.search(r"│ blank line\s+│\s+1 │", table), table


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared 9-mote Intel Lab folder is not beside the repo")
def test_cli_ingest_of_the_shared_real_motes(tmp_path):
    copy = tmp_path / "intel_lab"
    shutil.copytree(SHARED, copy)
    result = run(tmp_path / "home", "ingest", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = lake.scan_lake(tmp_path / "home" / "lake").collect()
    parsed = parse_files(sorted(copy.glob("Node*.txt")))
    assert rows.height == parsed.rows.height == parsed.lines - 2  # two packets the gateway logged twice
    last = rows.filter(pl.col("device_id") == "mote-01").sort("ts").tail(1).row(0, named=True)
    assert last["temperature"] == 121.997 and last["out_of_range"] and last["date"] == date(2004, 3, 31)
    registry = pipeline.build_device_registry(Settings(home=tmp_path / "home"))
    assert registry["x"].null_count() == 0  # mote_locs.txt beside the data gives every mote its place
