"""The Dagster sensors that keep the stream trainer, the global API and the notifier alive, and the
sensor that requests aggregations, against the real services: real `flead api run` / `flead trainer
run` / `flead alerts run` processes started by the sensors, the session's Kafka broker and MongoDB
server, a real webhook receiver."""

from __future__ import annotations

import json
import os
import signal
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
from dagster import DagsterInstance, RunRequest, SensorResult, SkipReason, build_sensor_context
from typer.testing import CliRunner

from flead.alerts import verify
from flead.bus.topics import ensure_topics
from flead.cli.services import services_app
from flead.config import Settings
from flead.local.secrets import admin_key_file, local_admin_key
from flead.local.services import free_port
from flead.local.supervisor import API, NOTIFIER, TRAINER, State, Supervisor
from flead.storage.mongo import make_mongo_client
from flead_dagster.defs.assets.services import service_assets
from flead_dagster.defs.resources import FleadResource
from flead_dagster.defs.sensors import (
    global_api_sensor,
    notifier_sensor,
    pending_updates_sensor,
    sensors,
    stream_trainer_sensor,
)
from flead_dagster_tests.helpers.alerts import SECRET, Receiver
from flead_dagster_tests.helpers.api import make_update, weights_of
from flead_dagster_tests.helpers.events import event
from flead_dagster_tests.helpers.trainer import wait_until
from services.global_api.codec import encode_json_update
from services.notifier.cli import alerts_app

HEALTHY_WITHIN_S = 90.0  # a generous deadline for a loaded two-core machine
TRIGGER = 3


@pytest.fixture
def supervised(services_env, tmp_path, monkeypatch) -> Iterator[Settings]:
    """Private ports, database, topics, group and state directory; everything started is stopped."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "FLEAD_MONGO_DB": f"test_sensors_{tag}",
        "FLEAD_API_URL": f"http://127.0.0.1:{free_port()}",
        "FLEAD_TRAINER_HEALTH_PORT": str(free_port()),
        "FLEAD_STATE_DIR": str(tmp_path / "state"),
        "FLEAD_TOPIC_READINGS": f"test.sensors.{tag}",
        "FLEAD_TOPIC_READINGS_PARTITIONS": "2",
        "FLEAD_TOPIC_DLQ": f"test.sensors.{tag}.dlq",
        "FLEAD_TOPIC_LATE": f"test.sensors.{tag}.late",
        "FLEAD_TOPIC_ANOMALIES": f"test.sensors.{tag}.anomalies",
        "FLEAD_CONSUMER_GROUP": f"sensors-{tag}",
        "FLEAD_AUTO_AGGREGATE_THRESHOLD": "1000",  # pending updates stay pending
        "FLEAD_PENDING_UPDATES_TRIGGER": str(TRIGGER),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "FLEAD_API_ADMIN_KEY",
        "FLEAD_API_KEY",
        "FLEAD_SUPERVISE_API",
        "FLEAD_SUPERVISE_TRAINER",
        "FLEAD_SUPERVISE_NOTIFIER",
        "FLEAD_ALERTS_WEBHOOK_URLS",
    ):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    ensure_topics(settings)
    try:
        yield settings
    finally:
        with Supervisor(Settings()) as supervisor:
            supervisor.stop_all()
        client = make_mongo_client(settings)
        client.drop_database(settings.mongo_db)
        client.close()


def context(flead: FleadResource | None = None):
    """A tick's context; its ``flead`` resource reads the environment at the tick unless given."""
    return build_sensor_context(
        instance=DagsterInstance.ephemeral(), resources={"flead": flead or FleadResource()}
    )


def observe(sensor_def, flead: FleadResource | None = None) -> dict[str, object]:
    """One tick of a service sensor: its observation's metadata as plain values."""
    result = sensor_def(context(flead))
    assert isinstance(result, SensorResult), result
    (event,) = result.asset_events
    assert event.asset_key.to_user_string() == sensor_def.name.removesuffix("_sensor")
    return {key: value.value for key, value in event.metadata.items()}


def wait_healthy(settings: Settings, name: str) -> dict:
    def healthy():
        with Supervisor(settings) as supervisor:
            status = supervisor.check(name)
        return status if status.state is State.HEALTHY else None

    return wait_until(healthy, HEALTHY_WITHIN_S, f"{name} to be healthy")


def start(settings: Settings, sensor_def) -> dict:
    """A tick that starts the service; it reports healthy within that tick or soon after."""
    started = observe(sensor_def)
    assert started["outcome"] in ("started", "restarted"), started
    assert started["state"] in ("healthy", "starting"), started
    status = wait_healthy(settings, sensor_def.name.removesuffix("_sensor"))
    assert status.pid == started["pid"] and status.supervised
    return started


def kill_hard(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)  # our child: reaped here


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_definitions_are_well_formed():
    assert [s.name for s in sensors] == [
        "stream_trainer_sensor",
        "global_api_sensor",
        "notifier_sensor",
        "pending_updates_sensor",
    ]
    assert {spec.key.to_user_string() for spec in service_assets} == {TRAINER, API, NOTIFIER}
    assert all(spec.group_name == "services" for spec in service_assets)
    assert pending_updates_sensor.job_name == "global_model_job"


def test_api_sensor_starts_keeps_and_restarts_the_api(supervised):
    settings = supervised
    first = start(settings, global_api_sensor)
    pid = first["pid"]
    log_file = Path(first["log_file"])
    assert log_file.parent == Path(os.environ["DAGSTER_HOME"]).resolve() / "flead" / "logs"
    assert log_file.exists()

    # The API runs with the generated admin token (kept 0600 in the state directory).
    token = local_admin_key(settings)
    assert stat.S_IMODE(admin_key_file(settings).stat().st_mode) == 0o600
    answer = httpx.post(
        f"{settings.api_url}/api/aggregate", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    refused = httpx.post(
        f"{settings.api_url}/api/aggregate", headers={"Authorization": "Bearer wrong"}, timeout=30
    )
    assert refused.status_code == 401

    second = observe(global_api_sensor)
    assert second["outcome"] == "healthy" and second["state"] == "healthy"
    assert second["pid"] == pid and isinstance(second["version"], int)

    kill_hard(pid)
    third = start(settings, global_api_sensor)
    assert third["outcome"] == "restarted" and third["previous_pid"] == pid
    assert third["pid"] != pid


def test_a_hung_api_is_replaced(supervised, monkeypatch):
    monkeypatch.setenv("FLEAD_LOCAL_START_TIMEOUT_S", "8")  # silent longer than this: hung
    monkeypatch.setenv("FLEAD_LOCAL_STOP_GRACE_S", "1")
    settings = Settings()
    first = start(settings, global_api_sensor)
    hung = psutil.Process(first["pid"])
    hung.suspend()  # alive, but no longer answering
    try:

        def unhealthy():
            with Supervisor(settings) as supervisor:
                status = supervisor.check(API)
            return status if status.state is State.UNHEALTHY else None

        status = wait_until(unhealthy, HEALTHY_WITHIN_S, "the suspended API to count as hung")
        assert status.pid == hung.pid and not status.answering and "not answering" in status.detail
        replaced = start(settings, global_api_sensor)
        assert replaced["outcome"] == "restarted" and replaced["previous_pid"] == hung.pid
        assert replaced["pid"] != hung.pid
        assert gone(hung.pid)
    finally:
        if not gone(hung.pid):
            hung.resume()


def test_trainer_sensor_starts_keeps_restarts_and_cli_stops(supervised):
    settings = supervised
    api = start(settings, global_api_sensor)
    first = start(settings, stream_trainer_sensor)
    pid = first["pid"]

    second = observe(stream_trainer_sensor)
    assert second["outcome"] == "healthy" and second["state"] == "healthy", second
    assert second["pid"] == pid and second["status"] == "running"
    assert second["global_version"] == 0  # it fetched the model from the supervised API
    assert "records/s" in second["detail"] and "lag" in second["detail"]

    # It writes a heartbeat, and its health port is the one in the settings.
    client = make_mongo_client(settings)
    try:
        beat = client[settings.mongo_db][settings.collection_services].find_one({"pid": pid})
    finally:
        client.close()
    assert beat is not None and beat["health_port"] == settings.trainer_health_port

    kill_hard(pid)
    third = start(settings, stream_trainer_sensor)
    assert third["outcome"] == "restarted" and third["previous_pid"] == pid and third["pid"] != pid

    runner = CliRunner()
    shown = runner.invoke(services_app, ["status"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("healthy") == 2 and str(third["pid"]) in shown.output

    stopped = runner.invoke(services_app, ["stop"])
    assert stopped.exit_code == 0, stopped.output
    assert f"{TRAINER}: stopped (PID {third['pid']})" in stopped.output
    assert f"{API}: stopped (PID {api['pid']})" in stopped.output
    assert gone(third["pid"]) and gone(api["pid"])
    ours = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and "flead" in " ".join(p.cmdline()[1:3])
    ]
    assert ours == []
    with Supervisor(settings) as supervisor:
        assert [s.state for s in supervisor.status()] == [State.DOWN, State.DOWN, State.OFF]
    assert not list((Path(settings.state_dir) / "supervised").glob("*.pid"))
    again = runner.invoke(services_app, ["stop"])
    assert again.exit_code == 0 and again.output.count("not running") == 3


def test_notifier_sensor_is_off_without_urls_then_keeps_it_delivering_until_stopped(supervised, monkeypatch):
    off = observe(notifier_sensor)
    assert off["outcome"] == "disabled" and off["state"] == "off" and "WEBHOOK_URLS" in off["detail"]

    receiver = Receiver()
    try:
        monkeypatch.setenv("FLEAD_ALERTS_WEBHOOK_URLS", receiver.url)
        monkeypatch.setenv("FLEAD_ALERTS_WEBHOOK_SECRET", SECRET)
        settings = Settings()
        client = make_mongo_client(settings)
        db = client[settings.mongo_db]
        db[settings.collection_events].insert_one(event("mote-7", 1, open_=True))
        started = start(settings, notifier_sensor)
        pid = started["pid"]
        wait_until(lambda: receiver.requests, HEALTHY_WITHIN_S, "a notification from the notifier")
        headers, body = receiver.requests[0]
        verify(
            SECRET,
            body,
            timestamp=headers["X-FLEAD-Timestamp"],
            signature_header=headers["X-FLEAD-Signature"],
        )
        assert json.loads(body)["event"]["device_id"] == "mote-7"

        kept = observe(notifier_sensor)
        assert kept["outcome"] == "healthy" and kept["pid"] == pid and kept["status"] == "leader", kept
        runner = CliRunner()
        health = runner.invoke(alerts_app, ["health"])  # the compose healthcheck: a notifier on this host
        assert health.exit_code == 0 and "leader" in health.output, health.output

        stopped = runner.invoke(services_app, ["stop"])
        assert f"{NOTIFIER}: stopped (PID {pid})" in stopped.output and gone(pid)
        assert db[settings.collection_services].find_one({"service": NOTIFIER}) is None
        lease = db[settings.collection_alert_cursor].find_one({"_id": "lease"})
        assert lease["expires_at"] < datetime.now(UTC)  # released on SIGTERM: a successor starts at once
        client.close()
        assert runner.invoke(alerts_app, ["health"]).exit_code == 1
    finally:
        receiver.close()


def test_disabled_sensors_start_nothing(supervised):
    disabled = FleadResource(overrides={"supervise_api": False, "supervise_trainer": False})
    for sensor_def in (global_api_sensor, stream_trainer_sensor):
        tick = observe(sensor_def, disabled)
        assert tick["outcome"] == "disabled" and tick["state"] == "down" and tick["pid"] is None
    assert not list((Path(supervised.state_dir) / "supervised").glob("*.pid"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{supervised.api_url}/health", timeout=2)


def test_pending_updates_sensor_skips_while_the_api_does_not_answer(tmp_path):
    down = FleadResource(overrides={"api_url": f"http://127.0.0.1:{free_port()}", "state_dir": str(tmp_path)})
    skipped = pending_updates_sensor(context(down))
    assert isinstance(skipped, SkipReason) and skipped.skip_message.startswith("global API unanswered")
    assert "pending updates not counted" in skipped.skip_message


def test_pending_updates_sensor_requests_one_run_per_new_batch(supervised):
    settings = supervised
    start(settings, global_api_sensor)
    http = httpx.Client(
        base_url=settings.api_url,
        headers={"Authorization": f"Bearer {local_admin_key(settings)}"},
        timeout=60,
    )
    model = http.get("/api/global-model").json()
    shapes = {name: w.shape for name, w in weights_of(model).items()}
    ids = iter(range(100))

    def submit() -> None:
        update = make_update(shapes, "mote-01", update_id=f"u{next(ids)}", base_version=model["version"])
        response = http.post("/api/local-update", json=encode_json_update(update))
        assert response.status_code == 202, response.text

    try:
        skipped = pending_updates_sensor(context())
        assert isinstance(skipped, SkipReason) and skipped.skip_message.startswith("0 pending")
        for _ in range(TRIGGER - 1):
            submit()
        skipped = pending_updates_sensor(context())
        assert isinstance(skipped, SkipReason) and skipped.skip_message.startswith(f"{TRIGGER - 1} pending")

        submit()
        requested = pending_updates_sensor(context())
        assert isinstance(requested, RunRequest) and requested.run_key
        assert requested.tags["flead/pending_updates"] == str(TRIGGER)
        repeated = pending_updates_sensor(context())
        assert isinstance(repeated, RunRequest) and repeated.run_key == requested.run_key

        submit()
        newer = pending_updates_sensor(context())
        assert isinstance(newer, RunRequest) and newer.run_key != requested.run_key
    finally:
        http.close()
