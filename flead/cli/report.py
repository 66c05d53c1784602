"""`flead report`: the anomaly report (Markdown + PNG charts) of a batch evaluation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flead.cli.output import console, fail
from flead.config import Settings
from flead.reporting.anomaly_report import ReportError, build_report, format_cell

_TOTALS = {
    "readings": ("readings in the lake", ""),
    "scored": ("scored readings", ""),
    "out_of_range": ("out-of-range readings", ""),
    "alarms": ("alarms (model or rule)", ""),
    "alarm_rate": ("alarm rate", "rate"),
    "alarms_out_of_range": ("rule alarms (out of range)", ""),
    "devices": ("devices", ""),
    "days": ("days", ""),
    "labelled": ("labelled readings", ""),
    "precision": ("precision", "ratio"),
    "recall": ("recall", "ratio"),
    "f1": ("F1", "ratio"),
}


def report_command(
    version: int | None = typer.Option(
        None, "--version", min=0, help="Evaluation version to report (default: the newest present)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder of report.md and the charts (default: FLEAD_REPORTS_DIR)."
    ),
) -> None:
    """Per-device and per-day summaries, top device-days and charts of a batch evaluation."""
    settings = Settings()
    out_dir = Path(out) if out is not None else Path(settings.reports_dir)
    try:
        with console.status("building the anomaly report"):
            report = build_report(
                Path(settings.lake_dir), Path(settings.evaluations_dir), out_dir, version=version
            )
    except ReportError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"anomaly report, evaluation version {report.version}")
    table.add_column("total")
    table.add_column("value", justify="right")
    for key, (label, kind) in _TOTALS.items():
        table.add_row(label, format_cell(report.totals.get(key), kind))
    console.print(table)
    for name, path in report.png.items():
        console.print(f"chart {name}: {path}", highlight=False, soft_wrap=True)
    console.print(f"report: {report.markdown_path}", highlight=False, soft_wrap=True)
