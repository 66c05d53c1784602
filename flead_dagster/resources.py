"""Dagster resources: Kafka, MongoDB, the global model API and Spark, configured from `flead.config`."""

import os

from dagster import ConfigurableResource, EnvVar
from dagster_pyspark import PySparkResource
from kafka import KafkaConsumer, KafkaProducer
from pymongo import MongoClient

from flead.api_client import GlobalApiClient
from flead.bus.clients import make_consumer, make_producer
from flead.config import Settings
from flead.local.secrets import local_admin_key
from flead.storage.mongo import make_mongo_client
from flead_dagster.spark_scoring import prepare_environment, spark_config

ADMIN_KEY_ENV = "FLEAD_API_ADMIN_KEY"


class KafkaResource(ConfigurableResource):
    bootstrap_servers: str

    def apply(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"kafka_bootstrap_servers": self.bootstrap_servers})

    def producer(self) -> KafkaProducer:
        return make_producer(self.apply(Settings()))

    def consumer(self, *topics: str, group_id: str) -> KafkaConsumer:
        return make_consumer(self.apply(Settings()), *topics, group_id=group_id)


class MongoResource(ConfigurableResource):
    uri: str
    database: str

    def apply(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"mongo_uri": self.uri, "mongo_db": self.database})

    def client(self) -> MongoClient:
        return make_mongo_client(self.apply(Settings()))


class GlobalApiResource(ConfigurableResource):
    """The global model API over HTTP. The admin token comes from FLEAD_API_ADMIN_KEY when set (an
    `EnvVar`, so it never appears in the run config), else from the local services' generated key."""

    base_url: str
    admin_key: str | None = None

    def client(self) -> GlobalApiClient:
        return GlobalApiClient(self.base_url, self.admin_key or local_admin_key(Settings()))


def spark_resource(settings: Settings) -> PySparkResource:
    prepare_environment(settings)
    return PySparkResource(spark_config=spark_config(settings))


def default_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    admin_key = EnvVar(ADMIN_KEY_ENV) if os.environ.get(ADMIN_KEY_ENV) else None
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
        "mongo": MongoResource(uri=settings.mongo_uri, database=settings.mongo_db),
        "global_api": GlobalApiResource(base_url=settings.api_url, admin_key=admin_key),
        "pyspark": spark_resource(settings),
    }
