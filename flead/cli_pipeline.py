"""`flead demo` (the README's main job) and `flead up` (the services plus ``dagster dev``).

Dagster is imported inside the commands, so that loading the `flead` command line stays light.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flead.cli_output import console, fail
from flead.config import Settings
from flead.local.java import java_problem

# Dagster's webserver, daemon and code servers take a few seconds to stop, more on a loaded machine;
# what is left of the group after this is killed.
DAGSTER_STOP_GRACE_S = 30.0

if TYPE_CHECKING:  # imported inside the commands, so that loading the command line stays light
    from flead.local.services import LocalServices
    from flead.local.supervisor import Supervisor


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


class _StopRequested(Exception):
    """SIGTERM or SIGINT reached `flead up`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _request_stop(signum: int, _frame: object) -> None:
    raise _StopRequested(signum)


def up_command(
    port: int = typer.Option(None, help="Port of the Dagster UI (default FLEAD_DAGSTER_PORT)."),
) -> None:
    """Local services, global API and stream trainer, then ``dagster dev`` (its sensors keep the API and
    the trainer running). Ctrl-C or SIGTERM stops Dagster and what `flead up` started, nothing else."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    from flead.local.process_group import start_group, stop_group
    from flead.local.services import LocalServices
    from flead.local.supervisor import SERVICES, Supervisor
    from flead_dagster.main_job import dagster_home, ensure_healthy

    settings = Settings()
    port = port or settings.dagster_port
    local = LocalServices(settings)
    home = dagster_home(settings)
    supervisor = Supervisor(settings, log_dir=home / "flead" / "logs")
    handlers = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    before = _running(local, supervisor)  # what is already running is left running
    dagster: subprocess.Popen | None = None
    code = 0
    try:
        with console.status("starting local services"):
            local.up()
        for service in SERVICES:
            with console.status(f"starting {service}"):
                ensure_healthy(supervisor, service)
            if supervisor.supervised_pid(service) is None:
                console.print(f"{service}: healthy, run by another process (left running)")
            else:
                console.print(f"{service}: healthy (log: {supervisor.log_file(service)})")
        console.print(
            f"Dagster UI on http://{settings.dagster_host}:{port} (DAGSTER_HOME={home}); Ctrl-C or SIGTERM "
            "stops it and what `flead up` started"
        )
        command = [sys.executable, "-m", "dagster", "dev", "-m", "flead_dagster.definitions"]
        command += ["-h", settings.dagster_host, "-p", str(port)]
        dagster = start_group(command, env=os.environ.copy())
        code = dagster.wait()
        console.print(f"[yellow]dagster dev exited with code {code}[/]")
    except _StopRequested as stop:
        console.print(f"{stop}: stopping")
    except RuntimeError as exc:  # a service that does not start (LocalServiceError is one)
        code = 1
        console.print(f"[red]{exc}[/]")
    finally:
        for sig in handlers:  # a second Ctrl-C must not cut the clean-up short (it is bounded)
            signal.signal(sig, signal.SIG_IGN)
        lines = []
        if dagster is not None:
            group = stop_group(dagster, DAGSTER_STOP_GRACE_S)
            lines.append(f"dagster dev: {group.outcome} (PID {group.pid}, {group.processes} processes)")
        lines += _stop_what_up_started(local, supervisor, before)
        supervisor.close()
        console.print("\n".join(lines))
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


def _running(local: LocalServices, supervisor: Supervisor) -> dict[str, int | None]:
    """The recorded live PID of each local service and supervised service (None: not running)."""
    from flead.local.supervisor import SERVICES

    pids = {spec.name: local.running_pid(spec.name) for spec in local.specs()}
    return pids | {name: supervisor.supervised_pid(name) for name in SERVICES}


def _stop_what_up_started(
    local: LocalServices, supervisor: Supervisor, before: dict[str, int | None]
) -> list[str]:
    """Stop each service `flead up` found stopped and that runs now (also when a Dagster sensor has
    restarted it since); say what was left running and why."""
    from flead.local.supervisor import SERVICES

    now = _running(local, supervisor)
    lines = []
    for name, pid in before.items():
        if pid is not None:
            lines.append(f"{name}: left running (PID {now[name] or pid}, it was running before `flead up`)")
    ours = [name for name, pid in now.items() if pid is not None and before[name] is None]
    results = [supervisor.stop(name) for name in reversed(SERVICES) if name in ours]
    local_ours = [name for name in ours if name not in SERVICES]
    if local_ours:
        results += local.down(local_ours)
    lines += [f"{r.name}: {r.outcome} (PID {r.pid})" for r in results]
    return lines
