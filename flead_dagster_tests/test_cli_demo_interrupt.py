"""Ctrl-C in `flead demo`: a terminal's SIGINT to its whole process group while a Dagster run scores
on Spark prints one line, exits 130 and leaves none of the processes the demo started (broker,
MongoDB, global API, stream trainer, Spark's JVM) running; the broker and MongoDB that ran before it
are left. A failed step ends as one message naming its job and run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from flead_dagster_tests.helpers.processes import SessionLeader, alive, private_env
from flead_dagster_tests.helpers.trainer import wait_until

FLEAD = str(Path(sys.executable).parent / "flead")
READY_WITHIN_S = 300.0  # services, data, replay and aggregation on a loaded two-core machine
STOPPED_WITHIN_S = 90.0


class Demo(SessionLeader):
    """One `flead demo` process on a one-day synthetic fleet."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(["demo", "--source", "synthetic", "--days", "1"], env, log)

    def running(self, part: str) -> bool:
        if self.popen.poll() is not None:
            pytest.fail(f"flead demo exited with {self.popen.returncode}:\n{self.output[-3000:]}")
        return any(part in " ".join(p.cmdline()) for p in self.descendants() if alive(p))


@pytest.fixture
def demo_env(tmp_path) -> Iterator[dict[str, str]]:
    with private_env(tmp_path, FLEAD_SPARK_MASTER="local[1]") as env:
        yield env


def flead(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLEAD, *args], env=env, capture_output=True, text=True, timeout=180)


def test_ctrl_c_in_the_demo_prints_one_line_exits_130_and_stops_what_it_started(demo_env, tmp_path):
    demo = Demo(demo_env, tmp_path / "demo.log")
    try:
        # Ready: the aggregation is done, so the Spark evaluation's run has started; then its JVM.
        wait_until(lambda: "done: global model" in demo.output, READY_WITHIN_S, "the demo's global model")
        wait_until(lambda: demo.running("java"), READY_WITHIN_S, "the evaluation's Spark JVM")
        commands = [" ".join(p.cmdline()) for p in demo.descendants() if alive(p)]
        for part in ("tansu", "secantus", "api run", "trainer run", "java"):
            assert any(part in c for c in commands), (part, commands)

        os.killpg(demo.popen.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        try:
            code = demo.popen.wait(STOPPED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flead demo did not stop within {STOPPED_WITHIN_S:.0f} s:\n{demo.output[-3000:]}")
        wait_until(lambda: not demo.left_behind(), 15, "the demo's processes to be gone")  # reaped by init
    finally:
        demo.kill_leftovers()
    out = demo.output
    lines = out.strip().splitlines()
    assert code == 130, out[-3000:]
    assert lines[-1] == "interrupted; services stopped", out
    # Seven "done:" lines, Spark's three start-up lines, the progress bar's last state and that line.
    assert len(lines) <= 14, out
    for noise in ("Traceback", "dagster", "Interrupt", "ERROR", "Exception"):
        assert noise not in out, out
    assert demo.left_behind() == []
    for command in (["local", "status"], ["services", "status"]):  # all down: both exit 1
        status = flead(demo_env, *command)
        assert status.returncode == 1 and "Traceback" not in status.stderr, (command, status)


def test_ctrl_c_leaves_the_services_that_ran_before_the_demo(demo_env, tmp_path):
    assert flead(demo_env, "local", "up").returncode == 0
    demo = Demo(demo_env, tmp_path / "demo.log")
    try:
        wait_until(lambda: "done: local services" in demo.output, READY_WITHIN_S, "the demo's first step")
        wait_until(lambda: demo.running("api run"), READY_WITHIN_S, "the demo's global API")
        os.killpg(demo.popen.pid, signal.SIGINT)
        code = demo.popen.wait(STOPPED_WITHIN_S)
        wait_until(lambda: not demo.left_behind(), 15, "the demo's processes to be gone")
    finally:
        demo.kill_leftovers()
    out = demo.output
    assert code == 130, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted; services stopped (") and "kafka" in last and "mongodb" in last, out
    assert "Traceback" not in out
    assert flead(demo_env, "local", "status").returncode == 0  # the broker and MongoDB still answer


def test_a_failed_step_ends_as_one_message_naming_its_job_and_run(demo_env, tmp_path, monkeypatch):
    done = subprocess.run(
        [FLEAD, "demo", "--source", "path", "--path", str(tmp_path / "missing")],
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = re.search(
        r"error: raw_data_job failed \(run ([0-9a-f-]{36})\): FileNotFoundError: no Intel Lab", done.stdout
    )
    assert found, done.stdout
    for noise in ("Traceback", "dagster - ERROR", "STEP_FAILURE"):
        assert noise not in done.stdout + done.stderr, done.stdout + done.stderr
    monkeypatch.setenv("DAGSTER_HOME", demo_env["DAGSTER_HOME"])
    run = DagsterInstance.get().get_run_by_id(found.group(1))
    assert run is not None and run.job_name == "raw_data_job" and run.status == DagsterRunStatus.FAILURE
    assert (run.tags["flead/trigger"], run.tags["flead/source"]) == ("demo", "path")
