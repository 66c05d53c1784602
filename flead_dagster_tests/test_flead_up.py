"""`flead up` as a real process on free ports: SIGTERM, and Ctrl-C's SIGINT, stop the whole of
``dagster dev`` (webserver, daemon, code servers) and what `flead up` started itself (broker, MongoDB,
API, trainer), never what was running before it; a second `flead up` then starts cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flead.local.services import free_port
from flead_dagster_tests.helpers.processes import FLEAD, SessionLeader, private_env
from flead_dagster_tests.helpers.trainer import wait_until

UP_WITHIN_S = 240.0  # services, then dagster dev, on a loaded two-core machine
STOPPED_WITHIN_S = 90.0


class FleadUp(SessionLeader):
    """One `flead up` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(["up"], env, log)

    def wait_for_dagster(self) -> None:
        url = f"http://127.0.0.1:{self.env['FLEAD_DAGSTER_PORT']}/server_info"

        def answers() -> bool:
            if self.popen.poll() is not None:
                pytest.fail(f"flead up exited with {self.popen.returncode}:\n{self.output[-3000:]}")
            self.descendants()
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, UP_WITHIN_S, "the Dagster webserver of `flead up` to answer", poll_s=0.5)
        self.descendants()

    def stop(self, signum: int, *, group: bool) -> int:
        """Send `signum` to `flead up` alone (`kill PID`), or to its process group (a terminal's Ctrl-C)."""
        if group:
            os.killpg(self.popen.pid, signum)
        else:
            self.popen.send_signal(signum)
        try:
            return self.popen.wait(STOPPED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flead up did not stop within {STOPPED_WITHIN_S:.0f} s:\n{self.output[-3000:]}")


@pytest.fixture
def up_env(tmp_path) -> Iterator[dict[str, str]]:
    with private_env(tmp_path, FLEAD_DAGSTER_PORT=str(free_port())) as env:
        yield env


def flead(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([FLEAD, *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_stopped_flead_up_leaves_nothing_behind_and_starts_again(up_env, tmp_path):
    first = FleadUp(up_env, tmp_path / "up-1.log")
    try:
        first.wait_for_dagster()
        commands = [" ".join(p.cmdline()) for p in first.descendants() if p.is_running()]
        for part in ("dagster_webserver", "dagster._daemon", "api run", "trainer run", "secantus"):
            assert any(part in c for c in commands), (part, commands)
        code = first.stop(signal.SIGTERM, group=False)
        assert (code, first.left_behind()) == (0, []), first.output[-3000:]
    finally:
        first.kill_leftovers()
    out = first.output
    assert "dagster dev: stopped" in out or "dagster dev: killed" in out, out[-3000:]
    for service in ("stream_trainer", "global_api", "mongodb", "kafka"):
        assert f"{service}: stopped" in out or f"{service}: killed" in out, (service, out[-3000:])

    # The broker and MongoDB already run: `flead up` uses them, leaves them running and says so.
    flead(up_env, "local", "up")
    second = FleadUp(up_env, tmp_path / "up-2.log")
    try:
        second.wait_for_dagster()  # the same UI port and Dagster instance: nothing of the first holds them
        code = second.stop(signal.SIGINT, group=True)  # Ctrl-C: the same clean stop
        assert (code, second.left_behind()) == (0, []), second.output[-3000:]
    finally:
        second.kill_leftovers()
    out = second.output
    assert "is still sending heartbeats" not in out, out[-3000:]
    for service in ("kafka", "mongodb"):
        assert f"{service}: left running" in out, out[-3000:]
    for service in ("stream_trainer", "global_api"):
        assert f"{service}: stopped" in out or f"{service}: killed" in out, (service, out[-3000:])
    flead(up_env, "local", "status")  # exits 0: both still answer
