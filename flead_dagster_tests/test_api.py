"""The global model API over real HTTP (uvicorn on a free port) against the real MongoDB server: the
full flow, every authentication case, the size limit, refusals, idempotency, formats and ETags.

Other test modules reuse ``ApiHarness`` and ``api_harness`` from ``flead_dagster_tests.helpers.api``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from flead.api_client import ApiError, GlobalApiClient, PendingUpdates
from flead.bus.codec import decode_batch
from flead.federated import LocalUpdate
from flead.federated.wire import encode_json_update
from flead.model import AnomalyModel
from flead_dagster_tests.helpers.api import ADMIN_KEY, ApiHarness, all_items, api_harness, weights_of
from flead_dagster_tests.helpers.trainer import wait_until
from services.global_api.cli import api_app
from services.global_api.update_store import update_key


@pytest.fixture(scope="module")
def api(services_env) -> Iterator[ApiHarness]:
    with api_harness() as harness:
        harness.configure(auto_aggregate_threshold=1000)  # aggregation only when a test asks
        yield harness


@pytest.fixture(autouse=True)
def _no_pending_updates(request):
    """Each test starts with nothing pending (aggregated away by the previous test's leftovers)."""
    if "api" in request.fixturenames:
        request.getfixturevalue("api").aggregate()


def fedavg(base: dict[str, np.ndarray], updates: list[LocalUpdate]) -> dict[str, np.ndarray]:
    total = sum(u.n_samples for u in updates)
    return {
        name: (
            sum(u.n_samples * (w.astype(np.float64) + u.arrays[name].astype(np.float64)) for u in updates)
            / total
        ).astype(np.float32)
        for name, w in base.items()
    }


def as_json(body: dict) -> dict:
    """httpx request arguments for a JSON body that may hold NaN or Infinity (httpx refuses them)."""
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


# ------------------------------------------------------------------------------ the full flow


def test_full_flow_keys_updates_aggregate_fetch_history(api):
    runner = CliRunner()
    env = {"FLEAD_MONGO_DB": api.settings.mongo_db}
    tokens = {}
    for device in ("mote-01", "mote-02", "mote-03"):
        result = runner.invoke(api_app, ["create-key", "--role", "device", "--device", device], env=env)
        assert result.exit_code == 0, result.output
        tokens[device] = result.output.strip().splitlines()[-1]
    result = runner.invoke(api_app, ["create-key", "--role", "trainer", "--name", "stream trainer"], env=env)
    assert result.exit_code == 0, result.output
    trainer = result.output.strip().splitlines()[-1]
    assert all(t.startswith("flead_") for t in [*tokens.values(), trainer])
    stored = api.db[api.settings.collection_api_keys].find_one({"device_id": "mote-01"})
    assert tokens["mote-01"] not in str(stored)  # only the hash is stored

    before = api.model()
    base_version = before["version"]
    base = weights_of(before)
    assert before["client"] == {"proximal_mu": 0.0, "personal_mix": 0.5}

    updates = [
        api.update(device, base_version=base_version, n_samples=n, seed=i, loss=loss)
        for i, (device, n, loss) in enumerate(
            [("mote-01", 100, 0.4), ("mote-02", 300, 0.2), ("mote-03", 50, 1.0)]
        )
    ]
    for i, update in enumerate(updates):
        response = api.submit(update, tokens[update.device_id])
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "accepted", "pending": i + 1, "version": base_version}
    from_trainer = api.update("mote-04", base_version=base_version, n_samples=150, seed=9, loss=0.3)
    response = api.submit(from_trainer, trainer, binary=True)  # the trainer submits for any device
    assert response.status_code == 202, response.text
    updates.append(from_trainer)

    outcome = api.aggregate()
    assert outcome["created"] is True
    assert outcome["version"] == base_version + 1
    assert (outcome["parent_version"], outcome["n_updates"], outcome["n_devices"]) == (base_version, 4, 4)

    after = api.model()
    assert after["version"] == base_version + 1
    assert after["parent_version"] == base_version
    assert after["strategy"] == "fedavg"
    expected = fedavg(base, updates)
    for name, weights in weights_of(after).items():
        np.testing.assert_allclose(weights, expected[name], rtol=1e-6, atol=1e-7)

    binary = api.http.get("/api/global-model", headers={"Accept": "application/octet-stream"})
    assert binary.headers["content-type"] == "application/octet-stream"
    model = AnomalyModel.from_bytes(binary.content)
    assert model.metadata["version"] == base_version + 1
    for name, weights in model.get_weights().items():
        np.testing.assert_array_equal(weights, weights_of(after)[name])

    history = api.http.get("/api/history", params={"limit": 1000}).json()
    assert history["next"] is None and len(history["items"]) == base_version + 2
    newest = history["items"][0]
    assert (newest["version"], newest["parent_version"], newest["n_updates"], newest["n_devices"]) == (
        base_version + 1,
        base_version,
        4,
        4,
    )
    assert newest["total_samples"] == 600
    assert newest["metrics"]["mean_loss"] == pytest.approx(
        (100 * 0.4 + 300 * 0.2 + 50 * 1.0 + 150 * 0.3) / 600
    )
    assert history["items"][-1]["version"] == 0 and history["items"][-1]["trigger"] == "init"
    assert all_items(api.http, "/api/history", limit=1) == history["items"]  # cursor pages of one

    listed = api.http.get("/api/devices", params={"limit": 1000}).json()
    assert listed["next"] is None and listed["anomalies_as_of"].endswith("Z")
    assert all_items(api.http, "/api/devices", limit=1) == listed["items"]
    devices = {d["device_id"]: d for d in listed["items"]}
    assert [d["device_id"] for d in listed["items"]] == sorted(devices)
    assert {"mote-01", "mote-02", "mote-03", "mote-04"} <= set(devices)
    assert devices["mote-02"]["n_samples"] == 300 and devices["mote-02"]["status"] == "active"

    old = api.model(version=base_version)
    assert old["version"] == base_version
    assert api.http.get("/api/global-model", params={"version": 10_000}).status_code == 404


# ------------------------------------------------------------------------------ authentication


def test_every_authentication_case(api):
    device = api.token("device", "mote-10")
    other_device = api.token("device", "mote-11")
    trainer = api.token("trainer")
    admin_key = api.token("admin")
    update = api.update("mote-10")

    response = api.http.post("/api/local-update", json=encode_json_update(update))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing credentials" in response.json()["error"]

    for wrong in ("nonsense", "flead_0123456789abcdef_notthesecret", device + "x", "Basic abc"):
        response = api.submit(update, wrong)
        assert response.status_code == 401, wrong
        assert response.json()["error"] == "invalid or revoked token"

    response = api.submit(update, other_device)
    assert response.status_code == 403
    assert "mote-11" in response.json()["error"] and "mote-10" in response.json()["error"]

    for token in (device, trainer):
        for path, body in (("/api/aggregate", None), ("/api/config", {"max_staleness": 3})):
            response = api.http.post(path, json=body, headers=api.auth(token))
            assert response.status_code == 403, (path, response.text)
            assert "admin" in response.json()["error"]
    assert api.http.post("/api/aggregate").status_code == 401

    assert api.submit(update, device).status_code == 202
    assert api.submit(api.update("mote-99"), trainer).status_code == 202
    for token in (ADMIN_KEY, admin_key):
        response = api.http.post("/api/aggregate", headers=api.auth(token))
        assert response.status_code == 200, response.text
    assert api.http.get("/api/config").json()["max_staleness"] == api.settings.max_staleness  # unchanged

    key_id = device.split("_")[1]
    assert api.service.keys.revoke(key_id)
    assert api.submit(api.update("mote-10"), device).status_code == 401


# ------------------------------------------------------------------------------ limits and refusals


def test_request_over_the_size_limit_is_413(api):
    token = api.token("trainer")
    limit = api.settings.api_max_body_bytes
    body = b'{"device_id": "mote-01", "pad": "' + b"x" * limit + b'"}'
    headers = {**api.auth(token), "Content-Type": "application/json"}
    response = api.http.post("/api/local-update", content=body, headers=headers)
    assert response.status_code == 413
    assert str(limit) in response.json()["error"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = api.http.post("/api/local-update", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert api.http.get("/api/status").json()["updates"]["pending"] == 0


def test_nan_and_other_bad_updates_are_refused_with_422(api):
    token = api.token("trainer")
    pending_before = api.http.get("/api/status").json()["updates"]["pending"]

    def refused(request: dict) -> str:
        headers = {**api.auth(token), **request.get("headers", {})}
        response = api.http.post("/api/local-update", content=request["content"], headers=headers)
        assert response.status_code == 422, response.text
        return response.json()["error"]

    nan_update = api.update("mote-20")
    name = next(iter(nan_update.arrays))
    nan_update.arrays[name][0, 0] = np.nan
    assert "NaN" in refused(as_json(encode_json_update(nan_update)))  # the NaN literal, as Python writes it
    response = api.submit(nan_update, token, binary=True)
    assert response.status_code == 422 and "NaN" in response.json()["error"]

    good = encode_json_update(api.update("mote-20"))
    cases = {
        "shape": {**good, "arrays": {**good["arrays"], name: [[0.0, 1.0]]}},
        "names do not match": {**good, "arrays": {**good["arrays"], "extra.W": [[1.0]]}},
        "from the future": {**good, "base_version": 10_000},
        "numbers only": {**good, "arrays": {**good["arrays"], name: [["a"]]}},
        "rectangular": {**good, "arrays": {**good["arrays"], name: [[1.0], [1.0, 2.0]]}},
        "n_samples": {**good, "n_samples": 0},
        "kind": {**good, "kind": "gradient"},
        "device_id": {**good, "device_id": ""},
        "finite": {**good, "metrics": {"loss": float("inf")}},
    }
    for expected, body in cases.items():
        assert expected in refused(as_json(body)), expected
    assert "not valid JSON" in refused(
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    )
    assert "container" in refused(
        {"content": b"garbage", "headers": {"Content-Type": "application/octet-stream"}}
    )
    response = api.http.post(
        "/api/local-update", content=b"x", headers={**api.auth(token), "Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert api.http.get("/api/status").json()["updates"]["pending"] == pending_before


def test_stale_update_is_refused_with_the_reason(api):
    token = api.token("trainer")
    api.configure(max_staleness=1)
    try:
        base = api.version()
        for i in range(2):
            assert api.submit(api.update(f"mote-3{i}"), token).status_code == 202
            assert api.aggregate()["created"]
        response = api.submit(api.update("mote-39", base_version=base), token)
        assert response.status_code == 422
        assert "too stale" in response.json()["error"]
    finally:
        api.configure(max_staleness=api.settings.max_staleness)


def test_duplicate_update_is_counted_once(api):
    token = api.token("device", "mote-40")
    update = api.update("mote-40", update_id="once", n_samples=77)
    first = api.submit(update, token)
    assert first.status_code == 202 and first.json()["pending"] == 1
    again = api.submit(update, token, binary=True)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate" and again.json()["pending"] == 1

    outcome = api.aggregate()
    assert outcome["n_updates"] == 1
    assert api.http.get("/api/history").json()["items"][0]["total_samples"] == 77
    late = api.submit(update, token)
    assert late.status_code == 200 and late.json() == {
        "status": "duplicate",
        "pending": 0,
        "version": api.version(),
    }
    outcome = api.aggregate()
    assert outcome["created"] is False and outcome["reason"] == "no pending updates"


def test_pending_updates_are_counted_with_the_newest_for_any_token(api):
    client = GlobalApiClient(api.server.url, ADMIN_KEY)
    assert client.pending_updates() == PendingUpdates(count=0, newest_id=None, newest_received_at=None)
    assert api.http.get("/api/updates/pending").status_code == 401
    token = api.token("device", "mote-41")
    before = datetime.now(UTC) - timedelta(seconds=1)
    for update_id in ("first", "second"):
        assert api.submit(api.update("mote-41", update_id=update_id), token).status_code == 202
    seen_by_device = api.http.get("/api/updates/pending", headers=api.auth(token))
    assert seen_by_device.status_code == 200
    pending = client.pending_updates()
    assert seen_by_device.json() == {
        "count": 2,
        "newest_id": update_key("mote-41", "second"),
        "newest_received_at": pending.newest_received_at,
    }
    assert pending.newest_received_at.endswith("Z")
    assert before <= datetime.fromisoformat(pending.newest_received_at) <= datetime.now(UTC)
    assert api.aggregate()["n_updates"] == 2
    assert client.pending_updates().count == 0


# ------------------------------------------------------------------------------ formats and caching


def test_etag_and_if_none_match(api):
    latest = api.http.get("/api/global-model")
    etag = latest.headers["etag"]
    assert latest.headers["cache-control"] == "no-cache"
    not_modified = api.http.get("/api/global-model", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag

    binary = api.http.get("/api/global-model", headers={"Accept": "application/octet-stream"})
    assert binary.headers["etag"] != etag  # per format
    assert (
        api.http.get(
            "/api/global-model", headers={"Accept": "application/octet-stream", "If-None-Match": etag}
        ).status_code
        == 200
    )

    token = api.token("trainer")
    assert api.submit(api.update("mote-50"), token).status_code == 202
    api.aggregate()
    newer = api.http.get("/api/global-model", headers={"If-None-Match": etag})
    assert newer.status_code == 200  # a new version: a new ETag
    assert newer.headers["etag"] != etag

    old_version = latest.json()["version"]
    pinned = api.http.get(
        "/api/global-model", params={"version": old_version}, headers={"If-None-Match": f'W/"x", {etag}'}
    )
    assert pinned.status_code == 304
    assert "immutable" in pinned.headers["cache-control"]


# ------------------------------------------------------------------------------ operations and queries


def test_config_is_validated_and_persisted(api):
    assert api.configure(strategy="median", proximal_mu=0.01)["strategy"] == "median"
    stored = api.db[api.settings.collection_api_config].find_one({})
    assert stored["strategy"] == "median" and stored["proximal_mu"] == 0.01
    for bad in (
        {"strategy": "best"},
        {"auto_aggregate_threshold": 0},
        {"personal_mix": 2},
        {"colour": "red"},
    ):
        response = api.http.post("/api/config", json=bad, headers=api.admin)
        assert response.status_code == 422, bad
        assert "error" in response.json()
    token = api.token("trainer")
    assert api.submit(api.update("mote-60"), token).status_code == 202
    created = api.aggregate()
    assert api.model()["strategy"] == "median"
    assert api.model()["client"]["proximal_mu"] == 0.01  # served with versions made after the change
    assert api.http.get("/api/history").json()["items"][0]["version"] == created["version"]
    api.configure(strategy="fedavg", proximal_mu=0.0)


def test_anomalies_filters_and_pagination(api):
    anomalies = api.db[api.settings.collection_anomalies]
    start = datetime(2004, 3, 1, tzinfo=UTC)
    anomalies.insert_many(
        [
            {
                "_id": f"mote-7{i % 3}:{i}",
                "device_id": f"mote-7{i % 3}",
                "ts": start + timedelta(minutes=i),
                "score": float(i),
                "threshold": 2.5,
                "kind": "spike",
            }
            for i in range(30)
        ]
    )
    page = api.http.get("/api/anomalies", params={"device": "mote-71", "limit": 4}).json()
    assert set(page) == {"items", "limit", "next"} and len(page["items"]) == 4 and page["next"]
    assert [item["score"] for item in page["items"]] == [28.0, 25.0, 22.0, 19.0]  # newest first
    assert page["items"][0]["ts"] == "2004-03-01T00:28:00.000000Z"  # ISO 8601 UTC, one length
    assert page["items"][0]["id"] == "mote-71:28" and "_id" not in page["items"][0]
    following = api.http.get(
        "/api/anomalies", params={"device": "mote-71", "limit": 4, "after": page["next"]}
    ).json()
    assert [item["score"] for item in following["items"]] == [16.0, 13.0, 10.0, 7.0]
    last = api.http.get(
        "/api/anomalies", params={"device": "mote-71", "limit": 4, "after": following["next"]}
    ).json()
    assert [item["score"] for item in last["items"]] == [4.0, 1.0] and last["next"] is None

    window = {
        "since": (start + timedelta(minutes=10)).isoformat(),
        "until": (start + timedelta(minutes=20)).isoformat(),
    }
    assert len(api.http.get("/api/anomalies", params=window).json()["items"]) == 10
    assert len(api.http.get("/api/anomalies", params={**window, "min_score": 15}).json()["items"]) == 5
    for cursor in (page["next"], "garbage"):  # an anomaly cursor is no cursor of another list
        for path in ("/api/history", "/api/devices"):
            refused = api.http.get(path, params={"after": cursor})
            assert refused.status_code == 422 and "cursor" in refused.json()["error"], refused.text
    for bad in ({"limit": 0}, {"since": "yesterday"}, {"min_score": "nan"}, {"device": "a b"}):
        response = api.http.get("/api/anomalies", params=bad)
        assert response.status_code == 422, bad
        assert response.json()["error"].startswith("invalid request")

    def counted() -> dict | None:
        device = {d["device_id"]: d for d in api.http.get("/api/devices").json()["items"]}.get("mote-72")
        return device if device and device["anomalies"]["count"] else None

    device = wait_until(counted, 30, "the anomaly summary to count mote-72's anomalies", poll_s=0.05)
    assert device["anomalies"]["count"] == 10
    assert device["anomalies"]["max_score"] == 29.0


def test_status_health_metrics_and_errors_are_json(api):
    status = api.http.get("/api/status").json()
    assert status["config"]["auto_aggregate_threshold"] == 1000
    assert status["architecture"]["kind"] == "autoencoder"
    history = api.http.get("/api/history", params={"limit": 1000}).json()
    assert status["versions"] == status["version"] + 1 == len(history["items"])

    health = api.http.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "mongodb": True, "version": status["version"]}

    token = api.token("trainer")
    assert api.submit(api.update("mote-80"), token).status_code == 202
    api.submit(api.update("mote-80", n_samples=0), token)
    metrics = api.http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'flead_api_local_updates_total{outcome="accepted"}' in text
    assert 'flead_api_local_updates_total{outcome="refused"}' in text
    assert 'flead_api_aggregations_total{outcome="created",trigger="manual"}' in text
    assert f"flead_api_global_model_version {float(status['version'])}" in text
    assert "flead_api_pending_updates 1.0" in text
    assert 'route="/api/local-update"' in text

    missing = api.http.get("/no/such/thing")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    wrong_method = api.http.delete("/api/status")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert api.http.get("/api/global-model", params={"version": -1}).status_code == 422


def test_acknowledgements_are_listed_newest_first_in_cursor_pages(api):
    device = "mote-90"
    api.db[api.settings.collection_devices].insert_one({"_id": device, "device_id": device})
    path = f"/api/devices/{device}/accept-normal"
    for request_id in ("first", "second"):
        created = api.http.post(path, json={"request_id": request_id}, headers=api.admin)
        assert created.status_code == 202, created.text
    same = datetime(2030, 1, 1, tzinfo=UTC)  # three at one millisecond: ties split across pages
    api.db[api.settings.collection_normal_acks].insert_many(
        [
            {
                "_id": f"{device}/tie-{i}",
                "device_id": device,
                "request_id": f"tie-{i}",
                "requested_at": same,
                "requested_by": "admin:x",
                "key_id": "x",
                "applied": False,
            }
            for i in range(3)
        ]
    )
    everything = api.http.get(path, params={"limit": 1000}).json()
    assert everything["next"] is None and everything["device_id"] == device
    ids = [ack["id"] for ack in everything["items"]]
    assert ids == [f"{device}/tie-{i}" for i in (2, 1, 0)] + [f"{device}/second", f"{device}/first"]
    assert everything["items"][0]["requested_at"] == "2030-01-01T00:00:00.000000Z"
    for limit in (1, 2, 4):
        assert all_items(api.http, path, limit=limit) == everything["items"], limit


def test_docs_pages_name_no_other_host(api):
    """/docs and /redoc load their scripts and style from this API (the browser test renders them)."""
    pages = {"/docs": "/static/docs/swagger-ui-bundle.js", "/redoc": "/static/docs/redoc.standalone.js"}
    for page, script in pages.items():
        html = api.http.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        links = re.findall(r'(?:src|href|url|spec-url)\s*[=:]\s*["\']([^"\']+)["\']', html.text)
        assert script in links and "/openapi.json" in links, links
        assert all(link.startswith("/") and not link.startswith("//") for link in links), links
        assert "https:" not in html.text and "http:" not in html.text
        asset = api.http.get(script)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
        assert len(asset.content) > 500_000  # the real bundle
    assert api.http.get("/static/docs/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert api.http.get("/static/docs/favicon.png").headers["content-type"] == "image/png"
    for missing in ("/static/docs/nothing.js", "/static/docs/..%2Fapp.py", "/static/docs/core.py"):
        assert api.http.get(missing).status_code == 404, missing


def test_the_api_client_follows_the_cursors(api):
    token = api.token("trainer")
    for device in ("mote-95", "mote-96", "mote-97"):
        assert api.submit(api.update(device), token).status_code == 202
        api.aggregate()
    client = GlobalApiClient(api.server.url, ADMIN_KEY)
    newest = api.version()
    everything = all_items(api.http, "/api/history", limit=1000)
    assert client.history(limit=1000) == everything and len(everything) == newest + 1
    assert client.history(limit=2) == everything[:2]
    assert [v["version"] for v in client.items("/api/history", page_size=1)] == list(range(newest, -1, -1))
    assert client.version(0)["trigger"] == "init" and client.version(newest) == everything[0]
    with pytest.raises(ApiError, match="does not exist"):
        client.version(newest + 1)
    assert [d["device_id"] for d in client.items("/api/devices", page_size=2)] == [
        d["device_id"] for d in all_items(api.http, "/api/devices", limit=1000)
    ]


def test_the_fleet_schema_is_served_as_the_readings_name_it(api):
    fleet = api.http.get("/api/fleet")
    assert fleet.status_code == 200
    body = fleet.json()
    assert f"{body['name']}@{body['version']}" == api.settings.fleet.ref == "intel_lab@1"
    assert [f["name"] for f in body["features"]] == ["temperature", "humidity", "light", "voltage"]
    assert body["features"][0]["unit"] == "°C" and body["features"][3]["low_battery_below"] == 2.4
    schema = api.http.get("/openapi.json").json()["components"]["schemas"]["FleetSchema"]
    assert {"name", "version", "features", "inputs", "time"} <= set(schema["properties"])


@pytest.mark.parametrize(
    ("device_id", "valid"), [("m" * 64, True), ("m" * 65, False), ("mote@site", False), ("mote+1", False)]
)
def test_a_device_id_is_valid_at_the_api_exactly_when_it_is_on_kafka(api, device_id, valid):
    """One pattern (`flead.schema.DEVICE_ID_PATTERN`) at both edges: a device whose updates the API
    takes never has its readings dead-lettered for its id, and the other way round."""
    token = api.token("trainer")
    answer = api.submit(api.update(device_id), token)
    assert answer.status_code == (202 if valid else 422), answer.text
    message = json.dumps(
        {
            "schema_version": 2,
            "fleet": "intel_lab@1",
            "device_id": device_id,
            "ts": "2004-03-01T00:00:00Z",
            "values": {"temperature": 20.0},
        }
    ).encode()
    record = SimpleNamespace(topic="t", partition=0, offset=0, key=device_id.encode(), value=message)
    decoded, rejected = decode_batch([record], 65536)
    assert (decoded.height, len(rejected)) == ((1, 0) if valid else (0, 1))
