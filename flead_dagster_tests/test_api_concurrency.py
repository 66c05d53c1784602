"""Aggregation under concurrency and automatic aggregation, over real HTTP and the real MongoDB:
every version is made exactly once, consecutively, and every accepted update is counted in exactly
one version."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from flead_dagster_tests.helpers.api import (
    api_harness,
    assert_each_update_counted_once,
)


@pytest.fixture(scope="module")
def api(services_env):
    with api_harness() as harness:
        yield harness


def test_concurrent_aggregations_make_consecutive_versions_and_lose_nothing(api):
    api.configure(auto_aggregate_threshold=100_000, max_staleness=1000)
    tokens = {f"mote-{i:02d}": api.token("device", f"mote-{i:02d}") for i in range(8)}
    base = api.version()
    updates = [
        api.update(device, update_id=f"c{round_}", base_version=base, seed=round_ * 8 + i, n_samples=10 + i)
        for round_ in range(6)
        for i, device in enumerate(tokens)
    ]

    def submit(update):
        return api.submit(update, tokens[update.device_id]).status_code

    def aggregate(_):
        return api.aggregate()

    with ThreadPoolExecutor(max_workers=12) as pool:
        # Submissions and aggregations interleave: 48 updates, 36 aggregation calls at once.
        submitted = pool.map(submit, updates)
        outcomes = list(pool.map(aggregate, range(36)))
        assert set(submitted) == {202}
    final = api.aggregate()
    created = [o for o in [*outcomes, final] if o["created"]]
    assert created, "at least one aggregation made a version"
    assert sorted(o["version"] for o in created) == list(range(base + 1, base + 1 + len(created)))
    assert sum(o["n_updates"] for o in created) == len(updates)
    assert all(o["reason"] == "no pending updates" for o in [*outcomes, final] if not o["created"])
    assert api.http.get("/api/status").json()["updates"]["pending"] == 0
    assert_each_update_counted_once(api, submitted=len(updates))


def test_concurrent_aggregate_calls_on_the_same_pending_set(api):
    """Many aggregations racing for the same pending updates: exactly one makes the version."""
    api.configure(auto_aggregate_threshold=100_000)
    token = api.token("trainer")
    before = api.version()
    submitted = [api.update(f"mote-r{i}", seed=i) for i in range(5)]
    for update in submitted:
        assert api.submit(update, token).status_code == 202
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: api.aggregate(), range(8)))
    created = [o for o in outcomes if o["created"]]
    assert len(created) == 1
    assert created[0]["version"] == before + 1 and created[0]["n_updates"] == 5
    total = api.db[api.settings.collection_local_updates].count_documents({})
    assert_each_update_counted_once(api, submitted=total)


def test_automatic_aggregation_at_the_threshold(api):
    api.configure(auto_aggregate_threshold=3)
    token = api.token("trainer")
    before = api.version()
    first, second = (api.submit(api.update(f"mote-a{i}", seed=i), token) for i in range(2))
    assert [first.json()["pending"], second.json()["pending"]] == [1, 2]
    assert "aggregation" not in second.json() and api.version() == before

    third = api.submit(api.update("mote-a2", seed=2), token)
    assert third.status_code == 202
    body = third.json()
    assert body["aggregation"]["created"] is True
    assert (body["version"], body["pending"], body["aggregation"]["n_updates"]) == (before + 1, 0, 3)
    newest = api.http.get("/api/history").json()["items"][0]
    assert (newest["version"], newest["trigger"], newest["n_updates"]) == (before + 1, "auto", 3)
    metrics = api.http.get("/metrics").text
    assert 'flead_api_aggregations_total{outcome="created",trigger="auto"} 1.0' in metrics


def test_concurrent_submissions_with_automatic_aggregation_count_every_update_once(api):
    api.configure(auto_aggregate_threshold=4)
    token = api.token("trainer")
    updates = [api.update(f"mote-s{i % 5}", update_id=f"s{i}", seed=i) for i in range(30)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda u: api.submit(u, token), updates))
    assert Counter(r.status_code for r in responses) == {202: 30}
    api.aggregate()  # what the last threshold left pending
    total = api.db[api.settings.collection_local_updates].count_documents({})
    consumed = assert_each_update_counted_once(api, submitted=total)
    assert {f'["mote-s{i % 5}","s{i}"]' for i in range(30)} <= {k for keys in consumed.values() for k in keys}
