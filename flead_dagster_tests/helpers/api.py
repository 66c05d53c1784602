"""The live API harness, its settings and model-shaped updates shared by the API tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

from flead.config import Settings
from flead.federated import LocalUpdate
from flead.federated.wire import encode_binary_update, encode_json_update
from flead.local.services import free_port, terminate
from flead.model import AnomalyModel
from services.global_api.live_server import LiveServer
from services.global_api.service import GlobalModelService

ADMIN_KEY = "test-admin-key-" + uuid.uuid4().hex


def api_settings(**overrides: object) -> Settings:
    """Settings for a private API: a fresh database and a free port on this machine."""
    values: dict = {
        "mongo_db": f"test_api_{uuid.uuid4().hex[:10]}",
        "api_url": f"http://127.0.0.1:{free_port()}",
        "api_admin_key": ADMIN_KEY,
    }
    return Settings(**{**values, **overrides})


class ApiHarness:
    """A live API plus direct access to its database, keys and a model-shaped update factory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = LiveServer(settings).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=60.0)
        self.service = GlobalModelService.open(settings)
        self.db = self.service.client[settings.mongo_db]
        self.shapes = {name: w.shape for name, w in self.service.registry.state(0).weights.items()}
        self._ids = itertools.count()

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.service.client.drop_database(self.settings.mongo_db)
        self.service.close()

    def token(self, role: str, device: str | None = None) -> str:
        return self.service.keys.create(role, device_id=device).token

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.auth(ADMIN_KEY)

    def update(
        self, device_id: str, *, update_id: str | None = None, base_version: int | None = None, **kwargs
    ) -> LocalUpdate:
        """A random delta of the model's shapes; ids count up, the base is the current version."""
        return make_update(
            self.shapes,
            device_id,
            update_id=update_id or f"u{next(self._ids)}",
            base_version=self.version() if base_version is None else base_version,
            **kwargs,
        )

    def submit(self, update: LocalUpdate | dict, token: str, *, binary: bool = False) -> httpx.Response:
        if binary:
            return self.http.post(
                "/api/local-update",
                content=encode_binary_update(update),
                headers={**self.auth(token), "Content-Type": "application/octet-stream"},
            )
        body = encode_json_update(update) if isinstance(update, LocalUpdate) else update
        return self.http.post("/api/local-update", json=body, headers=self.auth(token))

    def version(self) -> int:
        return self.http.get("/api/status").json()["version"]

    def aggregate(self) -> dict:
        response = self.http.post("/api/aggregate", headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()

    def configure(self, **changes: object) -> dict:
        response = self.http.post("/api/config", json=changes, headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()

    def model(self, version: int | None = None) -> dict:
        params = {} if version is None else {"version": version}
        response = self.http.get("/api/global-model", params=params)
        assert response.status_code == 200, response.text
        return response.json()


def make_update(
    shapes: dict[str, tuple[int, ...]],
    device_id: str,
    *,
    update_id: str,
    base_version: int,
    n_samples: int = 100,
    seed: int = 0,
    scale: float = 0.01,
    loss: float = 0.5,
) -> LocalUpdate:
    rng = np.random.default_rng(seed)
    return LocalUpdate(
        device_id=device_id,
        update_id=update_id,
        base_version=base_version,
        n_samples=n_samples,
        arrays={
            name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, shape in shapes.items()
        },
        metrics={"loss": loss},
    )


def all_items(http: httpx.Client, path: str, **params: object) -> list[dict]:
    """Every item of a list, page by page through its cursors (`after=<next>` until `next` is null)."""
    items: list[dict] = []
    after = None
    while True:
        response = http.get(path, params={**params, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) >= {"items", "limit", "next"}, page
        assert len(page["items"]) <= page["limit"]
        items += page["items"]
        after = page["next"]
        if after is None:
            return items


@contextlib.contextmanager
def api_harness(**overrides: object) -> Iterator[ApiHarness]:
    harness = ApiHarness(api_settings(**overrides))
    try:
        yield harness
    finally:
        harness.close()


def weights_of(model_json: dict) -> dict[str, np.ndarray]:
    return AnomalyModel.from_json_dict(model_json["model"]).get_weights()


def consumed_by_version(api: ApiHarness) -> dict[int, list[str]]:
    versions = api.db[api.settings.collection_global_models].find({}, {"update_keys": 1})
    return {doc["_id"]: doc.get("update_keys", []) for doc in versions}


def assert_each_update_counted_once(api: ApiHarness, submitted: int) -> dict[int, list[str]]:
    consumed = consumed_by_version(api)
    assert sorted(consumed) == list(range(len(consumed)))  # versions 0..N, no gaps
    keys = [key for version_keys in consumed.values() for key in version_keys]
    assert len(keys) == len(set(keys)) == submitted  # nothing counted twice, nothing lost
    updates = api.db[api.settings.collection_local_updates]
    for version, version_keys in consumed.items():
        for key in version_keys:
            doc = updates.find_one({"_id": key})
            assert (doc["status"], doc["version"]) == ("aggregated", version)
    history = all_items(api.http, "/api/history", limit=1000)
    assert [entry["version"] for entry in history] == sorted(consumed, reverse=True)
    for entry in history:
        assert entry["parent_version"] == (entry["version"] - 1 if entry["version"] else None)
        assert entry["n_updates"] == len(consumed[entry["version"]])
    return consumed


REPO = Path(__file__).resolve().parents[2]


@contextmanager
def api_process(settings: Settings, log: Path) -> Iterator[str]:
    """`python -m services.global_api` in its own process; yields its URL once /health answers."""
    env = {
        **os.environ,
        "FLEAD_MONGO_DB": settings.mongo_db,
        "FLEAD_API_URL": settings.api_url,
        "FLEAD_API_ADMIN_KEY": ADMIN_KEY,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.global_api"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    url = settings.api_url.rstrip("/")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the API process exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the API never became healthy: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval between health checks
        yield url
    finally:
        terminate(psutil.Process(process.pid), grace_s=20)
