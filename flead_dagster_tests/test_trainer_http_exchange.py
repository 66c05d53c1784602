"""The trainer's HTTP model exchange against the real global model API (uvicorn on a free port, the
session's MongoDB): devices push deltas, the API aggregates, devices adopt the new version; duplicates,
refusals, a bad token and an API outage are handled without blocking the caller."""

from __future__ import annotations

import httpx
import numpy as np
from pydantic import SecretStr

from flead.federated import LocalUpdate
from flead_dagster_tests.helpers.exchange import (
    OPTIONS,
    api,  # noqa: F401 (fixture)
    feed,
)
from flead_dagster_tests.helpers.trainer import wait_until
from services.global_api.live_server import LiveServer
from services.stream_trainer.devices import Federation
from services.stream_trainer.exchange_http import HttpExchange
from services.stream_trainer.health import Counters


def test_devices_federate_through_the_api(api):  # noqa: F811 (fixture)
    settings, servers = api
    exchange = HttpExchange(settings, OPTIONS)
    assert exchange.open(lambda: False)
    try:
        start = exchange.latest(None)
        assert start is not None and exchange.latest(start.version) is None
        federation, slots = Federation(settings, OPTIONS, exchange, Counters()), {}
        feed(federation, slots, "dev-a", 192, seed=1)
        feed(federation, slots, "dev-b", 192, seed=2)
        assert exchange.flush(20), exchange.stats()
        stats = exchange.stats()
        assert stats["delivered"] == stats["pushed"] >= 2 and stats["refused"] == stats["failed"] == 0
        newer = wait_until(lambda: exchange.latest(start.version), 30, "the aggregated version")
        assert newer.version > start.version
        # the devices' training loss travels with their updates into the version's history entry
        history = httpx.get(f"{settings.api_url}/api/history", timeout=10).json()["items"]
        made = next(h for h in history if h["version"] == newer.version)
        assert made["metrics"]["mean_loss"] > 0, made["metrics"]
        wait_until(lambda: exchange.stats()["not_modified"], 10, "a revalidation answered 304 (ETag)")
        feed(federation, slots, "dev-a", 64, seed=3)
        assert slots["dev-a"].client.base_version == newer.version  # adopted

        # the same update twice: the API counts it once
        rng = np.random.default_rng(0)
        delta = {name: rng.normal(0, 1e-3, w.shape).astype(np.float32) for name, w in newer.weights.items()}
        update = LocalUpdate("dev-b", "dev-b:dup", newer.version, 64, delta)
        exchange.push(update)
        exchange.push(update)
        assert exchange.flush(20)
        assert exchange.stats()["duplicate"] == 1

        # a malformed update is refused with a reason and dropped, not retried
        wrong = LocalUpdate(
            "dev-b", "wrong-shapes", newer.version, 10, {"enc.0.W": np.zeros((2, 2), np.float32)}
        )
        good = LocalUpdate("dev-a", "beside-the-wrong-one", newer.version, 10, delta)
        delivered = exchange.stats()["delivered"]
        exchange.push(wrong)
        exchange.push(good)
        assert exchange.flush(20) and exchange.stats()["refused"] == 1
        assert exchange.stats()["delivered"] == delivered + 1  # refused on its own, the other kept

        # everything went through the batch endpoint, in fewer requests than updates
        requests = api_requests(settings.api_url)
        assert requests.get("/api/local-updates", 0) == exchange.stats()["requests"] > 0
        assert "/api/local-update" not in requests
        assert exchange.stats()["requests"] < exchange.stats()["pushed"]

        # the API away: pushing still returns at once, the update waits and is retried
        servers.pop().stop()
        errors = exchange.stats()["api_errors"]
        late = LocalUpdate(
            update.device_id, f"{update.update_id}-retry", update.base_version, 5, update.arrays
        )
        exchange.push(late)
        wait_until(lambda: exchange.stats()["api_errors"] > errors, 30, "a failed delivery")
        assert [u.update_id for u in exchange.unsent()] == [late.update_id]  # checkpointed with its device
        servers.append(LiveServer(settings).start())
        assert exchange.flush(30), exchange.stats()
        assert exchange.unsent() == [] and exchange.stats()["failed"] == 0
    finally:
        exchange.close()


def api_requests(url: str) -> dict[str, float]:
    """POST requests answered by the API, by route (its Prometheus metrics)."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('flead_api_requests_total{method="POST"'):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0) + float(line.split()[-1])
    return counts


def test_a_rejected_token_is_counted_and_dropped(api):  # noqa: F811 (fixture)
    settings, _ = api
    exchange = HttpExchange(settings.model_copy(update={"api_key": SecretStr("not-a-key")}), OPTIONS)
    assert exchange.open(lambda: False)  # reading the model needs no token
    try:
        state = exchange.latest(None)
        exchange.push(LocalUpdate("dev-a", "u1", state.version, 10, dict(state.weights)))
        assert exchange.flush(20)
        assert exchange.stats()["failed"] == 1 and exchange.stats()["delivered"] == 0
    finally:
        exchange.close()
