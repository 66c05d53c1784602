"""`flead demo` (the README's main job) and `flead up` (the services plus ``dagster dev``).

Dagster is imported inside the commands, so that loading the `flead` command line stays light.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flead.cli_output import console, fail
from flead.config import Settings
from flead.local.java import java_problem


def demo_command(
    days: int = typer.Option(3, min=1, help="Days of the data set to run through the pipeline."),
    full: bool = typer.Option(False, "--full", help="Every day of the data set (38 for Intel Lab)."),
    source: str = typer.Option("auto", help="auto (download, else synthetic), download, path or synthetic."),
    path: Path = typer.Option(None, help="With --source path: a data.txt(.gz) or a folder of Node*.txt."),
) -> None:
    """The main job: local services, global API, stream trainer, then data set -> lake -> replay ->
    training -> aggregation -> global model -> Spark evaluation -> report, as Dagster runs."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    from flead_dagster.main_job import STEPS, run_main_job

    settings = Settings()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("starting", total=len(STEPS))

        def on_step(index: int, name: str) -> None:
            if index:
                console.log(f"done: {STEPS[index - 1]}")
            bar.update(task, completed=index, description=name)

        try:
            result = run_main_job(
                settings, days=None if full else days, source=source, path=path, on_step=on_step
            )
        except Exception as exc:  # every failure ends as one readable message
            raise fail(f"{type(exc).__name__}: {exc}") from None
        bar.update(task, completed=len(STEPS), description="done")
    if result.note:
        console.print(f"[yellow]{result.note}[/]")
    f1 = "n/a" if result.f1 is None else f"{result.f1:.3f}"
    console.print(
        f"data: {result.source}, {len(result.days)} day(s) {result.days[0]} .. {result.days[-1]}, "
        f"{result.readings:,} readings replayed and trained on\n"
        f"global model version {result.version}; evaluation: {result.alarms:,} alarms, F1 on the labelled "
        f"benchmark {f1}\n"
        f"steps (s): {', '.join(f'{k} {v}' for k, v in result.seconds.items())}\n\n"
        f"Where to look:\n"
        f"  report:         {result.report}\n"
        f"  API dashboard:  {settings.api_url}/\n"
        f"  Dagster UI:     `flead up`, then http://{settings.dagster_host}:{settings.dagster_port}\n"
        f"                  (the runs are in {os.environ.get('DAGSTER_HOME')})\n"
        "The global API and the stream trainer keep running; stop them with `flead services stop`, "
        "the broker and MongoDB with `flead local down`."
    )


def up_command(
    port: int = typer.Option(None, help="Port of the Dagster UI (default FLEAD_DAGSTER_PORT)."),
) -> None:
    """Local services, global API and stream trainer, then ``dagster dev`` (its sensors keep the API and
    the trainer running) until Ctrl-C."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    from flead.local.services import LocalServices
    from flead.local.supervisor import SERVICES, Supervisor
    from flead_dagster.main_job import dagster_home, ensure_healthy

    settings = Settings()
    with console.status("starting local services"):
        LocalServices(settings).up()
    home = dagster_home(settings)
    with Supervisor(settings, log_dir=home / "flead" / "logs") as supervisor:
        for service in SERVICES:
            with console.status(f"starting {service}"):
                ensure_healthy(supervisor, service)
            console.print(f"{service}: healthy (log: {supervisor.log_file(service)})")
    port = port or settings.dagster_port
    console.print(
        f"Dagster UI on http://{settings.dagster_host}:{port} (DAGSTER_HOME={home}); Ctrl-C stops it"
    )
    command = [sys.executable, "-m", "dagster", "dev", "-m", "flead_dagster.definitions"]
    command += ["-h", settings.dagster_host, "-p", str(port)]
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))
