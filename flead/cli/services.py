"""`flead services ...`: the long-running services the Dagster sensors keep alive (global API, stream
trainer, notifier): their state, and stopping what the sensors started (``flead.local.supervisor``)."""

from __future__ import annotations

import typer
from rich.table import Table

from flead.cli.output import console
from flead.config import Settings
from flead.local.supervisor import State, Supervisor, dagster_log_dir

services_app = typer.Typer(
    help="The global API, stream trainer and notifier that the Dagster sensors keep running.",
    no_args_is_help=True,
)

STATE_STYLE = {
    State.HEALTHY: "green",
    State.STARTING: "yellow",
    State.UNHEALTHY: "red",
    State.DOWN: "red",
    State.OFF: "dim",
}


@services_app.command("status")
def status() -> None:
    """A table of the supervised services: state, PID, whether the supervisor started it, detail, log;
    exits 1 when any is not healthy (as flead local status does); one off by the settings is fine."""
    with Supervisor(Settings(), log_dir=dagster_log_dir()) as supervisor:
        statuses = supervisor.status()
    table = Table(title="FLEAD supervised services")
    for column in ("service", "state", "PID", "started by", "detail", "log"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            f"[{STATE_STYLE[s.state]}]{s.state}[/]",
            str(s.pid or "-"),
            "supervisor" if s.supervised else ("someone else" if s.answering else "-"),
            s.detail,
            str(s.log_file),
        )
    console.print(table)
    if not all(s.fine for s in statuses):
        raise typer.Exit(1)


@services_app.command("stop")
def stop() -> None:
    """Stop the services the sensors started (SIGTERM, then SIGKILL after FLEAD_LOCAL_STOP_GRACE_S).
    Processes it did not start are left alone. The sensors start them again at their next tick unless
    FLEAD_SUPERVISE_TRAINER / _API / _NOTIFIER are false or the sensors are stopped."""
    with Supervisor(Settings()) as supervisor:
        results = supervisor.stop_all()
    for result in results:
        pid = f" (PID {result.pid})" if result.pid else ""
        console.print(f"{result.name}: {result.outcome}{pid}", highlight=False)
