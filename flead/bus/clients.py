"""kafka-python clients built from settings, so every process talks to Kafka the same way."""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from flead.config import Settings


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",")],
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        **_security(settings),
    }


def _security(settings: Settings) -> dict[str, Any]:
    """kafka-python's TLS and SASL options from the settings (validated together in `flead.config`).

    ``sasl_plain_username``/``sasl_plain_password`` are kafka-python's names for the credentials of
    every username/password mechanism, SCRAM included.
    """
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_security_protocol.endswith("SSL"):
        files = {
            "ssl_cafile": settings.kafka_ssl_cafile,
            "ssl_certfile": settings.kafka_ssl_certfile,
            "ssl_keyfile": settings.kafka_ssl_keyfile,
        }
        options |= {key: str(path) for key, path in files.items() if path is not None}
    return options


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the broker's acknowledgement and keeps per-key order."""
    options = {
        **_common(settings),
        "acks": "all",
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 1,
        "retries": 5,
    }
    return KafkaProducer(**{**options, **overrides})


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any
) -> KafkaConsumer:
    """A consumer-group member with manual commits.

    kafka-python joins a group in about half of ``session_timeout_ms``; the settings default to 6 s
    (with a 2 s heartbeat) instead of the 45 s library default so a rebalance takes seconds.
    """
    options = {
        **_common(settings),
        "group_id": group_id if group_id is not None else settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "request_timeout_ms": max(
            settings.kafka_request_timeout_ms, settings.kafka_session_timeout_ms + 1000
        ),
    }
    return KafkaConsumer(*topics, **{**options, **overrides})


def make_admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(**{**_common(settings), **overrides})
