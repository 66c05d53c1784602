"""Lifecycle of the embedded services, on a private set (the shared session services stay untouched)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flead.config import Settings
from flead.local.services import LocalServiceError, LocalServices
from flead_dagster_tests.helpers.services import service_env

FLEAD = str(Path(sys.executable).parent / "flead")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FLEAD, *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def private(tmp_path):
    env = service_env(tmp_path / "home")
    services = LocalServices(Settings(**{k.removeprefix("FLEAD_").lower(): v for k, v in env.items()}))
    yield env, services
    services.down()


def test_lifecycle_up_status_idempotent_unhealthy_down(private):
    env, services = private

    up = run_cli(env, "local", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    first = {s.name: s for s in services.status()}
    assert all(s.healthy for s in first.values()), first
    readings = next(t for t in LocalServices(services.settings).up().topics if t.name == "flead.readings")
    assert readings.partitions >= 8 and not readings.created

    status = run_cli(env, "local", "status")
    assert status.returncode == 0 and status.stdout.count(" yes ") == 2, status.stdout

    again = run_cli(env, "local", "up")  # harmless: same processes, no error
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert {s.name: s.pid for s in services.status()} == {n: s.pid for n, s in first.items()}

    mongo = psutil.Process(first["mongodb"].pid)
    mongo.suspend()  # alive but not answering
    try:
        frozen = {s.name: s for s in services.status(probe_timeout_s=1.0)}
        assert frozen["mongodb"].running and not frozen["mongodb"].healthy
        assert "not answering" in frozen["mongodb"].detail
        assert frozen["kafka"].healthy
    finally:
        mongo.resume()

    os.kill(first["kafka"].pid, signal.SIGKILL)
    psutil.Process(first["kafka"].pid).wait(10)
    dead = run_cli(env, "local", "status")
    assert dead.returncode == 1
    killed = {s.name: s for s in services.status()}
    assert not killed["kafka"].healthy and not killed["kafka"].running and killed["kafka"].pid is None
    assert killed["mongodb"].healthy

    restarted = {s.name: s for s in services.up().services}
    assert restarted["kafka"].healthy and restarted["kafka"].pid != first["kafka"].pid

    down = run_cli(env, "local", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in (restarted["kafka"].pid, restarted["mongodb"].pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not list(services.root.glob("*.pid"))
    assert [r.outcome for r in services.down()] == ["not running", "not running"]


def test_port_taken_by_a_stranger_is_a_clear_error(private):
    env, services = private
    with socket.socket() as stranger:
        stranger.bind(services.settings.kafka_address)
        stranger.listen()
        with pytest.raises(LocalServiceError, match=r"already in use.*FLEAD_KAFKA_BOOTSTRAP_SERVERS"):
            services.up()
        result = run_cli(env, "local", "up")
    assert result.returncode == 1
    assert "already in use" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_a_service_that_dies_while_starting_names_its_log(private):
    _env, services = private
    services.root.mkdir(parents=True)
    (services.root / "mongodb-data").write_text("a file where the data directory should be")
    with pytest.raises(LocalServiceError, match=r"mongodb exited while starting; see .*mongodb\.log"):
        services.up()


def test_down_never_stops_a_process_it_did_not_start(private):
    _env, services = private
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        services.root.mkdir(parents=True)
        # A PID file whose PID now belongs to another process (PID reuse): start time differs.
        record = {"pid": stranger.pid, "create_time": psutil.Process(stranger.pid).create_time() - 100}
        services.pid_file("kafka").write_text(json.dumps(record))
        assert [r.outcome for r in services.down()] == ["not running", "not running"]
        assert stranger.poll() is None
        assert not services.pid_file("kafka").exists()
    finally:
        stranger.kill()
        stranger.wait()
