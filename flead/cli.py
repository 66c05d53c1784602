"""The `flead` command line."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import typer
from kafka.errors import KafkaError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flead.bus.replay import ReplayError, lake_readings, replay
from flead.cli_alerts import alerts_app, anomalies_app
from flead.cli_api import api_app
from flead.cli_data import data_app
from flead.cli_evaluate import evaluate_command
from flead.cli_output import console, fail
from flead.cli_pipeline import demo_command, up_command
from flead.cli_plot import plot_command
from flead.cli_report import report_command
from flead.cli_services import services_app
from flead.cli_trainer import trainer_app
from flead.config import Settings, load_settings_or_exit, settings_markdown_table, settings_rows
from flead.local.java import java_problem
from flead.local.services import LocalServiceError, LocalServices, ServiceStatus
from flead.roundtrip import RoundTripError, run_round_trip

app = typer.Typer(
    help="FLEAD: federated, online anomaly detection on IoT sensor streams.", no_args_is_help=True
)
local_app = typer.Typer(help="The embedded local Kafka broker and MongoDB server.", no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(data_app, name="data")
app.add_typer(api_app, name="api")
app.add_typer(trainer_app, name="trainer")
app.add_typer(services_app, name="services")
app.add_typer(alerts_app, name="alerts")
app.add_typer(anomalies_app, name="anomalies")
app.command("evaluate")(evaluate_command)
app.command("demo")(demo_command)
app.command("up")(up_command)
app.command("report")(report_command)
app.command("plot")(plot_command)


@app.callback()
def _check_settings(ctx: typer.Context) -> None:
    # Before any command: bad settings print every bad variable at once and exit 2 (no traceback).
    if not any(arg in ctx.help_option_names for arg in sys.argv[1:]):  # help needs no settings
        load_settings_or_exit()


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


@app.command("replay")
def replay_command(
    start: str = typer.Option(None, help="First day (YYYY-MM-DD); default: the lake's first."),
    end: str = typer.Option(None, help="Last day (YYYY-MM-DD); default: the lake's last."),
    device: list[str] = typer.Option(None, help="Only these device ids (repeatable)."),
    speed: float = typer.Option(None, min=0.0, help="Replay N times faster than real time."),
    max_rate: bool = typer.Option(False, "--max", help="As fast as the broker takes them (the default)."),
    topic: str = typer.Option(None, help="Target topic (default: FLEAD_TOPIC_READINGS)."),
) -> None:
    """Publish lake readings to Kafka, keyed by device id, in event-time order."""
    if speed is not None and max_rate:
        raise fail("choose --speed N or --max, not both")
    settings = Settings()
    try:
        first, last = (date.fromisoformat(d) if d else None for d in (start, end))
    except ValueError as exc:
        raise fail(f"bad date: {exc}") from None
    frame = lake_readings(settings, first, last, device or None)
    if not frame.height:
        raise fail(
            f"no readings in the lake at {settings.lake_dir} for that selection; run `flead data ingest`"
        )
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("replay", total=frame.height)
        try:
            summary = replay(
                settings,
                frame,
                speed=speed,
                topic=topic,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (ReplayError, KafkaError) as exc:
            raise fail(f"{exc}\nIs the broker up? `flead local status`") from None
    console.print(
        f"{summary.messages:,} readings of {summary.devices} devices "
        f"({summary.first_ts} .. {summary.last_ts}) to {summary.topic} "
        f"in {summary.seconds:.1f} s ({summary.rate:,.0f}/s)"
    )


@app.command("config")
def config(
    markdown: bool = typer.Option(False, help="Print the defaults as the README's Markdown table."),
) -> None:
    """The effective settings (environment, .env file, defaults); secrets are masked."""
    if markdown:
        console.print(settings_markdown_table(), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title="FLEAD settings")
    for column in ("variable", "value", "meaning"):
        table.add_column(column)
    for row in settings_rows(Settings()):
        table.add_row(*row)
    console.print(table)


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


if __name__ == "__main__":
    app()
