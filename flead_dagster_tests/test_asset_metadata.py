"""What the Dagster UI shows of each asset: kinds, owners, code version, column schemas, and the
anomaly report's charts as tables drawn inline (a real `materialize` of the report asset)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from dagster import (
    MarkdownMetadataValue,
    PathMetadataValue,
    TableMetadataValue,
    TableSchemaMetadataValue,
    materialize,
)

from flead.datasets.inject import LABELLED_SCHEMA
from flead.datasets.lake import write_days
from flead.evaluation.batch_scoring import SCORED_SCHEMA
from flead.reporting.anomaly_report import CHARTS
from flead.schema import LAKE_SCHEMA
from flead_dagster.asset_metadata import COLUMN_SCHEMA, OWNERS, frame_table, text_bar
from flead_dagster.definitions import defs
from flead_dagster.defs.assets.report import REPORT_DAYS, anomaly_report
from flead_dagster.defs.jobs import MAIN_JOB_JOBS
from flead_dagster.defs.resources import FleadResource
from flead_dagster_tests.helpers.reports import NEW, OLD, evaluation_rows, lake_rows, write_evaluation

TABLES = {
    "readings_lake": list(LAKE_SCHEMA),
    "labelled_benchmark": list(LABELLED_SCHEMA),
    "global_model_evaluation": [n for n in SCORED_SCHEMA.names if n != "date"],  # the day is the folder
}


def asset_nodes():
    return {node.key.to_user_string(): node for node in defs.get_repository_def().asset_graph.asset_nodes}


def test_every_asset_has_kinds_owners_and_a_code_version():
    nodes = asset_nodes()
    assert len(nodes) >= 11 and {"readings_lake", "anomaly_report", "stream_trainer"} <= set(nodes)
    for name, node in nodes.items():
        kinds = {tag.removeprefix("dagster/kind/") for tag in node.tags if tag.startswith("dagster/kind/")}
        assert kinds, f"{name} has no kinds"
        assert list(node.owners) == OWNERS, name
        assert node.code_version, f"{name} has no code version"
    assert {"spark", "parquet"} <= {
        t.removeprefix("dagster/kind/") for t in nodes["global_model_evaluation"].tags
    }


def test_lake_and_evaluation_assets_declare_their_columns():
    nodes = asset_nodes()
    for name, columns in TABLES.items():
        value = nodes[name].metadata[COLUMN_SCHEMA]
        assert isinstance(value, TableSchemaMetadataValue), name
        declared = value.value.columns
        assert [c.name for c in declared] == columns, name
        assert all(c.description for c in declared), name
    lake = {c.name: c.type for c in nodes["readings_lake"].metadata[COLUMN_SCHEMA].value.columns}
    assert (
        lake["ts"] == "timestamp[us, UTC]"
        and lake["temperature"] == "float64"
        and lake["low_battery"] == "bool"
    )


def test_the_main_job_steps_are_named_jobs_of_the_definitions():
    repository = defs.get_repository_def()
    names = [job.name for job in MAIN_JOB_JOBS]
    assert len(set(names)) == len(names) == 7
    assert set(names) <= {job.name for job in repository.get_all_jobs()}
    selected = {
        name: {key.to_user_string() for key in defs.resolve_job_def(name).asset_layer.executable_asset_keys}
        for name in names
    }
    assert selected["replay_job"] == {"stream_replay"} and selected["report_job"] == {"anomaly_report"}
    assert selected["benchmark_job"] == {"device_registry", "labelled_benchmark"}
    assert set().union(*selected.values()) == {
        "raw_intel_lab",
        "readings_lake",
        "device_registry",
        "labelled_benchmark",
        "stream_replay",
        "global_model",
        "global_model_evaluation",
        "anomaly_report",
    }


def test_text_bars_and_tables():
    assert text_bar(10, 10, width=8) == "█" * 8
    assert text_bar(5, 10, width=8) == "████"
    assert text_bar(1, 80, width=8) == "▏"  # a positive value never vanishes
    assert text_bar(0, 10) == text_bar(float("nan"), 10) == text_bar(3, 0) == ""
    table = frame_table(
        pl.DataFrame({"day": ["a", "b"], "alarms": [4.0, float("nan")]}), bar="alarms", width=4
    )
    assert [r.data for r in table.records] == [
        {"day": "a", "alarms": 4.0, "chart": "████"},
        {"day": "b", "alarms": None, "chart": ""},  # NaN is not JSON: the UI would drop the row
    ]
    assert [c.name for c in table.schema.columns] == ["day", "alarms", "chart"]


@pytest.fixture
def report_home(tmp_path) -> Path:
    home = tmp_path / "home"
    rows = lake_rows()
    write_days(rows, home / "lake")
    for version in (OLD, NEW):
        write_evaluation(evaluation_rows(rows, version), home / "evaluations", version)
    return home


def test_the_report_asset_shows_its_charts_inline(report_home):
    result = materialize(
        [anomaly_report], resources={"flead": FleadResource(overrides={"home": str(report_home)})}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("anomaly_report")[0].metadata
    assert metadata["version"].value == NEW
    per_day = metadata["alarms_per_day"]
    assert isinstance(per_day, TableMetadataValue)  # drawn inline, unlike Markdown past 1,000 characters
    days = [r.data for r in per_day.records]
    assert [d["date"] for d in days] == ["2004-03-01", "2004-03-02"] and len(days) <= REPORT_DAYS
    assert max(days, key=lambda d: d["alarms"])["chart"] == "█" * 24  # the bar is the chart
    for day in days:
        assert len(day["chart"]) <= 24 and (day["chart"] == "") == (day["alarms"] == 0)
    devices = metadata["alarm_rate_per_device"]
    assert isinstance(devices, TableMetadataValue)
    rates = [r.data["alarm_rate"] for r in devices.records]
    assert rates == sorted(rates, reverse=True) and {r.data["device_id"] for r in devices.records} >= {
        "mote-01"
    }
    assert isinstance(metadata["top_device_days"], TableMetadataValue)
    for name in CHARTS:
        path = metadata[f"chart_{name}"]
        assert isinstance(path, PathMetadataValue) and Path(path.value).is_file()
    inline_markdown = [
        key
        for key, value in metadata.items()
        if isinstance(value, MarkdownMetadataValue) and len(value.value) < 1000
    ]
    hidden = {key for key, value in metadata.items() if isinstance(value, MarkdownMetadataValue)}
    assert hidden - set(inline_markdown) == {"report", "chart_images"}  # the whole report, one click away
    assert "data:image/png;base64," in metadata["chart_images"].value
