"""The report stage: DuckDB over the lake and the newest evaluation, rebuilt after each evaluation."""

import base64
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue

from flead.reporting.anomaly_report import AnomalyReport, build_report
from flead_dagster.asset_metadata import flead_asset, frame_table
from flead_dagster.defs.assets.model import global_model_evaluation
from flead_dagster.defs.resources import FleadResource

# Rebuilt after any new evaluation partition (not `eager()`: that waits until every day is evaluated).
REPORT_AFTER_EVALUATION = (
    AutomationCondition.any_deps_updated().since(
        AutomationCondition.newly_requested() | AutomationCondition.newly_updated()
    )
    & ~AutomationCondition.in_progress()
)


@flead_asset(
    group_name="model",
    deps=[global_model_evaluation],
    kinds={"duckdb", "matplotlib", "markdown"},
    automation_condition=REPORT_AFTER_EVALUATION,
    description="DuckDB over the lake and the newest evaluation: per-device and per-day summaries, charts.",
)
def anomaly_report(context: AssetExecutionContext, flead: FleadResource) -> MaterializeResult:
    settings = flead.settings()
    report = build_report(Path(settings.lake_dir), Path(settings.evaluations_dir), Path(settings.reports_dir))
    context.log.info(f"report of version {report.version} at {report.markdown_path}")
    return MaterializeResult(metadata=report_metadata(report))


REPORT_DAYS = 60  # rows of the per-day table on the asset page
REPORT_DEVICES = 20  # rows of the per-device table (highest alarm rate first)


def report_metadata(report: AnomalyReport) -> dict[str, object]:
    """The report on the asset page: totals, then the charts as tables drawn inline (each with a
    column of text bars), the PNG files' paths, and the Markdown report and the PNGs themselves
    (Markdown this long stays behind "[Show Markdown]" in Dagster 1.13)."""
    per_day = report.per_day.select(
        "date", "scored", "alarms", "alarms_out_of_range", "out_of_range_without_alarm", "alarm_rate"
    )
    per_device = report.per_device.filter(pl.col("scored") > 0).select(
        "device_id", "scored", "alarms", "alarm_rate", "days_with_alarms", "max_score"
    )
    top = report.top_device_days.select("device_id", "date", "scored", "alarms", "alarm_rate", "max_score")
    images = "\n\n".join(
        f"![{name}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
        for name, path in report.png.items()
    )
    return {
        "version": report.version,
        **{k: v for k, v in report.totals.items() if v is not None},
        "alarms_per_day": frame_table(per_day.tail(REPORT_DAYS), bar="alarms"),
        "alarm_rate_per_device": frame_table(per_device.head(REPORT_DEVICES), bar="alarm_rate"),
        "top_device_days": frame_table(top, bar="alarms"),
        **{f"chart_{name}": MetadataValue.path(str(path)) for name, path in report.png.items()},
        "path": MetadataValue.path(str(report.markdown_path)),
        "report": MetadataValue.md(report.markdown),
        "chart_images": MetadataValue.md(images),
    }
