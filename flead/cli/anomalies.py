"""`flead anomalies export`: anomalous readings to CSV or Parquet, page by page from the global API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer

from flead.cli.output import console, fail
from flead.config import Settings

anomalies_app = typer.Typer(help="Anomalous readings: export them.", no_args_is_help=True)


class ExportFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


@anomalies_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="File to write (its folder is created)."),
    fmt: ExportFormat = typer.Option(ExportFormat.csv, "--format", help="csv or parquet."),
    start: str = typer.Option(None, help="Readings at or after this time (ISO 8601, UTC if naive)."),
    end: str = typer.Option(None, help="Readings before this time (ISO 8601)."),
    device: str = typer.Option(None, help="Only this device."),
    min_score: float = typer.Option(None, help="Only scores at least this."),
) -> None:
    """Export anomalous readings, newest first, read page by page from the global API (FLEAD_API_URL)."""
    from flead.api_client import ApiError, GlobalApiClient
    from flead.exports import anomaly_columns, anomaly_row, write_rows

    bounds = {}
    for name, text in (("since", start), ("until", end)):
        if text is not None:
            try:
                bounds[name] = datetime.fromisoformat(text).isoformat()
            except ValueError:
                raise fail(
                    f"--{'start' if name == 'since' else 'end'} {text!r} is not an ISO 8601 time", 2
                ) from None
    settings = Settings()
    token = settings.api_key.get_secret_value() if settings.api_key is not None else None
    client = GlobalApiClient(settings.api_url, token)
    params = {
        k: v
        for k, v in {
            **bounds,
            "device": device,
            "min_score": min_score,
        }.items()
        if v is not None
    }
    names = settings.fleet.columns
    rows = (anomaly_row(item, names) for item in client.items("/api/anomalies", params))
    try:
        count = write_rows(rows, anomaly_columns(names), out, fmt.value)
    except ApiError as exc:
        out.unlink(missing_ok=True)  # no partial export left behind
        raise fail(str(exc)) from None
    console.print(f"wrote {count} anomalous readings to {out} ({fmt.value})")
