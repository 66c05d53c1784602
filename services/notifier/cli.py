"""`flead alerts ...`: run the webhook notifier, its notifications by state, its health."""

from __future__ import annotations

import logging
import signal

import typer
from pymongo.errors import PyMongoError
from rich.table import Table

from flead.cli.output import console, fail
from flead.config import Settings, load_settings_or_exit
from services.notifier.service import Notifier

alerts_app = typer.Typer(help="Webhook notifications of anomaly events.", no_args_is_help=True)


@alerts_app.command("run")
def run(
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between passes over events and the outbox."),
    once: bool = typer.Option(False, help="One pass, then exit (cron-style)."),
    log_level: str = typer.Option("INFO", envvar="FLEAD_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Follow the anomaly events and deliver webhook notifications until SIGTERM (FLEAD_ALERTS_*)."""
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
    compose healthcheck; flead services status shows it beside the other services)."""
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
