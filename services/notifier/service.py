"""The notifier: a small loop beside the stream trainer that turns anomaly events into webhook
notifications, through a MongoDB outbox, so a crash or restart neither loses nor floods them.

Each pass:

1. **Follow the events.** Read ``collection_events`` documents whose ``updated_at`` is at or after
   the persisted cursor minus ``OVERLAP_S`` (trainers write in batches and their clocks differ), in
   ``(updated_at, _id)`` order. An open event is due a ``firing`` notification, a closed one a
   ``resolved`` notification, for every URL. A notification is one outbox document,
   ``_id = f"{url_key}|{event_id}|{status}"``, inserted only if absent: seeing an event again (every
   rewrite of an open event, the overlap, a restart) adds nothing. Then the cursor is saved. The first
   pass on a database starts ``FIRST_LOOKBACK_S`` back, not at the beginning of the history. A firing
   still pending when its event closes is ``superseded`` by the resolved notification (never a firing
   after its resolved).
2. **Rate limit.** A new notification of a device over ``alerts_rate_limit`` per minute (per URL) is
   stored ``suppressed`` instead of ``pending``; the next one sent for the device carries how many were
   suppressed since (``suppressed.count``), and marks them summarised. A ``resolved`` notification of a
   firing that was sent is always sent (a receiver is never left with a firing alert); that of a
   suppressed firing is suppressed too.
3. **Deliver** the due ``pending`` notifications (``next_at`` passed), signed: a 2xx marks it
   ``delivered``; a 5xx, 408, 429, timeout or connection error schedules the next try with exponential
   backoff (``next_at``); after ``alerts_max_attempts`` tries, or at once on another 4xx, it becomes
   ``dead`` and a copy with the reason and the body goes to ``collection_alert_dead_letters``.

Guarantees: at least once per (URL, event, status). A notifier killed after a receiver answered but
before the outbox recorded it sends that one notification again, with the same ``X-FLEAD-Delivery``
id, which a receiver can deduplicate on. Nothing is dropped silently: every notification ends
delivered, suppressed (counted in the device's next notification and in the outbox), superseded, or
dead (with the reason). One notifier works per database at a time: it holds a lease (``_id =
"lease"`` in the cursor collection), renewed before every try; another one stands by until the lease
is released (on close) or runs out (``LEASE_S`` after a crash).

Health: every ``HEARTBEAT_S`` the loop writes its heartbeat (``collection_services``, ``_id =
"notifier:<host>:<pid>"``, ``service = "notifier"``): leader or standing by, the counters, the
notifications pending and dead, and whether the last pass worked. ``flead.local.supervisor`` reads it
as the notifier's health (``flead services status``, the Dagster sensor, the compose healthcheck via
``flead alerts health``); the heartbeat is removed on close.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from flead.alerts.payload import event_snapshot, event_status, render_payload
from flead.alerts.policy import RateLimiter, RetrySchedule, Verdict, classify
from flead.alerts.signing import DELIVERY_HEADER, sign
from flead.config import Settings
from flead.schema import EPOCH
from flead.storage.mongo import make_mongo_client

log = logging.getLogger(__name__)

OVERLAP_S = 60.0  # how far behind the cursor each pass looks again
FIRST_LOOKBACK_S = 600.0  # a first start notifies of the events updated this recently, not all history
CURSOR_ID = "events"
LEASE_ID = "lease"
LEASE_S = 30.0  # a notifier that stopped renewing its lease for this long is taken over
DELIVER_BATCH = 100
FOLLOW_CHUNK = 500
WINDOW_S = 60.0
HEARTBEAT_S = 5.0
SERVICE = "notifier"  # the heartbeat's `service`


def heartbeat_id(host: str, pid: int) -> str:
    return f"{SERVICE}:{host}:{pid}"


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass
class NotifierCounters:
    queued: int = 0
    suppressed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


class Notifier:
    def __init__(self, settings: Settings, *, client=None, lease_s: float = LEASE_S) -> None:
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.leader = False
        self.urls = settings.alert_urls
        secret = settings.alerts_webhook_secret
        self.secret = secret.get_secret_value() if secret is not None else ""
        self.schedule = RetrySchedule(
            settings.alerts_max_attempts, settings.alerts_backoff_s, settings.alerts_backoff_max_s
        )
        self.client = client or make_mongo_client(settings)
        db = self.client[settings.mongo_db]
        self.events = db[settings.collection_events]
        self.outbox = db[settings.collection_alert_outbox]
        self.dead_letters = db[settings.collection_alert_dead_letters]
        self.cursors = db[settings.collection_alert_cursor]
        self.heartbeats = db[settings.collection_services]
        self.heartbeat_id = heartbeat_id(socket.gethostname(), os.getpid())
        self.http = httpx.Client(timeout=settings.alerts_timeout_s)
        self.counters = NotifierCounters()
        self.limiter = RateLimiter(settings.alerts_rate_limit, WINDOW_S)
        self._stop = threading.Event()
        self._indexes()
        self._seed_limiter()

    def _indexes(self) -> None:
        self.events.create_index([("updated_at", ASCENDING)])
        self.outbox.create_index([("state", ASCENDING), ("next_at", ASCENDING)])
        self.outbox.create_index([("target", ASCENDING), ("device_id", ASCENDING), ("state", ASCENDING)])

    def _seed_limiter(self) -> None:
        """What was queued in the last window before a restart still counts."""
        since = datetime.now(UTC) - timedelta(seconds=WINDOW_S)
        query = {"counted": True, "created_at": {"$gte": since}}
        for doc in self.outbox.find(query).sort([("created_at", ASCENDING)]):
            self.limiter.record(f"{doc['target']}|{doc['device_id']}", _epoch(doc["created_at"]))

    def hold_lease(self) -> bool:
        """Take or renew the one notifier lease of the database; False while another notifier's is live."""
        now = datetime.now(UTC)
        try:
            self.cursors.find_one_and_update(
                {"_id": LEASE_ID, "$or": [{"owner": self.owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expires_at": now + timedelta(seconds=self.lease_s)}},
                upsert=True,
            )
        except DuplicateKeyError:  # held by another live notifier: stand by
            if self.leader:
                log.warning("notifier lease lost to another notifier; standing by")
            self.leader = False
            return False
        if not self.leader:
            log.info("notifier %s holds the lease", self.owner)
        self.leader = True
        return True

    def release_lease(self) -> None:
        self.cursors.update_one({"_id": LEASE_ID, "owner": self.owner}, {"$set": {"expires_at": EPOCH}})
        self.leader = False

    def close(self) -> None:
        try:
            self.release_lease()  # a successor takes over at once, not after the lease runs out
            self.heartbeats.delete_one({"_id": self.heartbeat_id})
        except Exception:
            log.warning("could not release the notifier lease", exc_info=True)
        self.http.close()
        self.client.close()

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- the loop

    def run(self, *, interval_s: float = 1.0) -> None:
        """Passes until ``stop()`` (SIGTERM); a failing pass is logged and retried on the next one."""
        last_beat = None
        while not self._stop.is_set():
            ok = True
            try:
                self.run_once()
            except Exception as exc:  # MongoDB away, a bug: keep going, the outbox holds the state
                ok = False
                log.exception("notifier pass failed")
                self.counters.errors.append(f"{type(exc).__name__}: {exc}")
                del self.counters.errors[:-20]
            due = last_beat is None or time.monotonic() - last_beat >= HEARTBEAT_S or not ok
            if due and self.beat(ok):
                last_beat = time.monotonic()
            self._stop.wait(interval_s)

    def beat(self, ok: bool) -> bool:
        """Write the heartbeat; False when MongoDB did not take it (the next pass tries again)."""
        try:
            backlog = {state: self.outbox.count_documents({"state": state}) for state in ("pending", "dead")}
            self.heartbeats.replace_one(
                {"_id": self.heartbeat_id},
                {
                    "service": SERVICE,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "healthy": ok,
                    "status": "leader" if self.leader else "standing by",
                    "urls": len(self.urls),
                    "counters": {k: v for k, v in vars(self.counters).items() if k != "errors"},
                    "last_error": self.counters.errors[-1] if self.counters.errors else None,
                    **backlog,
                    "updated_at": datetime.now(UTC),
                },
                upsert=True,
            )
        except Exception:
            log.warning("notifier heartbeat not written", exc_info=True)
            return False
        return True

    def run_once(self, now: datetime | None = None) -> None:
        if not self.urls or not self.hold_lease():
            return
        self.follow_events(now)
        self.deliver_due(now)

    # ---------------------------------------------------------------- 1. follow, 2. rate limit

    def follow_events(self, now: datetime | None = None) -> int:
        """Queue the notifications the events updated since the cursor are due; the number queued."""
        if not self.urls:
            return 0
        cursor = self.cursors.find_one({"_id": CURSOR_ID})
        if cursor and cursor.get("updated_at") is not None:
            since = _utc(cursor["updated_at"]) - timedelta(seconds=OVERLAP_S)
        else:  # the first pass on this database: the recent events, not the whole history
            since = datetime.now(UTC) - timedelta(seconds=FIRST_LOOKBACK_S)
        query = {"updated_at": {"$gte": since}}
        queued, newest, chunk = 0, None, []
        events = self.events.find(query).sort([("updated_at", ASCENDING), ("_id", ASCENDING)])
        for event in events:
            chunk.append(event)
            if event.get("updated_at") is not None:
                newest = _utc(event["updated_at"])
            if len(chunk) >= FOLLOW_CHUNK:
                queued += self._enqueue_chunk(chunk, now)
                chunk = []
        queued += self._enqueue_chunk(chunk, now)
        if newest is not None:
            self.cursors.update_one({"_id": CURSOR_ID}, {"$max": {"updated_at": newest}}, upsert=True)
        return queued

    def _enqueue_chunk(self, events: list[dict], now: datetime | None) -> int:
        """Queue what ``events`` are due, looking their notifications up in one query."""
        if not events:
            return 0
        wanted = []
        for event in events:
            for url in self.urls:
                target, event_id = url_key(url), str(event["_id"])
                wanted += [f"{target}|{event_id}|firing", f"{target}|{event_id}|resolved"]
        known = {doc["_id"]: doc["state"] for doc in self.outbox.find({"_id": {"$in": wanted}}, {"state": 1})}
        when = now or datetime.now(UTC)
        return sum(self._enqueue(url, event, when, known) for event in events for url in self.urls)

    def _enqueue(self, url: str, event: dict, now: datetime, known: dict[str, str]) -> int:
        target, event_id, status = url_key(url), str(event["_id"]), event_status(event)
        notification_id = f"{target}|{event_id}|{status}"
        if notification_id in known:
            return 0
        device = str(event.get("device_id"))
        state, counted = "pending", True
        firing_id = f"{target}|{event_id}|firing"
        firing = known.get(firing_id) if status == "resolved" else None
        if firing == "suppressed":
            state, counted = "suppressed", False
        elif firing is not None:
            counted = False  # the end of an alert the receiver was sent: never rate-limited
            if firing == "pending":  # not delivered yet: the resolved one says it all, and never
                # arrives before it (a firing after its resolved would leave the alert firing)
                superseded = self.outbox.update_one(
                    {"_id": firing_id, "state": "pending"},
                    {"$set": {"state": "superseded", "superseded_by": notification_id}},
                )
                if superseded.modified_count:
                    known[firing_id] = "superseded"
        elif not self.limiter.allow(f"{target}|{device}", _epoch(now)):
            state, counted = "suppressed", False
        doc = {
            "_id": notification_id,
            "target": target,
            "url": url,
            "event_id": event_id,
            "device_id": device,
            "status": status,
            "state": state,
            "counted": counted,
            "attempts": 0,
            "next_at": now,
            "created_at": now,
            "event": event_snapshot(event),
        }
        if state == "suppressed":
            doc["summarised"] = False
        try:
            self.outbox.insert_one(doc)
        except DuplicateKeyError:
            return 0
        known[notification_id] = state
        if state == "suppressed":
            self.counters.suppressed += 1
            log.info("notification %s suppressed (rate limit of %s)", notification_id, device)
            return 0
        self.counters.queued += 1
        return 1

    # ---------------------------------------------------------------- 3. deliver

    def deliver_due(self, now: datetime | None = None) -> int:
        """Try every pending notification whose time has come; the number tried."""
        now = now or datetime.now(UTC)
        due = list(
            # Only to the URLs configured now: those of a URL taken out of the settings stay pending.
            self.outbox.find(
                {
                    "state": "pending",
                    "target": {"$in": [url_key(u) for u in self.urls]},
                    "next_at": {"$lte": now},
                }
            )
            .sort([("next_at", ASCENDING), ("_id", ASCENDING)])
            .limit(DELIVER_BATCH)
        )
        for doc in due:
            if self._stop.is_set() or not self.hold_lease():  # renewed per try: a try may take a timeout
                break
            self._deliver(doc)
        return len(due)

    def _body(self, doc: dict) -> bytes:
        """The notification's body. Its first try takes over the device's suppressed notifications
        not yet summarised (stored with it), so every try sends the same body."""
        if "suppressed_ids" not in doc:
            query = {
                "target": doc["target"],
                "device_id": doc["device_id"],
                "state": "suppressed",
                "$or": [{"summarised": False}, {"summary": doc["_id"]}],  # the latter: after a crash
            }
            ids, since = [], None
            for other in self.outbox.find(query, {"created_at": 1}):
                ids.append(other["_id"])
                created = _utc(other["created_at"])
                since = created if since is None or created < since else since
            if ids:
                self.outbox.update_many(
                    {"_id": {"$in": ids}}, {"$set": {"summarised": True, "summary": doc["_id"]}}
                )
            first = None if since is None else since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.outbox.update_one(
                {"_id": doc["_id"]}, {"$set": {"suppressed_ids": sorted(ids), "suppressed_since": first}}
            )
            doc["suppressed_ids"], doc["suppressed_since"] = sorted(ids), first
        carried = doc["suppressed_ids"]
        return render_payload(
            self.settings.alerts_format,
            doc["event"],
            doc["status"],
            delivery_id=doc["_id"],
            suppressed=len(carried),
            suppressed_since=doc.get("suppressed_since"),
            external_url=self.settings.api_url,
        )

    def _deliver(self, doc: dict) -> None:
        body = self._body(doc)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: doc["_id"], **sign(self.secret, body)}
        status_code, reason = None, ""
        try:
            response = self.http.post(doc["url"], content=body, headers=headers)
            status_code = response.status_code
            reason = f"HTTP {status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        verdict = classify(status_code)
        attempts = doc["attempts"] + 1
        now = datetime.now(UTC)
        if verdict is Verdict.DELIVERED:
            self.outbox.update_one(
                {"_id": doc["_id"]},
                {
                    "$set": {
                        "state": "delivered",
                        "attempts": attempts,
                        "delivered_at": now,
                        "last_status": status_code,
                    }
                },
            )
            self.counters.delivered += 1
            return
        delay = self.schedule.delay(attempts) if verdict is Verdict.RETRY else None
        if delay is not None:
            self.outbox.update_one(
                {"_id": doc["_id"]},
                {
                    "$set": {
                        "attempts": attempts,
                        "next_at": now + timedelta(seconds=delay),
                        "last_error": reason,
                        "last_status": status_code,
                    }
                },
            )
            self.counters.retried += 1
            log.info("notification %s failed (%s); try %d in %.1f s", doc["_id"], reason, attempts + 1, delay)
            return
        why = (
            f"gave up after {attempts} tries; last: {reason}"
            if verdict is Verdict.RETRY
            else f"refused by the receiver (not retried): {reason}"
        )
        dead = {
            "_id": doc["_id"],
            "url": doc["url"],
            "event_id": doc["event_id"],
            "device_id": doc["device_id"],
            "status": doc["status"],
            "attempts": attempts,
            "reason": why,
            "last_status": status_code,
            "body": body.decode(),
            "dead_at": now,
        }
        self.dead_letters.replace_one({"_id": doc["_id"]}, dead, upsert=True)
        self.outbox.update_one(
            {"_id": doc["_id"]},
            {
                "$set": {
                    "state": "dead",
                    "attempts": attempts,
                    "last_error": reason,
                    "reason": why,
                    "dead_at": now,
                }
            },
        )
        self.counters.dead += 1
        log.warning("notification %s dead-lettered: %s", doc["_id"], why)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch(value: datetime) -> float:
    return _utc(value).timestamp()
