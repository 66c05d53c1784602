"""A restarted API process continues from MongoDB: versions, pending updates, configuration, keys,
duplicate detection, and an aggregation that stopped half way is completed."""

from __future__ import annotations

import httpx
import pytest

from flead.federated.wire import encode_json_update
from flead_dagster_tests.helpers.api import ADMIN_KEY, api_process, api_settings, make_update
from services.global_api.service import GlobalModelService
from services.global_api.update_store import update_key


@pytest.fixture
def settings_and_service(services_env):
    settings = api_settings()
    service = GlobalModelService.open(settings)
    yield settings, service
    service.client.drop_database(settings.mongo_db)
    service.close()


def test_a_restarted_api_keeps_all_state(settings_and_service, tmp_path):
    settings, service = settings_and_service
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    log = tmp_path / "api.log"

    with api_process(settings, log) as url:
        http = httpx.Client(base_url=url, timeout=60)
        token = service.keys.create("device", device_id="mote-01").token
        auth = {"Authorization": f"Bearer {token}"}
        shapes = {name: w.shape for name, w in service.registry.state(0).weights.items()}
        first = [make_update(shapes, "mote-01", update_id=f"r{i}", base_version=0, seed=i) for i in range(3)]
        assert http.post(
            "/api/config", json={"strategy": "fedavgm", "max_staleness": 7}, headers=admin
        ).is_success
        for update in first[:2]:
            assert (
                http.post("/api/local-update", json=encode_json_update(update), headers=auth).status_code
                == 202
            )
        assert http.post("/api/aggregate", headers=admin).json()["version"] == 1
        assert (
            http.post("/api/local-update", json=encode_json_update(first[2]), headers=auth).status_code == 202
        )
        model_before = http.get("/api/global-model").content
        history_before = http.get("/api/history").json()
        http.close()

    # Simulate an aggregation that stopped after storing version 1 but before marking its updates.
    updates = service.client[settings.mongo_db][settings.collection_local_updates]
    updates.update_one(
        {"_id": update_key("mote-01", "r0")}, {"$set": {"status": "pending"}, "$unset": {"version": ""}}
    )

    with api_process(settings, log) as url:
        http = httpx.Client(base_url=url, timeout=60)
        status = http.get("/api/status").json()
        assert status["version"] == 1
        assert status["updates"] == {"pending": 1, "aggregated": 2, "refused": 0}  # r0 marked again at start
        assert status["config"]["strategy"] == "fedavgm" and status["config"]["max_staleness"] == 7
        assert http.get("/api/global-model").content == model_before
        assert http.get("/api/history").json() == history_before

        again = http.post("/api/local-update", json=encode_json_update(first[0]), headers=auth)
        assert again.json()["status"] == "duplicate"  # the key still works; the update is known
        outcome = http.post("/api/aggregate", headers=admin).json()
        assert (outcome["created"], outcome["version"], outcome["n_updates"]) == (True, 2, 1)
        keys = service.client[settings.mongo_db][settings.collection_global_models].find_one({"_id": 2})
        assert keys["update_keys"] == [update_key("mote-01", "r2")]
        assert keys["strategy"] == "fedavgm" and keys["server_state"] is not None
        http.close()
