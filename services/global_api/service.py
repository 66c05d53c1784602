"""The global model service without its HTTP shell: everything ``flead api`` and the FastAPI routers
call, built from the settings over one MongoDB database. No framework imports."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import MongoClient

from flead.config import Settings
from flead.model import ModelConfig
from flead.model.config import model_for_fleet
from flead.storage.mongo import get_database, make_mongo_client
from services.global_api.aggregation import Aggregator
from services.global_api.event_pages import EventPages
from services.global_api.keys import KeyStore
from services.global_api.model_payload import ModelPayloads
from services.global_api.monitoring import Monitoring
from services.global_api.normal_acks import NormalAckStore
from services.global_api.privacy_store import PrivacyStore, version_privacy
from services.global_api.registry import ModelRegistry
from services.global_api.runtime_config import RuntimeConfig, RuntimeConfigStore
from services.global_api.submission import Submissions
from services.global_api.update_store import UpdateStore

INITIAL_SEED = 0


@dataclass
class GlobalModelService:
    settings: Settings
    client: MongoClient
    registry: ModelRegistry
    updates: UpdateStore
    config: RuntimeConfigStore
    keys: KeyStore
    aggregator: Aggregator
    submissions: Submissions
    monitoring: Monitoring
    payloads: ModelPayloads
    events: EventPages
    normal_acks: NormalAckStore
    privacy: PrivacyStore

    @classmethod
    def open(cls, settings: Settings) -> GlobalModelService:
        client = make_mongo_client(settings)
        db = get_database(client, settings)
        registry = ModelRegistry(db[settings.collection_global_models])
        updates = UpdateStore(db[settings.collection_local_updates])
        config = RuntimeConfigStore(db[settings.collection_api_config], RuntimeConfig.from_settings(settings))
        admin_key = settings.api_admin_key.get_secret_value() if settings.api_admin_key else None
        keys = KeyStore(db[settings.collection_api_keys], admin_key=admin_key)
        privacy = PrivacyStore(db[settings.collection_privacy])
        aggregator = Aggregator(registry, updates, config, privacy)
        return cls(
            settings=settings,
            client=client,
            registry=registry,
            updates=updates,
            config=config,
            keys=keys,
            aggregator=aggregator,
            submissions=Submissions(registry, updates, config, aggregator, privacy),
            monitoring=Monitoring(
                db[settings.collection_devices],
                db[settings.collection_anomalies],
                updates,
                summary_max_age_s=settings.api_anomaly_summary_max_age_s,
                privacy=privacy,
                privacy_config=settings.privacy(),
            ),
            payloads=ModelPayloads(registry),
            events=EventPages(db[settings.collection_events]),
            normal_acks=NormalAckStore(db[settings.collection_normal_acks], db[settings.collection_devices]),
            privacy=privacy,
        )

    def initialise(self, model_config: ModelConfig | None = None, *, seed: int = INITIAL_SEED) -> bool:
        """Create version 0 when there is no version yet (True), else leave the registry as it is."""
        if self.registry.latest_version() is not None:
            return False
        config = self.config.load()
        return self.registry.create_initial(
            model_config or model_for_fleet(self.settings.fleet),
            seed=seed,
            client=config.client(),
            privacy=version_privacy(config.privacy),
        )

    def start(self) -> None:
        """What a starting API does: indexes, the anomaly summary (in the background), configuration,
        version 0 if none, finish any aggregation an earlier process left half done."""
        self.updates.ensure_indexes()
        self.monitoring.ensure_indexes()
        self.events.ensure_indexes()
        self.normal_acks.ensure_indexes()
        self.monitoring.summaries.prime()
        self.config.load()
        self.initialise()
        self.aggregator.repair()

    def close(self) -> None:
        self.submissions.close()
        self.client.close()
