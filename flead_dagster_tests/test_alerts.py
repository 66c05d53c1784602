"""Webhook notifications of anomaly events (`flead.alerts`, `services/notifier`): signatures, retries
with backoff, dead letters, the per-device rate limit and the Alertmanager format, against a real
local HTTP receiver and the real MongoDB server; a restarted notifier neither loses nor repeats."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flead.alerts import RateLimiter, RetrySchedule, SignatureError, Verdict, classify, sign, verify
from flead.alerts.payload import event_snapshot, render_payload
from flead.config import Settings
from flead.local.services import free_port
from flead_dagster_tests.helpers.alerts import SECRET, Receiver
from flead_dagster_tests.helpers.events import event
from services.notifier.service import Notifier

# ------------------------------------------------------------------------------ core logic


def test_signature_verifies_and_refuses_tampering_and_replays():
    body = b'{"status":"firing"}'
    headers = sign(SECRET, body, now=1_000_000)
    verify(
        SECRET,
        body,
        timestamp=headers["X-FLEAD-Timestamp"],
        signature_header=headers["X-FLEAD-Signature"],
        now=1_000_010,
    )
    assert headers["X-FLEAD-Signature"].startswith("sha256=")
    bad = [
        (SECRET, body + b" ", headers["X-FLEAD-Timestamp"], 1_000_010),  # body changed
        ("other", body, headers["X-FLEAD-Timestamp"], 1_000_010),  # wrong secret
        (SECRET, body, "1000001", 1_000_010),  # timestamp changed: it is signed too
        (SECRET, body, headers["X-FLEAD-Timestamp"], 1_000_000 + 301),  # too old: a replay
    ]
    for secret, data, ts, now in bad:
        with pytest.raises(SignatureError):
            verify(secret, data, timestamp=ts, signature_header=headers["X-FLEAD-Signature"], now=now)


def test_what_is_retried_and_when():
    assert classify(200) is Verdict.DELIVERED and classify(204) is Verdict.DELIVERED
    assert {classify(c) for c in (500, 502, 503, 408, 429, None)} == {Verdict.RETRY}
    assert {classify(c) for c in (400, 401, 403, 404, 410, 301)} == {Verdict.FAIL}
    schedule = RetrySchedule(max_attempts=5, base_s=1.0, max_delay_s=5.0)
    assert [schedule.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]


def test_rate_limiter_is_a_sliding_window_per_key():
    limiter = RateLimiter(2, window_s=60)
    assert [limiter.allow("a", t) for t in (0, 1, 2, 30)] == [True, True, False, False]
    assert limiter.allow("b", 2)  # per key
    assert limiter.allow("a", 60.5)  # the first one left the window
    assert not limiter.allow("a", 60.6)
    assert all(RateLimiter(0).allow("a", t) for t in range(100))  # 0: no limit
    seeded = RateLimiter(1)
    seeded.record("a", 10)  # sent before a restart
    assert not seeded.allow("a", 20) and seeded.allow("a", 71)


def test_alertmanager_payload_has_the_webhook_format():
    doc = event("mote-1", 3, rule=2, open_=False)
    body = json.loads(
        render_payload(
            "alertmanager", event_snapshot(doc), "resolved", delivery_id="x", external_url="http://api:8000"
        )
    )
    assert body["version"] == "4" and body["status"] == "resolved" and body["receiver"] == "flead"
    assert body["groupLabels"] == {"alertname": "FleadAnomalyEvent", "device_id": "mote-1"}
    [alert] = body["alerts"]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["event_id"] == doc["_id"]
    assert alert["startsAt"] == "2004-03-01T03:00:00.000000Z"
    assert alert["endsAt"] == "2004-03-01T03:30:00.000000Z"
    assert "temperature (80%)" in alert["annotations"]["description"]
    assert alert["generatorURL"] == "http://api:8000/api/events?device=mote-1"
    firing = json.loads(render_payload("alertmanager", event_snapshot(doc), "firing", delivery_id="x"))
    assert firing["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"


# ------------------------------------------------------------------------------ a real receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def notifier_for(url: str, **overrides) -> Notifier:
    values = {
        "mongo_db": f"alerts_{uuid.uuid4().hex[:8]}",
        "alerts_webhook_urls": url,
        "alerts_webhook_secret": SECRET,
        "alerts_backoff_s": 0.05,
        "alerts_backoff_max_s": 0.2,
        "alerts_timeout_s": 2.0,
    }
    settings = Settings(**{**values, **overrides})
    return Notifier(settings)


def until(condition, notifier: Notifier, timeout_s: float = 20.0) -> None:
    """Run notifier passes until ``condition()`` holds (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        notifier.run_once()
        time.sleep(0.02)  # a pass is cheap; do not spin on the CPU the receiver needs


def outbox_states(notifier: Notifier) -> dict[str, str]:
    return {doc["_id"].split("|", 1)[1]: doc["state"] for doc in notifier.outbox.find({})}


def test_signed_notifications_retried_until_delivered_and_not_repeated_after_restart(services_env, receiver):
    notifier = notifier_for(receiver.url)
    db_name = notifier.settings.mongo_db
    doc = event("mote-1", 1, open_=True)
    notifier.events.insert_one(doc)
    receiver.script = [503, 500]  # two transient failures, then 200
    until(lambda: outbox_states(notifier).get(f"{doc['_id']}|firing") == "delivered", notifier)
    assert len(receiver.requests) == 3
    bodies = [body for _, body in receiver.requests]
    assert len(set(bodies)) == 1  # every try sends the same body
    for headers, body in receiver.requests:  # and each verifies at the receiver
        verify(
            SECRET,
            body,
            timestamp=headers["X-FLEAD-Timestamp"],
            signature_header=headers["X-FLEAD-Signature"],
        )
        assert headers["X-FLEAD-Delivery"].endswith(f"|{doc['_id']}|firing")
    sent = receiver.bodies()[0]
    assert sent["status"] == "firing" and sent["type"] == "flead.anomaly_event"
    assert sent["event"]["id"] == doc["_id"] and sent["event"]["start"] == "2004-03-01T01:00:00.000000Z"
    assert notifier.outbox.find_one({"status": "firing"})["attempts"] == 3

    # The trainer rewrites the open event (later updated_at): nothing new to say.
    notifier.events.replace_one({"_id": doc["_id"]}, {**doc, "flagged": 99, "updated_at": datetime.now(UTC)})
    notifier.run_once()
    assert len(receiver.requests) == 3
    notifier.close()

    # A restarted notifier (the same database, the persisted cursor and outbox) repeats nothing...
    restarted = notifier_for(receiver.url, mongo_db=db_name)
    restarted.run_once()
    assert len(receiver.requests) == 3
    # ...and says when the event closes.
    closed = {**doc, "open": False, "updated_at": datetime.now(UTC)}
    restarted.events.replace_one({"_id": doc["_id"]}, closed)
    until(lambda: len(receiver.requests) == 4, restarted)
    assert receiver.bodies()[-1]["status"] == "resolved"
    restarted.run_once()
    assert len(receiver.requests) == 4
    restarted.client.drop_database(db_name)
    restarted.close()


def test_a_permanently_failing_receiver_ends_in_the_dead_letters(services_env, receiver):
    notifier = notifier_for(receiver.url, alerts_max_attempts=3)
    failing, refused = event("mote-1", 1, open_=True), event("mote-2", 1, open_=True)
    notifier.events.insert_one(failing)
    receiver.script = [500] * 10
    until(lambda: notifier.dead_letters.count_documents({}) == 1, notifier)
    dead = notifier.dead_letters.find_one({})
    assert dead["event_id"] == failing["_id"] and dead["attempts"] == 3
    assert dead["reason"].startswith("gave up after 3 tries; last: HTTP 500")
    assert json.loads(dead["body"])["event"]["id"] == failing["_id"]
    assert len(receiver.requests) == 3

    receiver.script = [400]  # a refusal is not retried
    notifier.events.insert_one(refused)
    until(lambda: notifier.dead_letters.count_documents({}) == 2, notifier)
    dead = notifier.dead_letters.find_one({"event_id": refused["_id"]})
    assert dead["attempts"] == 1 and "refused by the receiver (not retried): HTTP 400" in dead["reason"]
    assert outbox_states(notifier) == {f"{failing['_id']}|firing": "dead", f"{refused['_id']}|firing": "dead"}
    from typer.testing import CliRunner

    from flead_cli import app

    shown = CliRunner().invoke(app, ["alerts", "status"], env={"FLEAD_MONGO_DB": notifier.settings.mongo_db})
    assert shown.exit_code == 0, shown.output
    assert "dead letters: 2" in shown.output and "dead" in shown.output.split("dead letters")[0]
    notifier.client.drop_database(notifier.settings.mongo_db)
    notifier.close()


def test_no_receiver_at_all_is_retried_then_dead_lettered(services_env):
    notifier = notifier_for(f"http://127.0.0.1:{free_port()}/hook", alerts_max_attempts=2)
    notifier.events.insert_one(event("mote-1", 1, open_=True))
    until(lambda: notifier.dead_letters.count_documents({}) == 1, notifier)
    dead = notifier.dead_letters.find_one({})
    assert dead["attempts"] == 2 and "ConnectError" in dead["reason"]
    notifier.client.drop_database(notifier.settings.mongo_db)
    notifier.close()


def test_rate_limit_suppresses_counts_and_summarises(services_env, receiver):
    notifier = notifier_for(receiver.url, alerts_rate_limit=2, alerts_format="alertmanager")
    docs = [event("mote-1", hour, open_=True) for hour in range(5)] + [event("mote-2", 0, open_=True)]
    notifier.events.insert_many(docs)
    notifier.follow_events()
    states = outbox_states(notifier)
    assert sorted(states.values()).count("suppressed") == 3  # mote-1's 3rd to 5th
    assert states[f"{docs[5]['_id']}|firing"] == "pending"  # the limit is per device
    until(lambda: len(receiver.requests) == 3, notifier)
    assert notifier.counters.suppressed == 3
    assert all(b["version"] == "4" and b["status"] == "firing" for b in receiver.bodies())
    carried = [int(b["commonAnnotations"].get("suppressed_notifications", 0)) for b in receiver.bodies()]
    assert sum(carried) == 3  # the device's next notification sent says how many were suppressed

    # Two more within the minute: suppressed; a sent alert's end is always sent, and carries them.
    more = [event("mote-1", hour, open_=True) for hour in (5, 6)]
    notifier.events.insert_many(more)
    notifier.follow_events()
    assert list(outbox_states(notifier).values()).count("suppressed") == 5
    first = docs[0]
    notifier.events.replace_one(
        {"_id": first["_id"]}, {**first, "open": False, "updated_at": datetime.now(UTC)}
    )
    until(lambda: len(receiver.requests) == 4, notifier)
    resolved = receiver.bodies()[-1]
    assert resolved["status"] == "resolved"
    assert resolved["commonAnnotations"]["suppressed_notifications"] == "2"
    assert notifier.outbox.count_documents({"state": "suppressed", "summarised": True}) == 5
    # A suppressed alert's end is suppressed too (its receiver never saw it fire).
    last = docs[4]
    notifier.events.replace_one(
        {"_id": last["_id"]}, {**last, "open": False, "updated_at": datetime.now(UTC)}
    )
    notifier.run_once()
    assert outbox_states(notifier)[f"{last['_id']}|resolved"] == "suppressed"
    assert len(receiver.requests) == 4
    notifier.client.drop_database(notifier.settings.mongo_db)
    notifier.close()


def test_every_url_is_notified_and_off_without_one(services_env, receiver):
    other = Receiver()
    try:
        notifier = notifier_for(f"{receiver.url},{other.url}")
        notifier.events.insert_one(event("mote-1", 1, open_=False, minutes=5))
        until(lambda: len(receiver.requests) == 1 and len(other.requests) == 1, notifier)
        assert receiver.bodies()[0]["status"] == "resolved"  # seen closed already: only its end
        notifier.client.drop_database(notifier.settings.mongo_db)
        notifier.close()
    finally:
        other.close()
    off = Notifier(Settings(mongo_db=f"alerts_{uuid.uuid4().hex[:8]}"))
    off.events.insert_one(event("mote-1", 1, open_=True))
    off.run_once()
    assert off.outbox.count_documents({}) == 0
    off.client.drop_database(off.settings.mongo_db)
    off.close()


def test_settings_need_a_secret_with_urls():
    from flead.config import SettingsError, load_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEAD_ALERTS_WEBHOOK_URLS", "http://127.0.0.1:9/hook")
        mp.delenv("FLEAD_ALERTS_WEBHOOK_SECRET", raising=False)
        with pytest.raises(SettingsError, match="FLEAD_ALERTS_WEBHOOK_SECRET"):
            load_settings()


def test_seen_before_restart_still_counts_against_the_limit(services_env, receiver):
    notifier = notifier_for(receiver.url, alerts_rate_limit=1)
    notifier.events.insert_one(event("mote-1", 0, open_=True))
    until(lambda: len(receiver.requests) == 1, notifier)
    notifier.close()
    restarted = notifier_for(receiver.url, mongo_db=notifier.settings.mongo_db, alerts_rate_limit=1)
    restarted.events.insert_one(
        event(
            "mote-1",
            1,
            open_=True,
        )
    )
    restarted.run_once()
    assert list(outbox_states(restarted).values()).count("suppressed") == 1
    assert (
        datetime.now(UTC) - timedelta(seconds=60)
        < restarted.outbox.find_one({"state": "delivered"})["created_at"]
    )
    restarted.client.drop_database(restarted.settings.mongo_db)
    restarted.close()


def test_one_notifier_per_database_at_a_time(services_env, receiver):
    first = notifier_for(receiver.url)
    db_name = first.settings.mongo_db
    second = notifier_for(receiver.url, mongo_db=db_name)
    first.run_once()
    assert first.leader
    second.events.insert_one(event("mote-1", 1, open_=True))
    second.run_once()  # stands by: the first holds the lease
    assert not second.leader and second.outbox.count_documents({}) == 0 and receiver.requests == []
    first.close()  # releases the lease: the second takes over at once
    until(lambda: len(receiver.requests) == 1, second)
    assert second.leader
    second.client.drop_database(db_name)
    second.close()


def test_an_event_closed_before_its_firing_got_through_sends_only_its_end(services_env, receiver):
    notifier = notifier_for(receiver.url, alerts_backoff_s=3600.0, alerts_backoff_max_s=3600.0)
    doc = event("mote-1", 1, open_=True)
    notifier.events.insert_one(doc)
    receiver.script = [503]
    until(lambda: len(receiver.requests) == 1, notifier)  # the firing failed; its retry is an hour away
    notifier.events.replace_one({"_id": doc["_id"]}, {**doc, "open": False, "updated_at": datetime.now(UTC)})
    until(lambda: len(receiver.requests) == 2, notifier)
    assert receiver.bodies()[-1]["status"] == "resolved"  # never a firing after its resolved
    states = outbox_states(notifier)
    assert states == {f"{doc['_id']}|firing": "superseded", f"{doc['_id']}|resolved": "delivered"}
    notifier.client.drop_database(notifier.settings.mongo_db)
    notifier.close()


def test_a_first_start_does_not_replay_the_history(services_env, receiver):
    notifier = notifier_for(receiver.url)
    old = {**event("mote-1", 1), "updated_at": datetime.now(UTC) - timedelta(hours=2)}
    recent = event("mote-2", 1)
    notifier.events.insert_many([old, recent])
    until(lambda: len(receiver.requests) == 1, notifier)
    notifier.run_once()
    assert [b["event"]["id"] for b in receiver.bodies()] == [recent["_id"]]
    notifier.client.drop_database(notifier.settings.mongo_db)
    notifier.close()


def test_flead_alerts_run_without_urls_says_notifications_are_off(services_env):
    # The process that delivers and stops on SIGTERM: test_sensors.py, started by its sensor.
    import os
    import subprocess
    import sys

    env = {**os.environ, **services_env, "FLEAD_ALERTS_WEBHOOK_URLS": ""}
    off = subprocess.run(
        [sys.executable, "-m", "services.notifier"], env=env, capture_output=True, text=True, timeout=60
    )
    assert off.returncode == 2 and "notifications are off" in off.stdout
