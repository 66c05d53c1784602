"""`flead demo` (the README's main job) and `flead up` (the services plus ``dagster dev``): the Dagster
shell's commands, merged into the `flead` command line's top level by ``flead_cli``.

Dagster is imported inside the commands, so that loading the `flead` command line stays light.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flead.cli.output import console, fail
from flead.config import Settings
from flead.local.java import java_problem

# Dagster's webserver, daemon and code servers take a few seconds to stop, more on a loaded machine;
# what is left of the group after this is killed.
DAGSTER_STOP_GRACE_S = 30.0
DEMO_STOP_GRACE_S = 10.0  # what `flead demo` started itself and is not a service (Spark's JVM)

if TYPE_CHECKING:  # imported inside the commands, so that loading the command line stays light
    from flead.local.services import LocalServices
    from flead.local.supervisor import Supervisor


dagster_app = typer.Typer()


@dagster_app.command("demo")
def demo_command(
    days: int = typer.Option(3, min=1, help="Days of the data set to run through the pipeline."),
    full: bool = typer.Option(False, "--full", help="Every day of the data set (38 for Intel Lab)."),
    source: str = typer.Option("auto", help="auto (download, else synthetic), download, path or synthetic."),
    path: Path = typer.Option(None, help="With --source path: a data.txt(.gz) or a folder of Node*.txt."),
) -> None:
    """The main job: local services, global API, stream trainer, then data set -> lake -> replay ->
    training -> aggregation -> global model -> Spark evaluation -> report, as Dagster runs. The
    services keep running afterwards. Ctrl-C stops what the demo started (not what ran before it) and
    exits 130; SIGTERM stops it the same way."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    from dagster import DagsterExecutionInterruptedError

    from flead.local.services import LocalServices
    from flead.local.supervisor import Supervisor
    from flead_dagster.main_job import STEPS, MainJobError, dagster_home, run_main_job

    settings = Settings()
    local = LocalServices(settings)
    supervisor = Supervisor(settings, log_dir=dagster_home(settings) / "flead" / "logs")
    before = _running(local, supervisor)  # what already runs is left running, also on Ctrl-C
    children_before = _children()
    _signals.clear()
    handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("starting", total=len(STEPS))

            def on_step(index: int, name: str) -> None:
                _check_interrupt()
                if index:
                    console.log(f"done: {STEPS[index - 1]}")
                bar.update(task, completed=index, description=name)

            error = ""
            try:
                result = run_main_job(
                    settings,
                    days=None if full else days,
                    source=source,
                    path=path,
                    on_step=on_step,
                    quiet=SILENT,
                    capture_output=False,  # the steps print to this terminal as they go
                )
            except MainJobError as exc:  # a failed run: its job, run id and error
                _check_interrupt()  # (a failure that an interruption caused is the interruption)
                error = f"{exc}\nThe run's whole log: flead up, then the run in the Dagster UI."
            except Exception as exc:  # every other failure ends as one readable message too
                _check_interrupt()
                error = f"{type(exc).__name__}: {exc}"
            else:
                _check_interrupt()
                bar.update(task, completed=len(STEPS), description="done")
        if error:  # printed below the progress bar's last state
            raise fail(error)
    except (_Interrupted, KeyboardInterrupt, DagsterExecutionInterruptedError) as stop:
        # Dagster turns the signal into its own interruption inside a run (SIGTERM too): 130 then.
        signum = stop.signum if isinstance(stop, _Interrupted) else signal.SIGINT
        for sig in handlers:  # a second Ctrl-C must not cut the clean-up short (it is bounded)
            signal.signal(sig, signal.SIG_IGN)
        left = _stop_started(local, supervisor, before, children_before)
        console.print(
            "interrupted; services stopped"
            + (f" ({', '.join(left)} left running: they ran before flead demo)" if left else ""),
            highlight=False,
        )
        raise typer.Exit(128 + signum) from None
    finally:
        supervisor.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
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
        f"                  (the runs are in {os.environ.get('DAGSTER_HOME')}, tagged "
        f"flead/main_job={result.main_job_id})\n"
        "The global API and the stream trainer keep running; stop them with `flead services stop`, "
        "the broker and MongoDB with `flead local down`."
    )


# The demo's runs log to the terminal only what is critical: a failure ends as one message (and the
# whole log is in the run, in the Dagster UI); an interruption as one line.
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class _Interrupted(BaseException):
    """SIGINT or SIGTERM reached `flead demo` outside a Dagster run (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_signals: list[int] = []  # every SIGINT / SIGTERM `flead demo` received


def _interrupt(signum: int, _frame: object) -> None:
    _signals.append(signum)
    raise _Interrupted(signum)


def _check_interrupt() -> None:
    """Raise again a signal whose exception was swallowed where it landed (a weakref callback or a
    ``__del__`` only prints "Exception ignored in ...")."""
    if _signals:
        raise _Interrupted(_signals[-1])


def _children() -> dict[int, float]:
    """This process's descendants: PID -> start time (a PID may be reused)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[child.pid] = child.create_time()
    return found


def _stop_started(
    local: LocalServices, supervisor: Supervisor, before: dict[str, int | None], children: dict[int, float]
) -> list[str]:
    """Stop every service and process the demo started: first the descendants that are no service
    (Spark's JVM, which would otherwise go on starting and complain that its interrupted Python side
    is gone), then the services it found stopped (as `flead up` does), then whatever is left of what
    was not there before it. The names of the services left running because they ran before."""
    services = {pid for pid in _running(local, supervisor).values() if pid is not None}
    _stop_new_children(children, keep=services)
    _stop_what_was_started(local, supervisor, before, "flead demo")
    _stop_new_children(children, keep=set())
    return [name for name, pid in before.items() if pid is not None]


def _stop_new_children(children: dict[int, float], keep: set[int]) -> None:
    """SIGTERM to each descendant not in `children` (by PID and start time) nor in `keep`; SIGKILL
    to those still there after DEMO_STOP_GRACE_S."""
    started = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.pid not in keep and children.get(process.pid) != process.create_time():
                process.terminate()
                started.append(process)
    _gone, alive = psutil.wait_procs(started, timeout=DEMO_STOP_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


class _StopRequested(Exception):
    """SIGTERM or SIGINT reached `flead up`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _request_stop(signum: int, _frame: object) -> None:
    raise _StopRequested(signum)


@dagster_app.command("up")
def up_command(
    port: int = typer.Option(None, help="Port of the Dagster UI (default FLEAD_DAGSTER_PORT)."),
) -> None:
    """Local services, global API and stream trainer, then the Dagster UI and daemon (dagster dev; its
    sensors keep the API and the trainer running). Ctrl-C or SIGTERM stops Dagster and what flead up
    started, nothing else."""
    problem = java_problem()
    if problem:
        raise fail(problem, code=2)
    from flead.local.process_group import start_group, stop_group
    from flead.local.services import LocalServices
    from flead.local.supervisor import Supervisor
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
        for service in supervisor.wanted():
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
        lines += _stop_what_was_started(local, supervisor, before, "flead up")
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


def _stop_what_was_started(
    local: LocalServices, supervisor: Supervisor, before: dict[str, int | None], command: str
) -> list[str]:
    """Stop each service `command` (flead up, flead demo) found stopped and that runs now (also when a
    Dagster sensor has restarted it since); say what was left running and why."""
    from flead.local.supervisor import SERVICES

    now = _running(local, supervisor)
    lines = []
    for name, pid in before.items():
        if pid is not None:
            lines.append(f"{name}: left running (PID {now[name] or pid}, it was running before `{command}`)")
    ours = [name for name, pid in now.items() if pid is not None and before[name] is None]
    results = [supervisor.stop(name) for name in reversed(SERVICES) if name in ours]
    local_ours = [name for name in ours if name not in SERVICES]
    if local_ours:
        results += local.down(local_ours)
    lines += [f"{r.name}: {r.outcome} (PID {r.pid})" for r in results]
    return lines
