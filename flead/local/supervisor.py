"""Keeps the long-running services alive: the global model API, the stream trainer and, when webhook
URLs are set, the notifier (``flead alerts run``).

Framework-free: the Dagster sensors (``flead_dagster/defs/sensors.py``) and ``flead services ...`` call it.

* ``check(name)`` says how a service is: ``healthy``, ``starting`` (recently started, or waiting for
  what it depends on), ``unhealthy`` (alive but not answering, or answering that it is not well) or
  ``down``, with its PID and a detail (records/s and lag for the trainer, the version for the API).
* ``ensure_running(name, enabled)`` starts a service that is down, restarts one of its own that is dead
  or stopped answering, and waits a few bounded seconds for it to answer, so one call can report
  ``started`` with a healthy status; it never blocks for long.
* ``stop(name)`` / ``stop_all()`` stop what the supervisor started, and only that.

Started services are detached (their own session), log to ``<log_dir>/<name>.log`` and are recorded
in ``<state_dir>/supervised/<name>.pid`` with their start time, so a recycled PID is never signalled
(the helpers are shared with ``flead.local.services``).

Health: the API answers ``GET {api_url}/health``; the trainer answers ``GET /health`` on
``trainer_health_port`` or, when that was taken, on the port its heartbeat document names (MongoDB,
``collection_services``); a fresh heartbeat of the recorded PID also counts. The notifier has no port:
its heartbeat (``service = "notifier"``), written by its loop after a pass, is its health.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import httpx
import psutil
from pydantic import SecretStr
from pymongo import DESCENDING, MongoClient
from pymongo.errors import PyMongoError

from flead.config import Address, Settings
from flead.local.secrets import local_admin_key
from flead.local.services import (
    StopResult,
    exclusive_lock,
    owned_process,
    port_owner,
    read_record,
    reap_children,
    start_detached,
    tail_text,
    terminate,
)
from flead.storage.mongo import make_mongo_client

TRAINER = "stream_trainer"
API = "global_api"
NOTIFIER = "notifier"
SERVICES = (API, TRAINER, NOTIFIER)  # start order: the trainer fetches its first model from the API

PROBE_TIMEOUT_S = 1.0
MAX_START_WAIT_S = 15.0  # a call to ensure_running waits at most this long for a started service
POLL_S = 0.25  # between health probes while waiting


class State(StrEnum):
    HEALTHY = "healthy"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    DOWN = "down"
    OFF = "off"  # not wanted by these settings (the notifier without webhook URLs)


class Outcome(StrEnum):
    HEALTHY = "healthy"  # was healthy: nothing done
    STARTED = "started"  # was down (no record): started
    RESTARTED = "restarted"  # was recorded but dead or not answering: stopped if alive, started again
    STARTING = "starting"  # started recently and not answering yet (or waiting for a dependency)
    UNHEALTHY = "unhealthy"  # answers that it is unwell (e.g. MongoDB away): it recovers by itself
    FAILED = "failed"  # could not be started (port taken by a stranger, exited at once: see detail)
    DISABLED = "disabled"  # supervision switched off in the settings: nothing done


@dataclass(frozen=True)
class Status:
    name: str
    state: State
    pid: int | None
    detail: str
    log_file: Path
    supervised: bool = False  # the PID is a process this supervisor started
    answering: bool = False  # its health endpoint (or heartbeat) answered
    info: dict[str, object] = field(default_factory=dict)  # records_per_s, lag_total, version, ...

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY

    @property
    def fine(self) -> bool:
        """Healthy, or off by the settings: nothing to fix."""
        return self.state in (State.HEALTHY, State.OFF)


@dataclass(frozen=True)
class EnsureResult:
    name: str
    outcome: Outcome
    status: Status
    previous_pid: int | None = None


@dataclass(frozen=True)
class _Probe:
    answering: bool
    healthy: bool
    detail: str
    pid: int | None = None
    waiting: bool = False  # answers, but is still starting (e.g. the trainer waits for a global model)
    info: dict[str, object] = field(default_factory=dict)


def dagster_log_dir() -> Path | None:
    """Where the Dagster sensors' services log: ``$DAGSTER_HOME/flead/logs`` when DAGSTER_HOME is set,
    else None (the supervisor's default, ``<state_dir>/logs``)."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home) / "flead" / "logs" if home else None


def settings_env(settings: Settings) -> dict[str, str]:
    """FLEAD_* variables that reproduce `settings` in a child process (paths made absolute)."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = value.resolve()
        elif isinstance(value, dict | list | tuple | set):
            value = json.dumps(list(value) if isinstance(value, set | tuple) else value, default=str)
        env[f"FLEAD_{name.upper()}"] = str(value)
    return env


class Supervisor:
    """Supervises the global API, the stream trainer and the notifier for one set of settings."""

    def __init__(self, settings: Settings, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.state_dir).resolve() / "supervised"
        self.log_dir = Path(log_dir or Path(settings.state_dir) / "logs").resolve()
        self._mongo: MongoClient | None = None

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._mongo is not None:
            self._mongo.close()
            self._mongo = None

    # --- files -----------------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        _check_name(name)
        return self.root / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """Where the running (or last) process logs: its record says; else the current log dir."""
        record = read_record(self.pid_file(name))
        if record and record.get("log_file"):
            return Path(record["log_file"])
        return self.log_dir / f"{name}.log"

    def tail_log(self, name: str, lines: int = 20) -> str:
        return tail_text(self.log_file(name), lines, max_bytes=64 * 1024)

    # --- what a service is -----------------------------------------------------------------

    def wanted(self) -> list[str]:
        """The services these settings run, in start order: the notifier only with webhook URLs."""
        return [name for name in SERVICES if self.off_reason(name) is None]

    def off_reason(self, name: str) -> str | None:
        if name == NOTIFIER and not self.settings.alert_urls:
            return "off: no FLEAD_ALERTS_WEBHOOK_URLS"
        return None

    def check(self, name: str) -> Status:
        """How the service is now (a few probes of about a second each at most)."""
        _check_name(name)
        reap_children()
        process = owned_process(self.pid_file(name))
        log_file = self.log_file(name)
        off = self.off_reason(name)
        if process is None and off is not None:
            return Status(name, State.OFF, None, off, log_file)
        if process is None:
            probe = self._probe(name, None)
            if probe.answering:  # someone else runs it (e.g. `flead api run` by hand, another host)
                state = State.HEALTHY if probe.healthy else State.UNHEALTHY
                detail = f"{probe.detail} (not started by the supervisor)"
                return Status(name, state, probe.pid, detail, log_file, False, True, probe.info)
            return Status(name, State.DOWN, None, probe.detail, log_file, False, False, probe.info)
        probe = self._probe(name, process.pid)
        if probe.answering:
            if probe.healthy:
                state = State.HEALTHY
            elif probe.waiting:
                state = State.STARTING
            else:
                state = State.UNHEALTHY
            return Status(name, state, process.pid, probe.detail, log_file, True, True, probe.info)
        age = time.time() - process.create_time()
        if age < self._start_grace_s():
            detail = f"started {age:.0f} s ago, not answering yet ({probe.detail})"
            return Status(name, State.STARTING, process.pid, detail, log_file, True, False, probe.info)
        detail = f"alive for {age:.0f} s but not answering: {probe.detail}"
        return Status(name, State.UNHEALTHY, process.pid, detail, log_file, True, False, probe.info)

    def status(self) -> list[Status]:
        return [self.check(name) for name in SERVICES]

    # --- keeping it running ----------------------------------------------------------------

    def ensure_running(self, name: str, enabled: bool = True) -> EnsureResult:
        """Start the service when it is down, restart our own when dead or hung; see `Outcome`."""
        _check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / f"{name}.lock"):
            record = read_record(self.pid_file(name))
            status = self.check(name)
            if not enabled or status.state is State.OFF:
                return EnsureResult(name, Outcome.DISABLED, status)
            if status.state is State.HEALTHY:
                return EnsureResult(name, Outcome.HEALTHY, status)
            if status.state is State.STARTING:
                return EnsureResult(name, Outcome.STARTING, status)
            if status.state is State.UNHEALTHY and (status.answering or not status.supervised):
                # It says what is wrong (a dependency away) or it is not ours: a restart would not help.
                return EnsureResult(name, Outcome.UNHEALTHY, status)
            previous = record.get("pid") if record else None
            if status.supervised and status.pid is not None:  # alive but hung
                process = owned_process(self.pid_file(name))
                if process is not None:
                    terminate(process, self.settings.local_stop_grace_s)
                self.pid_file(name).unlink(missing_ok=True)
            blocker = self._port_blocker(name)
            if blocker is not None:
                failed = Status(name, State.DOWN, None, blocker, self.log_file(name))
                return EnsureResult(name, Outcome.FAILED, failed, previous)
            process = self._start(name)
            status = self._wait_for_health(name, process)
            if status.state is State.DOWN:
                return EnsureResult(name, Outcome.FAILED, status, previous)
            return EnsureResult(name, Outcome.RESTARTED if previous else Outcome.STARTED, status, previous)

    def stop_all(self) -> list[StopResult]:
        """Stop what the supervisor started (SIGTERM, the grace, then SIGKILL), in reverse start order."""
        return [self.stop(name) for name in reversed(SERVICES)]

    def stop(self, name: str) -> StopResult:
        """Stop the service's process if the supervisor started it (never one it did not start)."""
        pid_file = self.pid_file(name)
        with exclusive_lock(self.root / f"{name}.lock"):
            process = owned_process(pid_file)
            pid_file.unlink(missing_ok=True)
            if process is None:
                return StopResult(name, None, "not running")
            return StopResult(name, process.pid, terminate(process, self.settings.local_stop_grace_s))

    def supervised_pid(self, name: str) -> int | None:
        """The PID of the live process the supervisor started for the service, or None."""
        process = owned_process(self.pid_file(name))
        return process.pid if process else None

    # --- internals -------------------------------------------------------------------------

    def _start_grace_s(self) -> float:
        """How long a started process may stay silent before it counts as hung."""
        return self.settings.local_start_timeout_s

    def command(self, name: str) -> list[str]:
        _check_name(name)
        command = {API: ["api", "run"], TRAINER: ["trainer", "run"], NOTIFIER: ["alerts", "run"]}[name]
        return [sys.executable, "-m", "flead_cli", *command]

    def environment(self, name: str) -> dict[str, str]:
        """The caller's environment, the supervisor's settings as FLEAD_* and the shared admin token."""
        token = local_admin_key(self.settings)
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        if name == API:
            env["FLEAD_API_ADMIN_KEY"] = token
        elif name == TRAINER:
            env["FLEAD_TRAINER_EXCHANGE"] = "http"
            env["FLEAD_API_KEY"] = token
        return env

    def _start(self, name: str) -> psutil.Process:
        return start_detached(
            self.command(name),
            log_file=self.log_dir / f"{name}.log",
            pid_file=self.pid_file(name),
            cwd=Path.cwd(),
            env=self.environment(name),
            record={"service": name, "started_at": datetime.now(UTC).isoformat()},
        )

    def _wait_for_health(self, name: str, process: psutil.Process) -> Status:
        deadline = time.monotonic() + min(self.settings.local_start_timeout_s, MAX_START_WAIT_S)
        while True:
            if not _running(process):
                reap_children()
                self.pid_file(name).unlink(missing_ok=True)
                log_file = self.log_dir / f"{name}.log"
                detail = f"exited while starting; see {log_file}:\n{self.tail_log(name, 15)}"
                return Status(name, State.DOWN, None, detail, log_file)
            status = self.check(name)
            if status.state is State.HEALTHY or time.monotonic() >= deadline:
                return status
            time.sleep(POLL_S)  # poll interval between health probes, bounded by the deadline

    def _port_blocker(self, name: str) -> str | None:
        """Why a service cannot be started: its port is held by a process that does not answer it."""
        if name != API:
            return None  # the trainer falls back to any free health port by itself
        address = Address.parse(self.settings.api_url)
        owner = port_owner(address)
        if owner is None:
            return None
        return (
            f"cannot start the API: {address} is in use by {owner}, which does not answer /health; "
            f"stop it or choose another FLEAD_API_URL"
        )

    def _probe(self, name: str, pid: int | None) -> _Probe:
        if name == API:
            return self._probe_api()
        if name == NOTIFIER:
            return self.probe_notifier(pid)
        return self._probe_trainer(pid)

    def _probe_api(self) -> _Probe:
        url = f"{self.settings.api_url.rstrip('/')}/health"
        try:
            response = httpx.get(url, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return _Probe(False, False, f"no answer at {url} ({type(exc).__name__})")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        version = body.get("version")
        if response.status_code == 200:
            return _Probe(True, True, f"global model version {version}", info={"version": version})
        problem = body.get("error") or response.text[:200]
        return _Probe(True, False, f"/health answered {response.status_code}: {problem}")

    def _probe_trainer(self, pid: int | None) -> _Probe:
        heartbeat, mongo_problem = self._heartbeat(pid)
        if pid is None:
            # Not ours: a live trainer elsewhere counts when its heartbeat is fresh.
            if heartbeat is not None and _alive(heartbeat):
                return _from_document(heartbeat, via="heartbeat")
            return _Probe(False, False, mongo_problem or "no trainer heartbeat")
        port = (heartbeat or {}).get("health_port") or self.settings.trainer_health_port
        url = f"http://{self.settings.trainer_health_host}:{port}/health"
        try:
            response = httpx.get(url, timeout=PROBE_TIMEOUT_S)
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"no answer at {url} ({type(exc).__name__})"
        else:
            if isinstance(document, dict) and document.get("pid") == pid:
                return _from_document(document, via=f"/health on port {port}")
            problem = f"port {port} is answered by another process"
        if heartbeat is not None and _fresh(heartbeat, self.settings.service_stale_s):
            return _from_document(heartbeat, via="heartbeat")
        return _Probe(False, False, f"{problem}; {mongo_problem or 'no fresh heartbeat'}")

    def probe_notifier(self, pid: int | None = None, host: str | None = None) -> _Probe:
        """Its heartbeat, fresh: of `pid` on this host, else of any notifier (on `host` if given)."""
        query: dict[str, object] = {"service": NOTIFIER}
        if pid is not None:
            query |= {"pid": pid, "host": socket.gethostname()}
        elif host is not None:
            query["host"] = host
        heartbeat, mongo_problem = self._find_heartbeat(query)
        if heartbeat is None or not _fresh(heartbeat, self.settings.service_stale_s):
            return _Probe(False, False, mongo_problem or "no fresh notifier heartbeat")
        counters = heartbeat.get("counters") or {}
        info = {
            "status": heartbeat.get("status"),
            "pending": heartbeat.get("pending"),
            "dead": heartbeat.get("dead"),
            "delivered": counters.get("delivered"),
        }
        detail = (
            f"{info['status']}: {info['delivered']} delivered, {info['pending']} pending, "
            f"{info['dead']} dead letters, {heartbeat.get('urls')} URL(s)"
        )
        if not heartbeat.get("healthy"):
            detail += f"; last pass failed: {heartbeat.get('last_error')}"
        return _Probe(True, bool(heartbeat.get("healthy")), detail, heartbeat.get("pid"), info=info)

    def _heartbeat(self, pid: int | None) -> tuple[dict | None, str | None]:
        """The trainer's heartbeat document: of `pid` on this host, else the freshest of the group."""
        if pid is not None:
            return self._find_heartbeat({"pid": pid, "host": socket.gethostname()})
        since = datetime.now(UTC) - timedelta(seconds=self.settings.service_stale_s)
        group = {"group": self.settings.consumer_group, "healthy": True, "updated_at": {"$gte": since}}
        return self._find_heartbeat(group)

    def _find_heartbeat(self, query: dict) -> tuple[dict | None, str | None]:
        """The freshest heartbeat document matching `query`, or None and why MongoDB did not answer."""
        try:
            if self._mongo is None:
                timeout_ms = int(PROBE_TIMEOUT_S * 1000)
                self._mongo = make_mongo_client(
                    self.settings,
                    serverSelectionTimeoutMS=timeout_ms,
                    connectTimeoutMS=timeout_ms,
                    socketTimeoutMS=2 * timeout_ms,
                )
            services = self._mongo[self.settings.mongo_db][self.settings.collection_services]
            return services.find_one(query, sort=[("updated_at", DESCENDING)]), None
        except PyMongoError as exc:
            return None, f"heartbeats unreadable (MongoDB: {type(exc).__name__})"


def _check_name(name: str) -> None:
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; supervised services: {', '.join(SERVICES)}")


def _fresh(document: dict, stale_s: float) -> bool:
    updated = document.get("updated_at")
    if not isinstance(updated, datetime):
        return False
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return datetime.now(UTC) - updated < timedelta(seconds=stale_s)


def _alive(heartbeat: dict) -> bool:
    """A heartbeat of a live process: on another host we cannot tell (its freshness must do)."""
    if heartbeat.get("host") != socket.gethostname():
        return True
    try:
        return psutil.Process(int(heartbeat["pid"])).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _from_document(document: dict, *, via: str) -> _Probe:
    """A trainer's /health or heartbeat document as a probe result."""
    status = document.get("status")
    healthy = bool(document.get("healthy"))
    rate, lag = document.get("records_per_s"), document.get("lag_total")
    exchange = document.get("exchange") or {}
    info = {
        "status": status,
        "records_per_s": rate,
        "lag_total": lag,
        "devices": document.get("devices"),
        "partitions": len(document.get("partitions") or []),
        "health_port": document.get("health_port"),
        "global_version": exchange.get("global_version") if isinstance(exchange, dict) else None,
    }
    detail = f"{status}: {rate} records/s, lag {lag}, {info['devices']} devices ({via})"
    if not document.get("mongo_ok", True):
        detail += "; MongoDB unreachable from the trainer"
    return _Probe(True, healthy, detail, document.get("pid"), status == "starting", info)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
