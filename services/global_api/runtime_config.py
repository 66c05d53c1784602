"""The API's runtime configuration, persisted in ``collection_api_config`` so that every replica and
every restart uses the same: the aggregation strategy, the automatic-aggregation threshold, the
staleness bound, and the client settings served with new global versions.

The first read seeds it from the settings (``FLEAD_AGGREGATION_STRATEGY``,
``FLEAD_AUTO_AGGREGATE_THRESHOLD``, ``FLEAD_MAX_STALENESS``); ``POST /api/config`` changes it.

The differential-privacy settings (``privacy``, from ``FLEAD_DP_*``) travel with it but are the
deployment's, never persisted nor changed at run time: the devices privatise by the same settings, and a
stored value would outlive a restart that turned DP on, leaving updates un-noised without a word.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from flead.config import Settings
from flead.federated import STRATEGY_NAMES, AggregationConfig, ClientConfig
from flead.privacy.config import PrivacyConfig

CONFIG_ID = "aggregation"
# How long a process may use the configuration from memory (``load(max_age_s=...)``): a change made
# through this process applies at once, one made through another replica within this delay.
CONFIG_MAX_AGE_S = 0.5


@dataclass(frozen=True)
class RuntimeConfig:
    strategy: str
    auto_aggregate_threshold: int
    max_staleness: int
    proximal_mu: float = ClientConfig.proximal_mu
    personal_mix: float = ClientConfig.personal_mix
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # not persisted: see the docstring

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}")
        if not _is_int(self.auto_aggregate_threshold) or self.auto_aggregate_threshold < 1:
            raise ValueError(
                f"auto_aggregate_threshold must be an integer >= 1, got {self.auto_aggregate_threshold!r}"
            )
        self.aggregation()  # validates max_staleness
        self.client()  # validates proximal_mu and personal_mix

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeConfig:
        return cls(
            strategy=settings.aggregation_strategy,
            auto_aggregate_threshold=settings.auto_aggregate_threshold,
            max_staleness=settings.max_staleness,
            privacy=settings.privacy(),
        )

    def aggregation(self) -> AggregationConfig:
        return AggregationConfig(
            strategy=self.strategy, max_staleness=self.max_staleness, privacy=self.privacy
        )

    def client(self) -> ClientConfig:
        return ClientConfig(proximal_mu=self.proximal_mu, personal_mix=self.personal_mix)

    def to_dict(self) -> dict:
        return asdict(self)

    def persisted(self) -> dict:
        """What is stored (and may be changed): everything but the deployment's privacy settings."""
        return {name: value for name, value in self.to_dict().items() if name not in NOT_PERSISTED}


NOT_PERSISTED = frozenset({"privacy"})


class RuntimeConfigStore:
    def __init__(self, collection: Collection, defaults: RuntimeConfig) -> None:
        self._configs = collection
        self._defaults = defaults
        self._lock = threading.Lock()
        self._cached: tuple[RuntimeConfig, float] | None = None

    def load(self, *, max_age_s: float = 0.0) -> RuntimeConfig:
        loaded_at = time.monotonic()
        with self._lock:
            if self._cached is not None and loaded_at - self._cached[1] <= max_age_s:
                return self._cached[0]
        doc = self._configs.find_one({"_id": CONFIG_ID})
        if doc is None:
            try:
                self._configs.insert_one({"_id": CONFIG_ID, **self._defaults.persisted()})
            except DuplicateKeyError:  # another replica seeded it first
                return self.load()
            config = self._defaults
        else:
            known = {f.name for f in fields(RuntimeConfig)} - NOT_PERSISTED
            config = replace(self._defaults, **{k: v for k, v in doc.items() if k in known})
        self._remember(config, loaded_at)
        return config

    def _remember(self, config: RuntimeConfig, loaded_at: float) -> None:
        with self._lock:
            if self._cached is None or loaded_at >= self._cached[1]:
                self._cached = (config, loaded_at)

    def update(self, changes: dict) -> RuntimeConfig:
        """Apply ``changes`` (validated together with the current values) and persist them."""
        unknown = set(changes) - ({f.name for f in fields(RuntimeConfig)} - NOT_PERSISTED)
        if unknown:
            raise ValueError(f"unknown configuration fields {sorted(unknown)}")
        updated = replace(self.load(), **changes)  # raises ValueError when invalid
        self._configs.update_one(
            {"_id": CONFIG_ID},
            {"$set": {**updated.persisted(), "updated_at": datetime.now(UTC)}},
            upsert=True,
        )
        self._remember(updated, time.monotonic())
        return updated


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
