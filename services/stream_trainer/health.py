"""What the trainer reports about itself: counters, ``GET /health`` on a small HTTP port, and the
heartbeat document in ``collection_services`` (written by a background thread, so a slow or absent
MongoDB never stalls consumption)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pymongo.database import Database
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

COUNTERS = (
    "records_in",  # records polled
    "valid",
    "dlq",  # invalid records sent to the dead-letter topic
    "dlq_truncated",  # dead letters sent truncated (too large to send whole, or refused by Kafka)
    "dlq_undeliverable",  # dead letters Kafka refused even truncated: dropped, logged with their offset
    "late",  # late records (side output: the dead-letter topic with a "late: ..." reason)
    "scored",
    "judged",  # readings scored against a threshold (their device's own calibration or the fleet's)
    "unjudged",  # readings scored while no calibration existed yet (neither own nor fleet)
    "anomalies",
    "event_writes",  # event documents written (an open event is rewritten as it grows)
    "events_closed",  # events written closed (merge_gap readings passed without an alarm)
    "errors",  # device batches that failed to process (dead-lettered)
    "checkpoints",
    "checkpoint_failures",
    "mongo_errors",
    "fenced",  # partitions whose checkpoint was refused because another member owns them now
    "partition_resets",  # checkpoints of a recreated topic discarded: the partition read from its start
    "updates_pushed",
    "updates_withheld",  # updates of a device whose privacy budget the server said is spent: not sent
    "privacy_exhausted_by_server",  # devices marked spent by the server's refusal (see exchange.py)
    "adoptions",
    "adoption_errors",
    "devices_created",
    "normal_acks_applied",  # operators' new-normal acknowledgements applied (normal_acks.py)
)
RATE_WINDOW_S = 10.0


class Counters:
    """Monotonic counts, written by the consume loop and read by the health and heartbeat threads."""

    def __init__(self) -> None:
        self._values = dict.fromkeys(COUNTERS, 0)
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def records_per_s(self) -> float:
        """Records polled per second over the last ~10 seconds."""
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, self._values["records_in"]))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class HealthServer:
    """``GET /health``: the status document as JSON (200 while healthy, 503 otherwise), on all
    interfaces at ``settings.trainer_health_port`` (0, or a port already taken: any free port)."""

    def __init__(self, port: int, status: Callable[[], dict]) -> None:
        handler = _handler(status)
        try:
            self._server = ThreadingHTTPServer(("", port), handler)
        except OSError as exc:  # e.g. a second trainer on this host: any free port, told in the heartbeat
            if port == 0:
                raise
            log.warning("health port %d unavailable (%s): using a free port instead", port, exc)
            self._server = ThreadingHTTPServer(("", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="flead-health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(status: Callable[[], dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/health":
                self.send_error(404, "try /health")
                return
            document = status()
            body = json.dumps(document, default=str).encode()
            self.send_response(200 if document.get("healthy") else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health: " + format, *args)

    return Handler


class Heartbeat:
    """Upserts the status document into ``collection_services`` every `interval_s`."""

    def __init__(
        self, db: Database, collection: str, service_id: str, status: Callable[[], dict], interval_s: float
    ):
        self._collection = db[collection]
        self._id = service_id
        self._status = status
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flead-heartbeat", daemon=True)
        self.failures = 0

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def beat(self, **extra: object) -> bool:
        document = {**self._status(), **extra, "updated_at": datetime.now(UTC)}
        try:
            self._collection.replace_one({"_id": self._id}, document, upsert=True)
        except PyMongoError as exc:
            self.failures += 1
            log.warning("heartbeat not written: %s", exc)
            return False
        return True

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self._interval_s):
            self.beat()

    def stop(self, **final: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 10)
        self.beat(**final)
