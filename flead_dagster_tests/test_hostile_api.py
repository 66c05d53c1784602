"""The global API against hostile and heavy use (issue 12, defects 4 and 10), over real HTTP against real
MongoDB servers: cheap deep reads over ~80k anomalies must not make ``/health`` wait, ``/health`` must
notice a frozen MongoDB, a body shorter than its Content-Length must not hold a request for ever,
malformed queries get a clear 4xx (never a 5xx), cursor pages return every event once, and two API
processes on one MongoDB keep versions consecutive without losing or double-counting an update."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest

from flead.config import Settings
from flead.federated.wire import encode_json_update
from flead.local.services import LocalServices, free_port
from flead_dagster_tests.helpers.api import (
    ADMIN_KEY,
    api_harness,
    api_process,
    api_settings,
    assert_each_update_counted_once,
    make_update,
)
from flead_dagster_tests.helpers.services import service_env
from flead_dagster_tests.helpers.trainer import settings_for, wait_until
from services.global_api.service import GlobalModelService

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
START = datetime(2004, 3, 1, tzinfo=UTC)
DEVICES = [f"mote-{i:02d}" for i in range(54)]


def anomaly_docs(n: int, *, start: datetime = START, step: timedelta = timedelta(seconds=31)) -> list[dict]:
    """Anomaly events as the trainer stores them (the fields the API reads), one every ``step``,
    round-robin over the devices."""
    docs = []
    for i in range(n):
        device, ts = DEVICES[i % len(DEVICES)], start + step * i
        docs.append(
            {
                "_id": f"{device}:{ts.isoformat()}",
                "device_id": device,
                "ts": ts,
                "score": float(i % 100),
                "threshold": 2.5,
                "reason": "model",
            }
        )
    return docs


def seed(http: httpx.Client, collection, docs: list[dict], batch: int = 5000) -> None:
    """Store ``docs`` and wait until the API's anomaly summary counts them (what a running API with
    that history has: reads are planned from it)."""
    for first in range(0, len(docs), batch):
        collection.insert_many(docs[first : first + batch], ordered=False)

    def counted() -> bool:
        devices = http.get("/api/devices", params={"limit": 1000}).json()["items"]
        return sum(d["anomalies"]["count"] for d in devices) == len(docs)

    wait_until(counted, 120, f"the anomaly summary to count {len(docs)} anomalies", poll_s=0.2)


@pytest.fixture
def database(services_env) -> Iterator[tuple[Settings, GlobalModelService]]:
    """A fresh database on the session's MongoDB, and direct access to it."""
    settings = api_settings()
    service = GlobalModelService.open(settings)
    yield settings, service
    service.client.drop_database(settings.mongo_db)
    service.close()


# ------------------------------------------------------------------------------ defect 4: reads and /health


def test_health_answers_at_once_under_deep_reads_of_80k_anomalies(database, tmp_path):
    """8 parallel deep reads and dashboards over ~80k anomalies; meanwhile /health answers promptly and
    the deep reads are answered (200) or refused with the reason (422), never a 5xx."""
    settings, service = database
    with api_process(settings, tmp_path / "api.log") as url:
        http = httpx.Client(base_url=url, timeout=120)
        seed(http, service.client[settings.mongo_db][settings.collection_anomalies], anomaly_docs(80_000))
        old = http.get("/api/anomalies", params={"until": (START + timedelta(days=3)).isoformat()}).json()
        cursor = old.get("next")  # checked below, after the bounds this test is about
        deep_reads = [
            {"until": START.isoformat(), "limit": 1000},  # before every event: the whole walk, empty
            {"until": START.isoformat(), "device": "mote-07"},
            {"min_score": 99, "limit": 1000, "device": "mote-07"},
            {"after": cursor, "limit": 1000},
            {"after": cursor, "limit": 1000, "device": "mote-03"},
            {"min_score": 98, "limit": 1000},
        ]
        answers: list[tuple[str, int, dict | None]] = []

        def read(target: str | dict) -> None:
            with httpx.Client(base_url=url, timeout=300) as client:
                for _ in range(2):
                    if isinstance(target, str):
                        response = client.get(target)
                        answers.append((target, response.status_code, None))
                    else:
                        response = client.get("/api/anomalies", params=target)
                        answers.append((str(target), response.status_code, response.json()))

        readers = [threading.Thread(target=read, args=(t,)) for t in [*deep_reads, "/", "/"]]
        for reader in readers:
            reader.start()
        health: list[tuple[float, int | str]] = []
        with httpx.Client(base_url=url, timeout=10) as probe:
            while any(r.is_alive() for r in readers) or len(health) < 10:
                started = time.perf_counter()
                try:
                    status: int | str = probe.get("/health").status_code
                except httpx.TimeoutException as exc:
                    status = type(exc).__name__
                health.append((time.perf_counter() - started, status))
                time.sleep(0.1)  # the probe's own pace, as a supervisor's
        for reader in readers:
            reader.join()
        http.close()

    latencies = [latency for latency, _ in health]
    assert {status for _, status in health} == {200}, health
    assert statistics.median(latencies) < 1.0 and max(latencies) < 3.0, sorted(latencies)[-5:]
    assert len(answers) == 2 * len(readers)
    assert old["items"] and cursor, old
    for target, status, body in answers:
        assert status == 200, (target, status, body)
        if body is not None and "until" in target:
            assert body["items"] == [] and body["next"] is None, (target, body)
        elif body is not None and "min_score" not in target:
            assert body["items"], (target, body)
    deep = [body for target, _, body in answers if "after" in target and "device" not in target]
    assert all(item["ts"] < old["items"][-1]["ts"] for body in deep for item in body["items"])


def test_health_reports_a_frozen_mongodb_promptly(tmp_path):
    """SIGSTOP the MongoDB server: /health keeps answering (no hang) and says 503 within seconds; after
    SIGCONT it is healthy again."""
    env = service_env(tmp_path / "private-home")  # a private MongoDB: the shared one stays up
    mongo_uri = env["FLEAD_MONGO_URI"]
    services = LocalServices(settings_for(env))
    services.up()
    pid = json.loads(services.pid_file("mongodb").read_text())["pid"]
    try:
        with (
            api_harness(mongo_uri=mongo_uri) as api,
            httpx.Client(base_url=api.server.url, timeout=3) as probe,
        ):
            assert probe.get("/health").status_code == 200
            os.kill(pid, signal.SIGSTOP)
            try:
                answers = []

                def unhealthy() -> bool:
                    answers.append(probe.get("/health"))  # a hang fails the test (3 s timeout)
                    return answers[-1].status_code == 503

                wait_until(unhealthy, 10, "/health to report the frozen MongoDB", poll_s=0.1)
                assert answers[-1].json()["mongodb"] is False and "MongoDB" in answers[-1].json()["error"]
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_until(lambda: probe.get("/health").status_code == 200, 30, "/health healthy again")
    finally:
        os.kill(pid, signal.SIGCONT)
        services.down()


# ------------------------------------------------------------------------------ cursor pages


def test_cursor_pages_return_every_event_once_in_order(database, tmp_path):
    """Events sharing a timestamp, several devices, filters: paging by `next` yields each event once,
    newest first, the same as one big page; the deepest page is found as cheaply as the first."""
    settings, service = database
    docs = anomaly_docs(600, step=timedelta(milliseconds=250))
    docs += [{**d, "_id": f"twin:{d['_id']}", "device_id": "mote-99"} for d in docs[:120]]  # same ts
    with api_process(settings, tmp_path / "api.log") as url, httpx.Client(base_url=url, timeout=60) as http:
        seed(http, service.client[settings.mongo_db][settings.collection_anomalies], docs)
        for params in (
            {},
            {"device": "mote-99"},
            {"min_score": 50},
            {
                "since": (START + timedelta(seconds=20)).isoformat(),
                "until": (START + timedelta(seconds=80)).isoformat(),
            },
        ):
            everything = http.get("/api/anomalies", params={**params, "limit": 1000}).json()
            assert everything["next"] is None
            seen, cursor = [], None
            while True:
                page = http.get(
                    "/api/anomalies", params={**params, "limit": 7, **({"after": cursor} if cursor else {})}
                )
                assert page.status_code == 200, page.text
                body = page.json()
                seen += [item["id"] for item in body["items"]]
                cursor = body["next"]
                if cursor is None:
                    break
            assert seen == [item["id"] for item in everything["items"]], params
            assert len(set(seen)) == len(seen) == len([d for d in docs if matches(d, params)]), params
            order = [(item["ts"], item["id"]) for item in everything["items"]]
            assert order == sorted(order, reverse=True)
        assert len(http.get("/api/anomalies", params={"limit": 1000}).json()["items"]) == 720


# ------------------------------------------------------------------------------ hostile HTTP


def test_hostile_queries_get_a_clear_4xx_and_never_a_5xx(database, tmp_path):
    settings, service = database
    with api_process(settings, tmp_path / "api.log") as url, httpx.Client(base_url=url, timeout=60) as http:
        seed(http, service.client[settings.mongo_db][settings.collection_anomalies], anomaly_docs(50))
        garbage_cursors = [
            "garbage",
            "!!!!",
            "x" * 10_000,
            _cursor([1, ["s", "a"], "extra"]),
            _cursor([10**30, ["s", "a"]]),
            _cursor([-(10**20), None]),
            _cursor(["1", ["s", "a"]]),
            _cursor([1, ["i", "not a number"]]),
            _cursor([1, ["o", "zz"]]),
            _cursor([1, ["s", {"$gt": ""}]]),
            _cursor([True, None]),
            _cursor({"ts": 1}),
        ]
        for cursor in garbage_cursors:
            response = http.get("/api/anomalies", params={"after": cursor})
            assert response.status_code == 422, (cursor[:40], response.text)
            assert "cursor" in response.json()["error"] or "query.after" in response.json()["error"]
        for params in (
            {"limit": 10**9},
            {"limit": -1},
            {"limit": "ten"},
            {"limit": 1.5},
            {"min_score": "inf"},
            {"min_score": "high"},
            {"since": "2004-13-45"},
            {"until": "x" * 5000},
            {"device": "../etc/passwd"},
            {"device": "x" * 200},
        ):
            response = http.get("/api/anomalies", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["error"], params
        for path in ("/api/history", "/api/devices", "/api/devices/mote-01/accept-normal", "/api/events"):
            for cursor in [*garbage_cursors, _cursor(["version", 1.5]), _cursor(["device", 3])]:
                response = http.get(path, params={"after": cursor})
                assert response.status_code == 422, (path, cursor[:40], response.text)
        # Dates valid as written that UTC cannot hold (found by schemathesis: a 500 before).
        for path in ("/api/anomalies", "/api/events"):
            for params in ({"until": "0001-01-01T00:00:00+00:01"}, {"since": "9999-12-31T23:59:59-01:00"}):
                response = http.get(path, params=params)
                assert response.status_code == 422 and "UTC" in response.json()["error"], response.text
        for params in (
            {"since": "0001-01-01T00:00:00"},
            {"until": "9999-12-31T23:59:59"},
            {"min_score": -1e308},
        ):
            response = http.get("/api/anomalies", params=params)
            assert response.status_code == 200, (params, response.text)
        for path, params in (("/api/history", {"limit": 10**9}), ("/api/global-model", {"version": "a"})):
            assert http.get(path, params=params).status_code == 422

        token = service.keys.create("trainer").token
        auth = {"Authorization": f"Bearer {token}"}
        oversized = http.post(
            "/api/local-update",
            content=b"{" + b" " * (settings.api_max_body_bytes + 10) + b"}",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert oversized.status_code == 413 and "limit" in oversized.json()["error"]
        for body, content_type in (
            (b"[1, 2", "application/json"),
            (b"\x00" * 64, "application/octet-stream"),
        ):
            response = http.post(
                "/api/local-update", content=body, headers={**auth, "Content-Type": content_type}
            )
            assert response.status_code == 422 and response.json()["error"], response.text
        assert http.get("/health").json()["status"] == "ok"


def matches(doc: dict, params: dict) -> bool:
    """Whether `/api/anomalies` with these filters selects the anomaly document."""
    return (
        doc["device_id"] == params.get("device", doc["device_id"])
        and doc["score"] >= params.get("min_score", doc["score"])
        and ("since" not in params or doc["ts"] >= datetime.fromisoformat(params["since"]))
        and ("until" not in params or doc["ts"] < datetime.fromisoformat(params["until"]))
    )


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# ------------------------------------------------------------------------------ defect 10: a body never sent


def test_a_body_shorter_than_its_content_length_gets_408_and_others_are_served(services_env):
    with api_harness(api_body_timeout_s=1.0) as api:
        token = api.token("trainer")
        host, port = api.server.url.removeprefix("http://").split(":")
        head = (
            "POST /api/local-update HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        stalled = []
        for _ in range(3):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(head + b'{"device_i')  # 10 of the 100 bytes announced, then nothing
            stalled.append(sock)
        try:
            assert api.http.get("/api/status").status_code == 200  # served meanwhile
            for sock in stalled:
                answer = b""
                while chunk := sock.recv(65536):  # the server answers, then closes the connection
                    answer += chunk
                status_line, _, rest = answer.partition(b"\r\n")
                assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
                assert b"did not arrive in full" in rest
        finally:
            for sock in stalled:
                sock.close()
        assert api.http.get("/health").status_code == 200
        assert api.http.get("/api/status").json()["updates"]["pending"] == 0  # nothing half stored


# ------------------------------------------------------------------------------ two replicas on one MongoDB


def test_two_api_replicas_on_one_mongodb_count_every_update_once(database, tmp_path):
    settings, service = database
    other = settings.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}"})
    with (
        api_process(settings, tmp_path / "api-a.log") as url_a,
        api_process(other, tmp_path / "api-b.log") as url_b,
        httpx.Client(base_url=url_a, timeout=120) as a,
        httpx.Client(base_url=url_b, timeout=120) as b,
    ):
        replicas = [a, b]
        assert a.post("/api/config", json={"auto_aggregate_threshold": 5}, headers=ADMIN).is_success
        token = service.keys.create("trainer").token
        auth = {"Authorization": f"Bearer {token}"}
        shapes = {name: w.shape for name, w in service.registry.state(0).weights.items()}
        updates = [
            make_update(
                shapes, f"mote-{i % 6:02d}", update_id=f"{uuid.uuid4().hex[:8]}:{i}", base_version=0, seed=i
            )
            for i in range(40)
        ]

        def submit(i: int) -> int:
            body = encode_json_update(updates[i])
            return replicas[i % 2].post("/api/local-update", json=body, headers=auth).status_code

        def aggregate(i: int) -> dict:
            response = replicas[i % 2].post("/api/aggregate", headers=ADMIN)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=8) as pool:
            submitted = pool.map(submit, range(len(updates)))
            aggregated = list(pool.map(aggregate, range(12)))
            assert set(submitted) == {202}
        aggregated.append(aggregate(0))
        assert all(o["created"] or o["reason"] == "no pending updates" for o in aggregated)

        latest = service.registry.latest_version()
        assert latest is not None and latest >= 1
        for client in replicas:
            assert client.get("/api/status").json()["updates"] == {
                "pending": 0,
                "aggregated": len(updates),
                "refused": 0,
            }
        view = SimpleNamespace(db=service.client[settings.mongo_db], settings=settings, http=a)
        consumed = assert_each_update_counted_once(view, submitted=len(updates))
        assert sorted(consumed) == list(range(latest + 1))

        def same_model() -> bool:
            answers = [client.get("/api/global-model") for client in replicas]
            return all(r.headers["x-flead-model-version"] == str(latest) for r in answers) and (
                answers[0].content == answers[1].content
            )

        wait_until(same_model, 10, "both replicas to serve the latest version", poll_s=0.1)
        assert (
            a.get("/api/history", params={"limit": 1000}).json()
            == b.get("/api/history", params={"limit": 1000}).json()
        )
        assert {a.get("/health").json()["version"], b.get("/health").json()["version"]} == {latest}
