"""The global model service at fleet scale, over real HTTP and the real MongoDB: the current version's
bytes answered from memory (also across replicas, within the stated bound) and many devices' updates
in one request, each accepted or refused on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from pymongo.collection import Collection

from flead.federated import LocalUpdate
from flead.federated.wire import encode_binary_updates, encode_json_update
from flead.local.services import free_port
from flead_dagster_tests.helpers.api import ApiHarness, api_harness, assert_each_update_counted_once
from flead_dagster_tests.helpers.trainer import wait_until
from services.global_api.live_server import LiveServer
from services.global_api.registry import LATEST_MAX_AGE_S
from services.global_api.update_store import MISSING_ARRAYS, ORPHAN_AGE_S, UpdateStore, update_key

BATCH = "/api/local-updates"
MAX_UPDATES = 6
MAX_BATCH_BYTES = 1_200_000  # six updates of the default model fit as binary (~39 kB each), not as JSON


@pytest.fixture(scope="module")
def api(services_env) -> Iterator[ApiHarness]:
    overrides = {"api_max_batch_updates": MAX_UPDATES, "api_max_batch_body_bytes": MAX_BATCH_BYTES}
    with api_harness(**overrides) as harness:
        harness.configure(auto_aggregate_threshold=1000, max_staleness=1000)
        yield harness


def post_batch(api: ApiHarness, updates: list, token: str, *, binary: bool):
    if binary:
        headers = {**api.auth(token), "Content-Type": "application/octet-stream"}
        return api.http.post(BATCH, content=encode_binary_updates(updates), headers=headers)
    body = {"updates": [encode_json_update(u) if isinstance(u, LocalUpdate) else u for u in updates]}
    return api.http.post(BATCH, json=body, headers=api.auth(token))


def pending(api: ApiHarness) -> int:
    return api.http.get("/api/status").json()["updates"]["pending"]


# ------------------------------------------------------------------------------ GET from memory


def test_a_new_version_is_served_at_once_and_revalidation_is_answered_from_memory(api):
    first = api.http.get("/api/global-model")
    etag = first.headers["etag"]
    before = metric(api, 'flead_api_requests_total{method="GET",route="/api/global-model",status="304"}')
    for _ in range(3):
        assert api.http.get("/api/global-model", headers={"If-None-Match": etag}).status_code == 304
    # Answered in front of the router, but still counted under the route's name.
    after = metric(api, 'flead_api_requests_total{method="GET",route="/api/global-model",status="304"}')
    assert after == before + 3

    assert api.submit(api.update("mote-20"), api.token("trainer")).status_code == 202
    made = api.aggregate()["version"]
    for accept in ("application/json", "application/octet-stream"):
        response = api.http.get("/api/global-model", headers={"Accept": accept, "If-None-Match": etag})
        assert response.status_code == 200  # the writing replica knows its new version at once
        assert response.headers["x-flead-model-version"] == str(made)
        assert response.headers["content-type"] == accept
        again = api.http.get("/api/global-model", headers={"Accept": accept})
        assert again.content == response.content and again.headers["etag"] == response.headers["etag"]
        revalidated = api.http.get(
            "/api/global-model", headers={"Accept": accept, "If-None-Match": response.headers["etag"]}
        )
        assert revalidated.status_code == 304 and revalidated.content == b""
        assert revalidated.headers["cache-control"] == "no-cache"
    pinned = api.http.get("/api/global-model", params={"version": made - 1}, headers={"If-None-Match": etag})
    assert pinned.status_code == 304 and "immutable" in pinned.headers["cache-control"]
    assert api.http.get("/api/global-model", params={"version": "x"}).status_code == 422


def test_another_replica_serves_a_version_written_through_this_one_within_the_bound(api):
    other_settings = api.settings.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}"})
    with LiveServer(other_settings) as other:
        http = httpx.Client(base_url=other.url, timeout=30)
        current = http.get("/api/global-model")
        cached = {"If-None-Match": current.headers["etag"]}
        assert http.get("/api/global-model", headers=cached).status_code == 304
        assert api.submit(api.update("mote-21"), api.token("trainer")).status_code == 202
        made = api.aggregate()["version"]
        assert made == int(current.headers["x-flead-model-version"]) + 1

        def served_by_the_other() -> bool:
            response = http.get("/api/global-model", headers=cached)
            return response.status_code == 200 and response.headers["x-flead-model-version"] == str(made)

        # Bound: LATEST_MAX_AGE_S after the write; the margin is for a loaded test machine, not the design.
        wait_until(served_by_the_other, LATEST_MAX_AGE_S + 10, "the other replica's new version", 0.05)
        http.close()


def metric(api: ApiHarness, sample: str) -> float:
    for line in api.http.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


# ------------------------------------------------------------------------------ batched submissions


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_batch_accepts_the_good_updates_and_refuses_a_bad_one_with_its_reason(api, binary):
    token = api.token("trainer")
    api.aggregate()
    base = api.version()
    fmt = "bin" if binary else "json"
    good = [api.update(f"mote-3{i}", update_id=f"b-{fmt}-{i}", base_version=base, seed=i) for i in range(4)]
    wrong = LocalUpdate("mote-39", f"b-{fmt}-wrong", base, 10, {"enc.0.W": np.zeros((2, 2), np.float32)})
    items = [good[0], wrong, *good[1:], good[0]]  # the last is the first again: counted once
    response = post_batch(api, items, token, binary=binary)
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [(r["index"], r["device_id"], r["update_id"], r["status"]) for r in body["results"]]
    assert statuses == [
        (0, "mote-30", f"b-{fmt}-0", "accepted"),
        (1, "mote-39", f"b-{fmt}-wrong", "refused"),
        (2, "mote-31", f"b-{fmt}-1", "accepted"),
        (3, "mote-32", f"b-{fmt}-2", "accepted"),
        (4, "mote-33", f"b-{fmt}-3", "accepted"),
        (5, "mote-30", f"b-{fmt}-0", "duplicate"),
    ]
    assert "do not match the global model" in body["results"][1]["reason"]
    assert (body["accepted"], body["duplicate"], body["refused"]) == (4, 1, 1)
    assert body["pending"] == pending(api) == 4 and body["version"] == base

    again = post_batch(api, good, token, binary=binary).json()  # a resubmitted batch changes nothing
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 4 and pending(api) == 4
    outcome = api.aggregate()
    assert outcome["created"] and outcome["n_updates"] == 4
    updates = api.db[api.settings.collection_local_updates]
    for update in good:
        doc = updates.find_one({"device_id": update.device_id, "update_id": update.update_id})
        assert (doc["status"], doc["version"]) == ("aggregated", outcome["version"])
    arrays = api.db[f"{api.settings.collection_local_updates}.arrays"]
    assert arrays.count_documents({}) == 0  # consumed, and no copy left by the duplicates


def test_undecodable_items_are_refused_one_by_one_and_the_batch_triggers_aggregation(api):
    token = api.token("trainer")
    api.aggregate()
    base = api.version()
    good = [api.update(f"mote-4{i}", update_id=f"agg-{i}", base_version=base, seed=i) for i in range(3)]
    missing = {k: v for k, v in encode_json_update(good[0]).items() if k != "n_samples"}
    missing["update_id"] = "agg-missing"
    items = [good[0], missing, "not an update", good[1], good[2]]
    api.configure(auto_aggregate_threshold=3)
    try:
        response = post_batch(api, items, token, binary=False)
        assert response.status_code == 200, response.text
        body = response.json()
        # Answered before the aggregation, which the API's background thread runs.
        assert body["aggregation_scheduled"] is True and body["version"] == base and body["pending"] == 3
        wait_until(lambda: api.version() == base + 1 and pending(api) == 0, 60, "the background aggregation")
    finally:
        api.configure(auto_aggregate_threshold=1000)
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "refused",
        "refused",
        "accepted",
        "accepted",
    ]
    assert body["results"][1]["update_id"] == "agg-missing" and "n_samples" in body["results"][1]["reason"]
    assert body["results"][2]["device_id"] is None and body["results"][2]["reason"]
    latest = api.http.get("/api/history", params={"limit": 1}).json()["items"][0]
    assert (latest["version"], latest["n_updates"], latest["trigger"]) == (base + 1, 3, "auto")
    assert 'flead_api_aggregations_total{outcome="created",trigger="auto"}' in api.http.get("/metrics").text
    assert_each_update_counted_once(api, submitted=len(all_consumed_keys(api)))


def test_background_aggregation_drains_a_stream_of_batches(api):
    token = api.token("trainer")
    api.aggregate()
    base = api.version()
    batches = [
        [api.update(f"mote-6{i}", update_id=f"drain-{b}-{i}", base_version=base, seed=i) for i in range(3)]
        for b in range(4)
    ]
    api.configure(auto_aggregate_threshold=5)
    try:
        bodies = [post_batch(api, batch, token, binary=True).json() for batch in batches]
        assert [body["accepted"] for body in bodies] == [3] * 4
        assert bodies[0]["aggregation_scheduled"] is False and bodies[1]["aggregation_scheduled"] is True
        # Whatever the rounds, the buffer ends below the threshold with every update counted once.
        wait_until(
            lambda: (
                pending(api) < 5
                and not api.db[api.settings.collection_local_updates].find_one(
                    {"status": "pending", "update_id": {"$in": [f"drain-1-{i}" for i in range(3)]}}
                )
            ),
            60,
            "the buffer drained",
        )
    finally:
        api.configure(auto_aggregate_threshold=1000)
    assert api.version() > base
    api.aggregate()
    assert pending(api) == 0
    assert_each_update_counted_once(api, submitted=len(all_consumed_keys(api)))


# ------------------------------------------------------------------------------ arrays blobs


def blobs(api: ApiHarness) -> Collection:
    return api.db[f"{api.settings.collection_local_updates}.arrays"]


def test_a_batch_blob_is_kept_while_one_of_its_updates_is_pending_and_deleted_after(api):
    token = api.token("trainer")
    api.aggregate()
    base = api.version()
    updates = [api.update(f"mote-7{i}", update_id=f"blob-{i}", base_version=base, seed=i) for i in range(3)]
    assert post_batch(api, updates, token, binary=True).json()["accepted"] == 3
    assert blobs(api).count_documents({}) == 1  # one arrays document for the whole batch
    store = api.service.updates
    assert (
        store.mark_refused([(update_key("mote-70", "blob-0"), "refused by the test")], at_version=None) == 1
    )
    assert store.release() == 0 and blobs(api).count_documents({}) == 1  # two of its updates still pending
    outcome = api.aggregate()
    assert outcome["created"] and outcome["n_updates"] == 2
    docs = api.db[api.settings.collection_local_updates].find(
        {"update_id": {"$in": ["blob-0", "blob-1", "blob-2"]}}
    )
    assert sorted((doc["update_id"], doc["status"], doc.get("version")) for doc in docs) == [
        ("blob-0", "refused", None),
        ("blob-1", "aggregated", outcome["version"]),
        ("blob-2", "aggregated", outcome["version"]),
    ]
    assert blobs(api).count_documents({}) == 0
    seals = api.db[f"{api.settings.collection_local_updates}.seals"]
    assert seals.count_documents({}) == 0

    # A single update: a blob of one, complete with its status document (no seal), deleted once used.
    assert api.submit(api.update("mote-73", update_id="blob-single"), token).status_code == 202
    assert (blobs(api).count_documents({}), seals.count_documents({})) == (1, 0)
    assert api.aggregate()["n_updates"] == 1 and blobs(api).count_documents({}) == 0


def test_a_missing_blob_is_refused_with_the_reason_and_orphan_blobs_are_deleted_when_old(api):
    token = api.token("trainer")
    api.aggregate()
    base = api.version()
    updates = [api.update(f"mote-8{i}", update_id=f"lost-{i}", base_version=base, seed=i) for i in range(2)]
    assert post_batch(api, updates, token, binary=True).json()["accepted"] == 2
    blobs(api).delete_many({})  # as if the arrays were never written
    outcome = api.aggregate()
    assert not outcome["created"] and pending(api) == 0
    statuses = api.db[api.settings.collection_local_updates].find(
        {"update_id": {"$in": ["lost-0", "lost-1"]}}
    )
    assert {(doc["status"], doc["reason"]) for doc in statuses} == {("refused", MISSING_ARRAYS)}

    # A submission that stopped after writing its blob: deleted once older than any submission takes.
    now = datetime.now(UTC)
    blobs(api).insert_many(
        [
            {"_id": "stopped", "items": [], "created_at": now - timedelta(seconds=ORPHAN_AGE_S + 1)},
            {"_id": "in-flight", "items": [], "created_at": now},
        ]
    )
    fresh = UpdateStore(api.db[api.settings.collection_local_updates])  # looks for orphans at once
    assert fresh.release() == 1
    assert [doc["_id"] for doc in blobs(api).find({}, {"_id": 1})] == ["in-flight"]
    blobs(api).delete_many({})


def all_consumed_keys(api: ApiHarness) -> list[str]:
    versions = api.db[api.settings.collection_global_models].find({}, {"update_keys": 1})
    return [key for doc in versions for key in doc.get("update_keys", [])]


def test_over_limit_malformed_and_foreign_batches_are_refused_whole(api):
    token = api.token("trainer")
    base = api.version()
    many = [api.update("mote-50", update_id=f"lim-{i}", base_version=base) for i in range(MAX_UPDATES + 1)]
    for items, binary in (([{}] * len(many), False), (many, True)):  # counted before any is decoded
        response = post_batch(api, items, token, binary=binary)
        assert response.status_code == 413, response.text
        assert f"{MAX_UPDATES + 1} updates, over the limit of {MAX_UPDATES}" in response.json()["error"]
    too_big = post_batch(api, many[:MAX_UPDATES], token, binary=False)  # ~1.3 MB of JSON
    assert too_big.status_code == 413 and str(MAX_BATCH_BYTES) in too_big.json()["error"]
    fits = post_batch(api, many[:MAX_UPDATES], token, binary=True)  # the same updates, binary
    assert fits.status_code == 200 and fits.json()["accepted"] == MAX_UPDATES

    headers = {**api.auth(token), "Content-Type": "application/json"}
    for body in (b"[]", b'{"updates": []}', b'{"updates": {}}', b"{"):
        response = api.http.post(BATCH, content=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
    framing = encode_binary_updates(many[:2])[:-10]
    binary_headers = {**api.auth(token), "Content-Type": "application/octet-stream"}
    response = api.http.post(BATCH, content=framing, headers=binary_headers)
    assert response.status_code == 422 and "truncated" in response.json()["error"]

    device = api.token("device", "mote-51")
    mixed = [api.update("mote-51", base_version=base), api.update("mote-52", base_version=base)]
    response = post_batch(api, mixed, device, binary=True)
    assert response.status_code == 403 and "mote-52" in response.json()["error"]
    assert api.http.post(BATCH, content=json.dumps({"updates": []}), headers={}).status_code == 401
    before = pending(api)
    assert post_batch(api, mixed[:1], device, binary=True).json()["accepted"] == 1
    assert pending(api) == before + 1
