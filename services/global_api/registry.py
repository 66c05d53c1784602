"""Global model versions in ``collection_global_models``: one immutable document per version.

A document's ``_id`` is its version number. Inserting version ``v + 1`` is the optimistic version
check: the unique ``_id`` lets exactly one aggregation create each version, whichever replica runs
it. The document lists the updates it consumed (``update_keys``), which makes it the record of what
was counted; the updates' own status is brought in step from it (see ``aggregation``).

Weights and the server optimiser's state are stored as ``flead.federated.wire.global_state_fields``
(containers: float32, bit exact). Versions never change, so decoded states are cached in memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from flead.federated import AggregationResult, ClientConfig, GlobalState
from flead.federated.weights import Weights
from flead.federated.wire import global_state_fields, global_state_from_fields
from flead.model import AnomalyModel, ModelConfig
from services.global_api.monitoring import utc

ARRAY_FIELDS = {"weights": 0, "server_state": 0}
STATE_CACHE_SIZE = 32
# How long a process may answer "the latest version" from memory. Versions this process creates are
# seen at once; versions another replica creates within this delay.
LATEST_MAX_AGE_S = 0.5
PROBE_BATCH = 16


class VersionConflict(RuntimeError):
    """Another aggregation created this version first."""


@dataclass(frozen=True)
class ModelVersion:
    """A version's metadata (no arrays)."""

    version: int
    created_at: datetime
    parent_version: int | None
    strategy: str | None
    trigger: str
    architecture: dict
    client: dict
    n_updates: int = 0
    n_devices: int = 0
    total_samples: int = 0
    metrics: dict = field(default_factory=dict)
    update_keys: tuple[str, ...] = ()
    # Differential privacy of the version (`privacy_store.version_privacy`); versions stored before FLEAD
    # had DP were made without it.
    privacy: dict = field(default_factory=lambda: {"mode": "off", "epsilon": None, "accountant": None})

    @classmethod
    def from_doc(cls, doc: dict) -> ModelVersion:
        return cls(
            version=int(doc["_id"]),
            created_at=utc(doc["created_at"]),
            parent_version=doc.get("parent_version"),
            strategy=doc.get("strategy"),
            trigger=doc.get("trigger", "unknown"),
            architecture=doc["architecture"],
            client=doc.get("client") or {},
            n_updates=doc.get("n_updates", 0),
            n_devices=doc.get("n_devices", 0),
            total_samples=doc.get("total_samples", 0),
            metrics=doc.get("metrics") or {},
            update_keys=tuple(doc.get("update_keys") or ()),
            **({"privacy": doc["privacy"]} if doc.get("privacy") else {}),
        )

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(dict(self.architecture))

    def summary(self) -> dict:
        """What ``GET /api/history`` lists."""
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "parent_version": self.parent_version,
            "strategy": self.strategy,
            "trigger": self.trigger,
            "n_updates": self.n_updates,
            "n_devices": self.n_devices,
            "total_samples": self.total_samples,
            "metrics": self.metrics,
            "client": self.client,
            "privacy": self.privacy,
        }

    def privacy_summary(self) -> dict:
        """The privacy block without the per-device contributions (what travels with the model)."""
        return {name: value for name, value in self.privacy.items() if name != "contributions"}


class ModelRegistry:
    def __init__(self, collection: Collection) -> None:
        self._versions = collection
        self._states: OrderedDict[int, GlobalState] = OrderedDict()
        self._lock = threading.Lock()
        self._latest: int | None = None
        self._latest_at = 0.0

    # ------------------------------------------------------------------------------ reading

    def latest_version(self, *, max_age_s: float = 0.0) -> int | None:
        """The newest version number; with ``max_age_s`` > 0 possibly from memory, that old at most."""
        checked_at = time.monotonic()
        with self._lock:
            known = self._latest
            if known is not None and checked_at - self._latest_at <= max_age_s:
                return known
        version = self._probe_latest(known or 0)
        if version is None and known:  # the database was emptied under us
            version = self._probe_latest(0)
        self._remember_latest(version, checked_at)
        return version

    def fresh_latest_version(self, max_age_s: float) -> int | None:
        """The newest version if this process checked it within ``max_age_s``, else None (memory only)."""
        with self._lock:
            if self._latest is not None and time.monotonic() - self._latest_at <= max_age_s:
                return self._latest
        return None

    def known_latest_version(self) -> int | None:
        """The newest version this process has seen, from memory only (no database call)."""
        with self._lock:
            return self._latest

    def _probe_latest(self, start: int) -> int | None:
        """The newest version at or after ``start``, found by id.

        Versions are consecutive from 0, so looking ids up in batches finds the newest. An id lookup
        (``$in``) uses the ``_id`` index on every MongoDB-compatible server; a sorted or range query on
        ``_id`` scans the whole collection on some (SecantusDB), which grows with every version.
        """
        newest = None
        while True:
            batch = list(range(start, start + PROBE_BATCH))
            found = [int(doc["_id"]) for doc in self._versions.find({"_id": {"$in": batch}}, {"_id": 1})]
            if not found:
                return newest
            newest = max(found)
            if newest < batch[-1]:
                return newest
            start = newest + 1

    def _remember_latest(self, version: int | None, checked_at: float) -> None:
        with self._lock:  # never go back: a slower, older answer must not replace a newer one
            if version is not None and (self._latest is None or version >= self._latest):
                self._latest, self._latest_at = version, checked_at

    def latest(self) -> ModelVersion:
        version = self.latest_version()
        found = None if version is None else self.get(version)
        if found is None:
            raise LookupError("no global model version exists yet (the API creates version 0 on start)")
        return found

    def get(self, version: int) -> ModelVersion | None:
        doc = self._versions.find_one({"_id": int(version)}, ARRAY_FIELDS)
        return None if doc is None else ModelVersion.from_doc(doc)

    def history(self, *, limit: int, before: int | None = None) -> list[ModelVersion]:
        """Versions newest first, at most ``limit``, older than ``before`` if given (looked up by id)."""
        newest = self.latest_version()
        if newest is None:
            return []
        top = newest if before is None else min(newest, before - 1)
        ids = list(range(top, max(-1, top - limit), -1))
        if not ids:
            return []
        docs = {doc["_id"]: doc for doc in self._versions.find({"_id": {"$in": ids}}, ARRAY_FIELDS)}
        return [ModelVersion.from_doc(docs[i]) for i in ids if i in docs]

    def state(self, version: int) -> GlobalState:
        """The version's weights and server optimiser state (cached: versions never change)."""
        with self._lock:
            if version in self._states:
                self._states.move_to_end(version)
                return self._states[version]
        doc = self._versions.find_one({"_id": int(version)})
        if doc is None:
            raise LookupError(f"global model version {version} does not exist")
        state = global_state_from_fields(doc["_id"], doc)
        with self._lock:
            self._states[state.version] = state
            while len(self._states) > STATE_CACHE_SIZE:
                self._states.popitem(last=False)
        return state

    def weights_history(self, versions: Iterable[int]) -> dict[int, Weights]:
        """Weights of the listed versions that exist (to turn full-weight updates into deltas)."""
        history = {}
        for version in set(versions):
            try:
                history[version] = self.state(version).weights
            except LookupError:
                continue
        return history

    def model(self, version: ModelVersion) -> AnomalyModel:
        """The version as a shareable ``AnomalyModel`` (a fresh normaliser: devices keep their own)."""
        model = AnomalyModel(version.model_config())
        model.set_weights(dict(self.state(version.version).weights))
        model.metadata = {
            "version": version.version,
            "created_at": version.created_at.isoformat(),
            "parent_version": version.parent_version,
            "strategy": version.strategy,
            "client": version.client,
            "privacy": version.privacy_summary(),
        }
        return model

    # ------------------------------------------------------------------------------ writing

    def create_initial(
        self,
        config: ModelConfig,
        *,
        seed: int,
        client: ClientConfig,
        privacy: dict | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Version 0 from a freshly initialised model; False when a version 0 already exists."""
        model = AnomalyModel(config, seed=seed)
        state = GlobalState.initial(model.get_weights(), now=now or datetime.now(UTC))
        doc = _state_doc(state, config, strategy=None, trigger="init", client=client)
        doc["seed"] = seed
        if privacy is not None:
            doc["privacy"] = privacy
        try:
            self._versions.insert_one(doc)
        except DuplicateKeyError:
            return False
        self._remember_latest(0, time.monotonic())
        return True

    def insert_aggregate(
        self,
        result: AggregationResult,
        *,
        architecture: ModelConfig,
        strategy: str,
        trigger: str,
        client: ClientConfig,
        update_keys: list[str],
        metrics: dict,
        privacy: dict,
    ) -> ModelVersion:
        """Store ``result.new_state``; ``VersionConflict`` when that version exists already."""
        state = result.new_state
        if state is None:
            raise ValueError("the aggregation made no new version")
        summary = result.summary
        doc = _state_doc(state, architecture, strategy=strategy, trigger=trigger, client=client)
        doc.update(
            update_keys=update_keys,
            n_updates=summary.n_updates,
            n_devices=summary.n_devices,
            total_samples=summary.total_samples,
            metrics=metrics,
            privacy=privacy,
        )
        try:
            self._versions.insert_one(doc)
        except DuplicateKeyError:
            raise VersionConflict(
                f"version {state.version} was created by a concurrent aggregation"
            ) from None
        self._remember_latest(state.version, time.monotonic())
        return ModelVersion.from_doc(doc)


def _state_doc(
    state: GlobalState, architecture: ModelConfig, *, strategy: str | None, trigger: str, client: ClientConfig
) -> dict:
    return {
        "_id": state.version,
        "strategy": strategy,
        "trigger": trigger,
        "architecture": architecture.to_dict(),
        "client": {"proximal_mu": client.proximal_mu, "personal_mix": client.personal_mix},
        **global_state_fields(state),  # parent_version, created_at, weights, server_state
    }
