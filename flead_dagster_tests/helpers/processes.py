"""Process helpers shared by the flead up and flead demo tests: session leaders and a private environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from flead.local.services import free_port
from flead_dagster_tests.helpers.services import service_env

FLEAD = str(Path(sys.executable).parent / "flead")


class SessionLeader:
    """A `flead` command as a real process, leader of its own session like a shell's foreground job;
    every descendant it is seen with is remembered, for the assertions and the clean-up."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [FLEAD, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, psutil.Process] = {}

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        return list(self.seen.values())

    def left_behind(self) -> list[str]:
        return [f"PID {p.pid}: {' '.join(p.cmdline())[:160]}" for p in self.seen.values() if alive(p)]

    def kill_leftovers(self) -> None:
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def private_env(tmp_path: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Private FLEAD_HOME (its own broker and MongoDB), DAGSTER_HOME and ports; what a failed run left
    (the services, by their PID records) is stopped at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEAD_", "DAGSTER_"))}
    env |= service_env(tmp_path / "flead")
    env |= {
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FLEAD_API_URL": f"http://127.0.0.1:{free_port()}",
        "FLEAD_TRAINER_HEALTH_PORT": str(free_port()),
        "FLEAD_TOPIC_READINGS_PARTITIONS": "2",
        "COLUMNS": "200",
        **extra,
    }
    try:
        yield env
    finally:
        for command in (["services", "stop"], ["local", "down"]):
            subprocess.run([FLEAD, *command], env=env, capture_output=True, timeout=120)
