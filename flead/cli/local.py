"""`flead local ...`: the embedded local Kafka broker and MongoDB server (``flead.local.services``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flead.cli.output import console, fail
from flead.config import Settings
from flead.local.java import java_problem
from flead.local.services import LocalServiceError, LocalServices, ServiceStatus
from flead.roundtrip import RoundTripError, run_round_trip

local_app = typer.Typer(help="The embedded local Kafka broker and MongoDB server.", no_args_is_help=True)


def _services() -> LocalServices:
    return LocalServices(Settings())


def _status_table(statuses: list[ServiceStatus]) -> Table:
    table = Table(title="FLEAD local services")
    for column in ("service", "PID", "address", "healthy", "detail", "log"):
        table.add_column(column)
    for s in statuses:
        healthy = "[green]yes[/]" if s.healthy else "[red]no[/]"
        table.add_row(s.name, str(s.pid or "-"), str(s.address), healthy, s.detail, str(s.log_file))
    return table


@local_app.command("up")
def local_up() -> None:
    """Start the local services (harmless when they already run) and create the topics."""
    services = _services()
    try:
        with console.status("starting local services") as spinner:
            result = services.up(on_event=lambda msg: (spinner.update(msg), console.log(msg)))
    except LocalServiceError as exc:
        raise fail(str(exc)) from None
    console.print(_status_table(result.services))


@local_app.command("down")
def local_down() -> None:
    """Stop the processes that flead local up started (SIGTERM, then SIGKILL after the grace period)."""
    for result in _services().down():
        pid = f" (PID {result.pid})" if result.pid else ""
        console.print(f"{result.name}{pid}: {result.outcome}")


@local_app.command("status")
def local_status() -> None:
    """A table of the local services; exits 1 when any is not healthy."""
    statuses = _services().status(probe_timeout_s=1.0)
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@local_app.command("logs")
def local_logs(
    service: str = typer.Argument(None, help="kafka or mongodb (default: both)"),
    lines: int = typer.Option(50, "--lines", "-n", help="How many lines from the end."),
) -> None:
    """The end of the local services' log files."""
    services = _services()
    try:
        names = [services.spec(service).name] if service else [s.name for s in services.specs()]
    except LocalServiceError as exc:
        raise fail(str(exc)) from None
    for name in names:
        console.rule(f"{name}: {services.log_file(name)}")
        console.print(services.tail_log(name, lines) or "(no log yet)", markup=False, highlight=False)


@local_app.command("check")
def local_check() -> None:
    """Local services up, then one reading through Kafka (a consumer group) and MongoDB and back."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    settings = Settings()
    services = LocalServices(settings)
    try:
        with console.status("starting local services") as spinner:
            up = services.up(on_event=lambda msg: (spinner.update(msg), console.log(msg)))
        with console.status("round trip: Kafka -> consumer group -> MongoDB") as spinner:
            report = run_round_trip(settings, on_step=lambda msg: (spinner.update(msg), console.log(msg)))
    except (LocalServiceError, RoundTripError) as exc:
        raise fail(str(exc)) from None
    table = Table(title="Round trip of one reading")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for what, seconds in report.steps:
        table.add_row(what, f"{seconds:.3f}")
    console.print(table)
    console.print(_status_table(up.services))
    console.print(
        f"Services keep running for interactive use; logs under {Path(settings.state_dir).resolve()}.\n"
        "Stop them with [bold]flead local down[/]."
    )
