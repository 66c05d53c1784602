"""Dagster resources: connection settings for Kafka and MongoDB, handing out `flead` clients."""

from dagster import ConfigurableResource
from kafka import KafkaConsumer, KafkaProducer
from pymongo import MongoClient

from flead.bus.clients import make_consumer, make_producer
from flead.config import Settings
from flead.storage.mongo import make_mongo_client


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


def default_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
        "mongo": MongoResource(uri=settings.mongo_uri, database=settings.mongo_db),
    }
