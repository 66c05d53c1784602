"""The anomaly report: DuckDB summaries over a tiny lake and hand-made evaluations, charts, Markdown, CLI."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, timedelta
from pathlib import Path

import matplotlib.image
import polars as pl
import pytest
from typer.testing import CliRunner

from flead.datasets.lake import scan_lake, write_days
from flead.evaluation.metrics import point_scores
from flead.reporting import anomaly_report
from flead.reporting.anomaly_report import (
    CHARTS,
    MARKER_FILE,
    REPORT_FILE,
    ReportError,
    build_report,
    evaluation_versions,
)
from flead_cli import app
from flead_dagster_tests.helpers.reports import (
    DAY_3,
    EVAL_DAYS,
    NEW,
    OLD,
    PNG_MAGIC,
    evaluation_rows,
    lake_rows,
    write_evaluation,
)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    lake, evaluations = tmp_path / "lake", tmp_path / "evaluations"
    rows = lake_rows()
    write_days(rows, lake)
    for version in (OLD, NEW):
        write_evaluation(evaluation_rows(rows, version), evaluations, version)
    # A version still being written (no part file yet) is not an evaluation.
    (evaluations / "version=11" / "date=2004-03-01").mkdir(parents=True)
    (evaluations / "version=11" / "date=2004-03-01" / ".part-0.parquet.tmp").write_bytes(b"partial")
    return {"lake": lake, "evaluations": evaluations, "out": tmp_path / "reports"}


def read_evaluation(root: Path, version: int) -> pl.DataFrame:
    """A version's rows with a naive UTC ts and the day taken from the path."""
    frames = []
    for path in sorted((root / f"version={version}").glob("date=*/part-0.parquet")):
        frame = pl.read_parquet(path)
        if frame.schema["ts"].time_zone is not None:
            frame = frame.with_columns(pl.col("ts").dt.replace_time_zone(None))
        day = date.fromisoformat(path.parent.name.removeprefix("date="))
        frames.append(frame.drop("date", strict=False).with_columns(date=pl.lit(day)))
    return pl.concat(frames)


def expected_per_device(lake_dir: Path, evaluations_dir: Path, version: int) -> dict[str, dict]:
    """The per-device numbers computed independently, row by row, with polars and the metrics module."""
    ev = read_evaluation(evaluations_dir, version)
    lake = scan_lake(lake_dir, start=min(EVAL_DAYS), end=max(EVAL_DAYS)).collect()
    expected = {}
    for device in sorted(set(ev["device_id"]) | set(lake["device_id"])):
        rows = ev.filter(pl.col("device_id") == device)
        lk = lake.filter(pl.col("device_id") == device)
        alarms = rows.filter(pl.col("is_anomaly"))
        labelled = rows.filter(pl.col("label").is_not_null() & ~pl.col("out_of_range"))
        point = point_scores(labelled["is_anomaly"].to_numpy(), labelled["label"].to_numpy())
        scores = rows.filter(pl.col("score").is_not_nan())["score"]
        expected[device] = {
            "readings": lk.height,
            "out_of_range": int(lk["out_of_range"].sum()),
            "low_battery": int(lk["low_battery"].sum()),
            "scored": rows.height,
            "warmup": int(rows["threshold"].is_nan().sum()),
            "alarms": alarms.height,
            "alarm_rate": alarms.height / rows.height if rows.height else None,
            "alarms_out_of_range": int((rows["is_anomaly"] & rows["out_of_range"]).sum()),
            "first_alarm": alarms["ts"].min().replace(tzinfo=UTC) if alarms.height else None,
            "last_alarm": alarms["ts"].max().replace(tzinfo=UTC) if alarms.height else None,
            "max_score": float(scores.max()) if scores.len() else None,
            "labelled": labelled.height,
            "precision": point.precision,
            "recall": point.recall,
            "f1": point.f1,
        }
    return expected


def assert_row_matches(actual: dict, expected: dict, key: str) -> None:
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-6), f"{key} {name}: {got} != {want}"
        else:
            assert got == want, f"{key} {name}: {got!r} != {want!r}"


def test_per_device_summary_matches_an_independent_computation(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])

    assert report.version == NEW
    expected = expected_per_device(dirs["lake"], dirs["evaluations"], NEW)
    actual = {row["device_id"]: row for row in report.per_device.iter_rows(named=True)}
    assert set(actual) == {"mote-01", "mote-02", "mote-03", "mote-04", "mote-05"}
    for device, want in expected.items():
        assert_row_matches(actual[device], want, device)
    # the cases the fixture plants: an unscored lake device, a scored device missing from the lake
    assert actual["mote-04"]["scored"] == 0 and actual["mote-04"]["alarm_rate"] is None
    assert actual["mote-04"]["readings"] == 24
    assert actual["mote-05"]["readings"] == 0 and actual["mote-05"]["scored"] == 3
    assert actual["mote-02"]["out_of_range"] == 5 and actual["mote-02"]["alarms_out_of_range"] == 5
    # day 3 is in the lake but not evaluated: not counted
    assert actual["mote-01"]["readings"] == 24
    # sorted by alarm rate, highest first, unscored devices last
    rates = report.per_device["alarm_rate"].to_list()
    assert rates[-1] is None
    assert rates[:-1] == sorted(rates[:-1], reverse=True)


def test_per_day_summary_and_totals_match_an_independent_computation(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])

    ev = read_evaluation(dirs["evaluations"], NEW)
    lake = scan_lake(dirs["lake"]).collect()
    assert report.per_day["date"].to_list() == list(EVAL_DAYS)
    for row in report.per_day.iter_rows(named=True):
        rows = ev.filter(pl.col("date") == row["date"])
        lk = lake.filter(pl.col("date") == row["date"])
        alarms = rows.filter(pl.col("is_anomaly"))
        labelled = rows.filter(pl.col("label").is_not_null() & ~pl.col("out_of_range"))
        point = point_scores(labelled["is_anomaly"].to_numpy(), labelled["label"].to_numpy())
        assert_row_matches(
            row,
            {
                "devices": len(set(rows["device_id"]) | set(lk["device_id"])),
                "readings": lk.height,
                "scored": rows.height,
                "out_of_range": int(lk["out_of_range"].sum()),
                "alarms": alarms.height,
                "alarm_rate": alarms.height / rows.height,
                "alarms_out_of_range": int((rows["is_anomaly"] & rows["out_of_range"]).sum()),
                "devices_with_alarms": alarms["device_id"].n_unique(),
                "precision": point.precision,
                "recall": point.recall,
                "f1": point.f1,
            },
            str(row["date"]),
        )

    labelled = ev.filter(pl.col("label").is_not_null() & ~pl.col("out_of_range"))
    pooled = point_scores(labelled["is_anomaly"].to_numpy(), labelled["label"].to_numpy())
    assert pooled.f1 is not None
    assert_row_matches(
        report.totals,
        {
            "readings": lake.filter(pl.col("date").is_in(EVAL_DAYS)).height,
            "scored": ev.height,
            "alarms": int(ev["is_anomaly"].sum()),
            "devices": 5,
            "days": 2,
            "labelled": labelled.height,
            "f1": pooled.f1,
            "precision": pooled.precision,
            "recall": pooled.recall,
            "lake_days_not_evaluated": 1,
        },
        "totals",
    )


def test_top_device_days_are_the_device_days_with_most_alarms(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"], top_device_days=3)

    ev = read_evaluation(dirs["evaluations"], NEW)
    counts = (
        ev.group_by("device_id", "date")
        .agg(alarms=pl.col("is_anomaly").sum(), scored=pl.len())
        .filter(pl.col("alarms") > 0)
        .with_columns(alarm_rate=pl.col("alarms") / pl.col("scored"))
        .sort(["alarms", "alarm_rate", "device_id", "date"], descending=[True, True, False, False])
    )
    top = report.top_device_days
    assert top.height == 3
    assert (
        top.select("device_id", "date", "alarms").rows()
        == counts.head(3).select("device_id", "date", "alarms").rows()
    )
    everything = build_report(dirs["lake"], dirs["evaluations"], dirs["out"], top_device_days=100)
    assert (
        everything.top_device_days.select("device_id", "date", "alarms", "alarm_rate").rows()
        == counts.select("device_id", "date", "alarms", "alarm_rate").rows()
    )
    assert counts["alarm_rate"].to_list() != sorted(counts["alarm_rate"].to_list(), reverse=True)


def test_the_newest_version_is_chosen_by_number_and_any_version_on_request(dirs):
    assert sorted(evaluation_versions(dirs["evaluations"])) == [OLD, NEW]
    newest = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    old = build_report(dirs["lake"], dirs["evaluations"], dirs["out"], version=OLD)

    assert newest.version == NEW and old.version == OLD
    assert old.totals["alarms"] == int(read_evaluation(dirs["evaluations"], OLD)["is_anomaly"].sum())
    assert old.totals["alarms"] != newest.totals["alarms"]
    # no labels in OLD: no quality numbers and no quality columns
    assert old.totals["labelled"] == 0
    assert old.totals["f1"] is None and old.totals["precision"] is None
    assert old.per_device["f1"].null_count() == old.per_device.height
    assert "| F1 |" not in old.markdown and "no labels" in old.markdown
    assert "| F1 |" in newest.markdown
    expected = expected_per_device(dirs["lake"], dirs["evaluations"], OLD)
    for row in old.per_device.iter_rows(named=True):
        assert_row_matches(row, expected[row["device_id"]], row["device_id"])


def test_charts_are_valid_pngs_linked_from_the_markdown(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])

    assert set(report.png) == set(CHARTS)
    assert report.markdown_path == (dirs["out"] / REPORT_FILE).absolute()
    assert report.markdown_path.read_text(encoding="utf-8") == report.markdown
    for name, path in report.png.items():
        assert path.parent == report.markdown_path.parent
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 400, name
        assert pixels[..., :3].std() > 0.01, f"{name} is blank"
        assert f"]({path.name})" in report.markdown, name
    assert f"# Anomaly report: global model version {NEW}" in report.markdown


def test_markdown_tables_are_limited_and_say_how_many_more(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"], max_devices=2, max_days=1)

    devices = report.markdown.split("## Devices")[1].split("## Days")[0]
    table_rows = [line for line in devices.splitlines() if line.startswith("| mote-")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in table_rows] == report.per_device["device_id"][
        :2
    ].to_list()
    assert "and 3 more devices" in devices
    days = report.markdown.split("## Days")[1].split("## Top")[0]
    assert "| 2004-03-01 |" in days and "| 2004-03-02 |" not in days
    assert "and 1 more days" in days
    assert report.per_device.height == 5 and report.per_day.height == 2  # frames stay complete
    full = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    assert "more devices" not in full.markdown


def test_missing_evaluations_or_lake_raise_report_error(dirs, tmp_path):
    empty = tmp_path / "empty-evaluations"
    empty.mkdir()
    with pytest.raises(ReportError, match="no evaluation"):
        build_report(dirs["lake"], empty, dirs["out"])
    with pytest.raises(ReportError, match="no evaluation"):
        build_report(dirs["lake"], tmp_path / "does-not-exist", dirs["out"])
    with pytest.raises(ReportError, match="no evaluation of version 3"):
        build_report(dirs["lake"], dirs["evaluations"], dirs["out"], version=3)
    with pytest.raises(ReportError, match="no lake"):
        build_report(tmp_path / "no-lake", dirs["evaluations"], dirs["out"])
    assert not dirs["out"].exists()


def test_an_evaluation_without_required_columns_is_refused(dirs, tmp_path):
    broken = tmp_path / "broken"
    frame = evaluation_rows(lake_rows(), NEW).drop("is_anomaly")
    write_evaluation(frame, broken, 1)
    with pytest.raises(ReportError, match="is_anomaly"):
        build_report(dirs["lake"], broken, dirs["out"])


def test_an_evaluation_without_a_label_column_reports_no_quality(dirs, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    write_evaluation(evaluation_rows(lake_rows(), NEW).drop("label"), unlabelled, 1)
    report = build_report(dirs["lake"], unlabelled, dirs["out"])
    assert report.totals["labelled"] == 0 and report.totals["f1"] is None
    assert (
        report.totals["alarms"]
        == build_report(dirs["lake"], dirs["evaluations"], dirs["out"]).totals["alarms"]
    )


def test_rerun_replaces_the_old_report_and_leaves_no_temporary_folders(dirs):
    first = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    before = {name: path.read_bytes() for name, path in first.png.items()}
    second = build_report(dirs["lake"], dirs["evaluations"], dirs["out"], version=OLD)

    assert f"version {OLD}" in second.markdown_path.read_text(encoding="utf-8")
    assert json.loads((dirs["out"] / MARKER_FILE).read_text())["version"] == OLD
    assert any(path.read_bytes() != before[name] for name, path in second.png.items())
    assert sorted(p.name for p in dirs["out"].iterdir()) == sorted(
        [*CHARTS.values(), REPORT_FILE, MARKER_FILE]
    )
    assert [p.name for p in dirs["out"].parent.iterdir() if p.name.startswith(".reports")] == []


def test_a_failure_while_writing_keeps_the_previous_report(dirs, monkeypatch):
    build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    previous = {p.name: p.read_bytes() for p in dirs["out"].iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(anomaly_report, "_heatmap_chart", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(dirs["lake"], dirs["evaluations"], dirs["out"], version=OLD)

    assert {p.name: p.read_bytes() for p in dirs["out"].iterdir()} == previous
    assert [p.name for p in dirs["out"].parent.iterdir() if p.name.startswith(".reports")] == []


def test_a_folder_that_is_not_a_report_is_never_replaced(dirs):
    dirs["out"].mkdir()
    (dirs["out"] / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="not an anomaly report"):
        build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    assert [p.name for p in dirs["out"].iterdir()] == ["notes.txt"]


def test_a_lake_without_the_evaluated_days_still_gives_a_report(dirs, tmp_path):
    other_lake = tmp_path / "other-lake"
    write_days(lake_rows().filter(pl.col("ts").dt.date() == DAY_3), other_lake)
    report = build_report(other_lake, dirs["evaluations"], dirs["out"])
    assert report.totals["readings"] == 0
    assert report.totals["scored"] == read_evaluation(dirs["evaluations"], NEW).height
    assert report.per_device["readings"].sum() == 0


def test_cli_builds_the_report_with_settings_defaults_and_options(dirs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FLEAD_LAKE_DIR", str(dirs["lake"]))
    monkeypatch.setenv("FLEAD_EVALUATIONS_DIR", str(dirs["evaluations"]))
    monkeypatch.setenv("FLEAD_REPORTS_DIR", str(dirs["out"]))
    runner = CliRunner()

    result = runner.invoke(
        app,
        [
            "report",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert f"evaluation version {NEW}" in result.output
    assert str((dirs["out"] / REPORT_FILE).absolute()) in result.output
    alarms = int(read_evaluation(dirs["evaluations"], NEW)["is_anomaly"].sum())
    assert f"alarms (model or rule) {alarms}" in " ".join(result.output.replace("│", " ").split())
    assert (dirs["out"] / REPORT_FILE).is_file()

    elsewhere = tmp_path / "elsewhere"
    result = runner.invoke(
        app, ["report", "--version", str(OLD), "--out", str(elsewhere)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert f"evaluation version {OLD}" in result.output
    assert f"version {OLD}" in (elsewhere / REPORT_FILE).read_text(encoding="utf-8")

    result = runner.invoke(app, ["report", "--version", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "no evaluation of version 3" in result.output


def test_timestamps_are_utc_and_nan_scores_are_ignored(dirs):
    report = build_report(dirs["lake"], dirs["evaluations"], dirs["out"])
    assert report.per_device.schema["first_alarm"] == pl.Datetime("us", "UTC")
    assert all(
        v is None or (isinstance(v, float) and not math.isnan(v)) for v in report.per_device["max_score"]
    )
    first_alarm = report.per_device.filter(pl.col("device_id") == "mote-02")["first_alarm"][0]
    assert first_alarm.tzinfo is not None and first_alarm.utcoffset() == timedelta(0)
