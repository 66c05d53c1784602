"""Dagster resources: ``flead`` (the settings and the clients built from them) and ``pyspark``.

Assets, sensors and schedules take ``flead: FleadResource`` and never build `flead.config.Settings`
themselves. The code location's ``flead`` reads the environment (FLEAD_*, .env) at each call, so a
sensor tick sees the current settings; `FleadResource.of(settings)` pins given settings (the main job).
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from dagster_pyspark import PySparkResource
from pydantic import Field, SecretStr
from pymongo import MongoClient

from flead.api_client import GlobalApiClient
from flead.config import Settings, load_settings
from flead.local.secrets import local_admin_key
from flead.storage.mongo import make_mongo_client
from flead_dagster.spark_scoring import prepare_environment, spark_config


class FleadResource(ConfigurableResource):
    """FLEAD's settings and its clients: MongoDB and the global model API (admin token)."""

    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings fields (by name) over the environment's; secrets always come from the "
        "environment, so they never appear in the run config.",
    )

    @classmethod
    def of(cls, settings: Settings) -> FleadResource:
        """Pinned to `settings`: every value set by the environment or by hand, except the secrets."""
        secrets = {name for name, value in settings if isinstance(value, SecretStr)}
        return cls(overrides=settings.model_dump(mode="json", exclude_unset=True, exclude=secrets))

    def settings(self) -> Settings:
        """Read now, so a changed environment applies at once (a bad one raises `SettingsError`)."""
        return load_settings(**self.overrides)

    def mongo_client(self, settings: Settings | None = None) -> MongoClient:
        return make_mongo_client(settings or self.settings())

    def api_client(self, settings: Settings | None = None) -> GlobalApiClient:
        """The API with the admin token: FLEAD_API_ADMIN_KEY, else the local services' generated key."""
        settings = settings or self.settings()
        return GlobalApiClient(settings.api_url, local_admin_key(settings))


def spark_resource(settings: Settings) -> PySparkResource:
    prepare_environment(settings)
    return PySparkResource(spark_config=spark_config(settings))


def default_resources(
    settings: Settings, *, pinned: bool = True
) -> dict[str, FleadResource | PySparkResource]:
    """``flead`` and ``pyspark`` from `settings`; ``pinned`` False leaves ``flead`` reading the
    environment at each call (the code location's)."""
    return {
        "flead": FleadResource.of(settings) if pinned else FleadResource(),
        "pyspark": spark_resource(settings),
    }
