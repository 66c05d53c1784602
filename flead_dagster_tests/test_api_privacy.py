"""Differential privacy in the global model API, over real HTTP against the real MongoDB server: local
DP refuses undeclared updates, charges each accepted one once to its device's ledger and enforces the
epsilon budget (single and batch); central DP charges each version's contributions once, even when the
charge is repeated as after a crash; epsilon shows in /api/devices, /api/history, the global model, the
dashboard and the Dagster `global_model` metadata, always the accountant's (`flead.privacy`) figure.
Robust aggregation under central DP is a pure unit test over `flead.federated`."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from dagster import materialize

from flead.federated import AggregationConfig, GlobalState, LocalUpdate, make_strategy
from flead.privacy import PrivacyConfig, contributions_epsilon, rdp_epsilon
from flead_dagster.defs.assets.model import global_model, privacy_metadata
from flead_dagster.defs.resources import FleadResource
from flead_dagster_tests.helpers.api import ADMIN_KEY, ApiHarness, all_items, api_harness
from services.global_api.dashboard_page import devices_table, privacy_text
from services.global_api.privacy_store import ACCOUNTANT, device_privacy, version_source

Z, DELTA = 2.0, 1e-5
DECLARED = {"mechanism": "gaussian", "clip_norm": 1.0, "noise_multiplier": Z}
FITS = 3  # updates a device may send under the budget below
BUDGET = (rdp_epsilon(Z, FITS, DELTA) + rdp_epsilon(Z, FITS + 1, DELTA)) / 2


@pytest.fixture(scope="module")
def local(services_env) -> Iterator[ApiHarness]:
    with api_harness(dp_mode="local", dp_noise_multiplier=Z, dp_delta=DELTA, dp_epsilon_budget=BUDGET) as api:
        api.configure(auto_aggregate_threshold=1000)
        yield api


@pytest.fixture(scope="module")
def central(services_env) -> Iterator[ApiHarness]:
    with api_harness(dp_mode="central", dp_noise_multiplier=Z, dp_delta=DELTA) as api:
        api.configure(auto_aggregate_threshold=1000)
        yield api


def declared(api: ApiHarness, device: str, **kwargs) -> LocalUpdate:
    update = api.update(device, **kwargs)
    return LocalUpdate(**{**update.__dict__, "privacy": DECLARED})


def privacy_of(api: ApiHarness, device: str) -> dict:
    return next(d for d in all_items(api.http, "/api/devices") if d["device_id"] == device)["privacy"]


def batch(api: ApiHarness, updates: list[LocalUpdate | dict], token: str) -> dict:
    from flead.federated.wire import encode_json_update

    body = {"updates": [encode_json_update(u) if isinstance(u, LocalUpdate) else u for u in updates]}
    response = api.http.post("/api/local-updates", json=body, headers=api.auth(token))
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------ local DP


def test_local_dp_config_refuses_undeclared_and_charges_each_accepted_update_once(local):
    config = local.http.get("/api/config").json()["privacy"]
    assert config == {
        "mode": "local",
        "clip_norm": 1.0,
        "noise_multiplier": Z,
        "delta": DELTA,
        "epsilon_budget": BUDGET,
    }
    token = local.token("trainer")
    refused = local.submit(local.update("dp-01"), token)
    assert refused.status_code == 422 and "declares no privacy" in refused.json()["error"]
    too_little = LocalUpdate(
        **{**declared(local, "dp-01").__dict__, "privacy": {**DECLARED, "noise_multiplier": 1.0}}
    )
    response = local.submit(too_little, token)
    assert response.status_code == 422 and "noise_multiplier 1" in response.json()["error"]

    first = declared(local, "dp-01")
    assert local.submit(first, token).status_code == 202
    assert local.submit(first, token).status_code == 200  # a duplicate: charged once
    assert local.submit(declared(local, "dp-01"), token).status_code == 202
    spent = privacy_of(local, "dp-01")
    assert spent["releases"] == 2 and spent["epsilon"] == pytest.approx(rdp_epsilon(Z, 2, DELTA))
    assert spent["budget"] == BUDGET and not spent["budget_exhausted"]

    assert local.submit(declared(local, "dp-01"), token).status_code == 202
    spent = privacy_of(local, "dp-01")
    assert spent["epsilon"] == pytest.approx(rdp_epsilon(Z, FITS, DELTA)) and spent["budget_exhausted"]
    over = local.submit(declared(local, "dp-01"), token)
    assert over.status_code == 422 and "privacy budget exhausted" in over.json()["error"]
    assert privacy_of(local, "dp-01")["releases"] == FITS  # a refused update is not charged

    outcome = local.aggregate()
    assert outcome["created"] and outcome["n_updates"] == FITS
    version = all_items(local.http, "/api/history")[0]
    assert version["privacy"]["mode"] == "local" and version["privacy"]["accountant"] == ACCOUNTANT
    assert version["privacy"]["epsilon"] == pytest.approx(rdp_epsilon(Z, FITS, DELTA))
    model = local.model()
    assert model["privacy"]["epsilon"] == version["privacy"]["epsilon"]
    assert model["model"]["metadata"]["privacy"]["epsilon"] == version["privacy"]["epsilon"]
    # A resubmission of an aggregated update is still a duplicate, and charges nothing.
    assert local.submit(first, token).status_code == 200
    assert privacy_of(local, "dp-01")["releases"] == FITS


def test_local_dp_batch_charges_in_order_and_refuses_past_the_budget(local):
    token = local.token("trainer")
    updates = [declared(local, "dp-02") for _ in range(FITS + 2)]
    undeclared = local.update("dp-02")
    result = batch(local, [*updates, updates[0], undeclared], token)
    statuses = [r["status"] for r in result["results"]]
    assert statuses == ["accepted"] * FITS + ["refused"] * 2 + ["duplicate", "refused"]
    assert all("privacy budget exhausted" in r["reason"] for r in result["results"][FITS : FITS + 2])
    assert "declares no privacy" in result["results"][-1]["reason"]
    again = batch(local, updates[:2], token)  # a retried batch: duplicates, charged once
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    spent = privacy_of(local, "dp-02")
    assert spent["releases"] == FITS and spent["epsilon"] == pytest.approx(rdp_epsilon(Z, FITS, DELTA))


def test_dashboard_shows_each_devices_epsilon_and_the_versions(local):
    page = local.http.get("/").text
    assert "privacy epsilon" in page and f"{rdp_epsilon(Z, FITS, DELTA):.3g}" in page
    assert "budget spent" in page and "local DP, epsilon" in page


def test_global_model_asset_metadata_carries_dp_mode_and_epsilon(local, monkeypatch):
    monkeypatch.setenv("FLEAD_API_ADMIN_KEY", ADMIN_KEY)
    token = local.token("trainer")
    assert local.submit(declared(local, "dp-03"), token).status_code == 202
    result = materialize([global_model], resources={"flead": FleadResource.of(local.settings)})
    assert result.success
    metadata = result.asset_materializations_for_node("global_model")[0].metadata
    assert metadata["dp_mode"].value == "local"
    latest = all_items(local.http, "/api/history")[0]["privacy"]["epsilon"]
    assert metadata["epsilon"].value == pytest.approx(latest)
    assert "epsilon" in metadata["privacy"].value


def test_privacy_off_reads_no_dp_everywhere():
    off = PrivacyConfig()
    assert privacy_metadata({"mode": "off", "epsilon": None}) == {"dp_mode": "off", "privacy": "no DP"}
    assert privacy_text({"mode": "off", "epsilon": None}) == "no DP"
    row = device_privacy(None, off)
    assert row["epsilon"] is None and not row["budget_exhausted"]
    table = devices_table(
        [
            {
                "device_id": "mote-01",
                "status": "active",
                "last_seen": None,
                "last_contact": None,
                "readings": 1,
                "n_updates": 1,
                "n_samples": 1,
                "stats": {},
                "anomalies": {"count": 0, "last_ts": None},
                "privacy": row,
            }
        ]
    )
    assert '<td class="epsilon">no DP</td>' in table


# ------------------------------------------------------------------------------ central DP


def test_central_dp_charges_each_versions_contributions_once(central):
    assert central.http.get("/api/config").json()["privacy"]["mode"] == "central"
    token = central.token("trainer")
    for device in ("c-01", "c-01", "c-02", "c-03"):  # c-01 twice: one release at Z / 2
        assert central.submit(central.update(device), token).status_code == 202
    outcome = central.aggregate()
    assert outcome["created"] and outcome["n_updates"] == 4
    version = all_items(central.http, "/api/history")[0]
    privacy = version["privacy"]
    released = {c["device_id"]: {c["noise_multiplier"]: c["count"]} for c in privacy["contributions"]}
    assert released == {"c-01": {Z / 2: 1}, "c-02": {Z: 1}, "c-03": {Z: 1}}
    expected = {device: contributions_epsilon(held, DELTA) for device, held in released.items()}
    assert privacy["epsilon"] == pytest.approx(max(expected.values()))
    assert central.model()["privacy"]["epsilon"] == pytest.approx(privacy["epsilon"])
    assert "contributions" not in central.model()["privacy"]  # per-device lists stay in the history
    for device, epsilon in expected.items():
        assert privacy_of(central, device)["epsilon"] == pytest.approx(epsilon)

    # Repair after a crash (a fresh process's first repair charges the latest version again): no change.
    central.service.aggregator.repair()
    for device, epsilon in expected.items():
        assert privacy_of(central, device)["epsilon"] == pytest.approx(epsilon)

    # The next version's epsilon composes the device's releases and never falls below its parent's.
    assert central.submit(central.update("c-02"), token).status_code == 202
    assert central.aggregate()["created"]
    following = all_items(central.http, "/api/history")[0]["privacy"]
    assert following["epsilon"] == pytest.approx(max(expected["c-01"], contributions_epsilon({Z: 2}, DELTA)))


def test_concurrent_charges_of_one_device_count_each_source_once(central):
    store, privacy = central.service.privacy, PrivacyConfig(mode="central", noise_multiplier=Z, delta=DELTA)
    sources = [version_source(1000 + i) for i in range(6)]

    def charge(offset: int) -> None:
        for source in sources[offset:] + sources[:offset]:
            store.charge("c-race", [(source, {Z: 1})], privacy=privacy)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spent = store.devices(DELTA)["c-race"]
    assert spent.releases == len(sources)
    assert spent.epsilon == pytest.approx(rdp_epsilon(Z, len(sources), DELTA))


# ------------------------------------------------------------------------------ robust aggregation


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean"])
def test_robust_aggregation_under_central_dp_resists_a_poisoned_minority(strategy):
    dims, honest_value, n_honest, n_poisoned = 64, 0.05, 16, 5
    state = GlobalState.initial({"w": np.zeros(dims, dtype=np.float32)})
    updates = [
        LocalUpdate(f"h{i}", "u", 0, 100, {"w": np.full(dims, honest_value, dtype=np.float32)})
        for i in range(n_honest)
    ] + [
        LocalUpdate(f"p{i}", "u", 0, 100, {"w": np.full(dims, -1e3, dtype=np.float32)})
        for i in range(n_poisoned)
    ]
    privacy = PrivacyConfig(mode="central", clip_norm=1.0, noise_multiplier=0.02, delta=DELTA)

    def error(name: str) -> float:
        config = AggregationConfig(strategy=name, trim_fraction=0.3, max_update_norm=None, privacy=privacy)
        result = make_strategy(config, rng=np.random.default_rng(7)).aggregate(state, updates)
        assert result.created and set(result.contributions) == {u.device_id for u in updates}
        return float(np.mean(np.abs(result.new_state.weights["w"] - honest_value)))

    assert error(strategy) < 0.015  # clipped, noised and still near the honest update
    assert error("fedavg") > 0.03  # where the poisoned minority drags the mean
