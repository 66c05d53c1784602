"""`flead alerts ...` (the webhook notifier, services/notifier) and `flead anomalies export`."""

from __future__ import annotations

import logging
import signal
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer
from pymongo.errors import PyMongoError
from rich.table import Table

from flead.cli_output import console, fail
from flead.config import Settings, load_settings_or_exit

alerts_app = typer.Typer(help="Webhook notifications of anomaly events.", no_args_is_help=True)
anomalies_app = typer.Typer(help="Anomalous readings: export them.", no_args_is_help=True)


@alerts_app.command("run")
def run(
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between passes over events and the outbox."),
    once: bool = typer.Option(False, help="One pass, then exit (cron-style)."),
    log_level: str = typer.Option("INFO", envvar="FLEAD_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Follow the anomaly events and deliver webhook notifications until SIGTERM (FLEAD_ALERTS_*)."""
    from services.notifier.service import Notifier

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    )
    settings = load_settings_or_exit()  # also for `python -m services.notifier`
    if not settings.alert_urls:
        raise fail("no FLEAD_ALERTS_WEBHOOK_URLS: notifications are off", 2)
    try:
        notifier = Notifier(settings)
    except PyMongoError as exc:
        raise fail(f"MongoDB: {exc}. Is it up? `flead local status`") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: notifier.stop())
    console.print(f"notifying {len(settings.alert_urls)} URL(s) of anomaly events ({settings.alerts_format})")
    try:
        if once:
            notifier.run_once()
        else:
            notifier.run(interval_s=interval)
    finally:
        notifier.close()


@alerts_app.command("health")
def health() -> None:
    """Exit 0 when a notifier on this host wrote a fresh heartbeat after a good pass, else 1 (the
    compose healthcheck; `flead services status` shows it beside the other services)."""
    import socket

    from flead.local.supervisor import Supervisor

    with Supervisor(load_settings_or_exit()) as supervisor:
        probe = supervisor.probe_notifier(host=socket.gethostname())
    console.print(probe.detail, highlight=False)
    if not (probe.answering and probe.healthy):
        raise typer.Exit(1)


@alerts_app.command("status")
def status() -> None:
    """Notifications by URL and state (pending, delivered, suppressed, dead), and the dead letters."""
    from flead.storage.mongo import make_mongo_client

    settings = Settings()
    with make_mongo_client(settings) as client:
        db = client[settings.mongo_db]
        try:
            counts = list(
                db[settings.collection_alert_outbox].aggregate(
                    [{"$group": {"_id": {"url": "$url", "state": "$state"}, "n": {"$sum": 1}}}]
                )
            )
            dead = db[settings.collection_alert_dead_letters].count_documents({})
        except PyMongoError as exc:
            raise fail(f"MongoDB: {exc}. Is it up? `flead local status`") from None
    table = Table(title="FLEAD notifications")
    for column in ("url", "state", "notifications"):
        table.add_column(column)
    for row in sorted(counts, key=lambda r: (str(r["_id"].get("url")), str(r["_id"].get("state")))):
        table.add_row(str(row["_id"].get("url")), str(row["_id"].get("state")), str(row["n"]))
    console.print(table)
    console.print(f"dead letters: {dead} (collection {settings.collection_alert_dead_letters})")


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
