"""The one settings object. Every host, port, topic, collection and directory comes from here.

Values come from (highest first): constructor arguments, environment variables prefixed
``FLEAD_`` (e.g. ``FLEAD_KAFKA_BOOTSTRAP_SERVERS``), a ``.env`` file in the working directory,
and the defaults below, which point at the embedded local services (`flead local up`).

Every value is checked when the settings load. ``load_settings()``, the loader of the process edges (the
command line, the services, Dagster's code location), reports every bad variable at once, by its
environment name, with the value given and what is allowed: one ``SettingsError``, no traceback.
"""

from __future__ import annotations

import os
import re
import sys
import types
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flead.fleet import FleetSchema, load_fleet

# A host name or an IPv4 address (letters, digits, '-', '_', '.'), or an IPv6 address in brackets.
_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
_HOST_PORT = rf"{_HOST}:[0-9]{{1,5}}"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Address(tuple):
    """A (host, port) pair parsed from a URL or a ``host:port`` string."""

    @classmethod
    def parse(cls, value: str) -> Address:
        parts = urlsplit(value if "//" in value else f"//{value}")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)  # http://host is port 80
        if not parts.hostname or not port:
            raise ValueError(f"expected host:port, got {value!r}")
        return cls((parts.hostname, port))

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Problems(ValueError):
    """Several problems found by one validator, kept apart so that each gets its own line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SettingsError(ValueError):
    """Invalid settings; ``problems`` has one line per bad variable: its name, its value, what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid settings ({len(problems)}):\n{lines}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEAD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        allow_inf_nan=False,  # no nan or inf timeout
    )

    # Kafka
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers (host:port)."
    )
    kafka_session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer-group session timeout; a group joins in about half of it."
    )
    kafka_heartbeat_interval_ms: int = Field(2000, ge=100, description="Consumer-group heartbeat interval.")
    kafka_request_timeout_ms: int = Field(10000, ge=1000, description="Kafka request timeout.")
    topic_readings: str = Field("flead.readings", description="Topic of sensor readings, keyed by device id.")
    topic_readings_partitions: int = Field(8, ge=1, description="Partitions of the readings topic.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replicas of the topics FLEAD creates (1 locally; 3 on a production cluster)."
    )
    topic_anomalies: str = Field("flead.anomalies", description="Topic of detected anomaly events.")
    topic_dlq: str = Field("flead.readings.dlq", description="Dead-letter topic for invalid readings.")
    topic_late: str = Field(
        "flead.readings.late", description="Side output of readings later than the allowed lateness."
    )
    topic_smoke: str = Field("flead.smoke", description="Topic used by the platform round-trip check.")
    max_message_bytes: int = Field(
        64 * 1024, ge=256, description="Largest reading message accepted; bigger ones go to the DLQ."
    )
    consumer_group: str = Field("flead-trainer", description="Consumer group of the stream trainer.")
    smoke_consumer_group: str = Field("flead-smoke", description="Consumer group of the round-trip check.")

    # MongoDB
    mongo_uri: str = Field(
        "mongodb://127.0.0.1:27017/?directConnection=true", description="MongoDB connection URI."
    )
    mongo_db: str = Field("flead", description="MongoDB database name.")
    mongo_server_selection_timeout_ms: int = Field(
        5000, ge=100, description="How long pymongo waits for a reachable server."
    )
    collection_smoke: str = Field("smoke_checks", description="Collection written by the round-trip check.")
    collection_anomalies: str = Field("anomalies", description="Anomaly events, one per (device_id, ts).")
    collection_devices: str = Field("devices", description="Per-device status and rolling statistics.")
    collection_local_updates: str = Field("local_updates", description="Local model updates sent by devices.")
    collection_global_models: str = Field("global_models", description="Every global model version.")
    collection_api_config: str = Field("api_config", description="The global API's persisted configuration.")
    collection_api_keys: str = Field("api_keys", description="Hashed API tokens (device, trainer, admin).")
    collection_services: str = Field("services", description="Heartbeats of the long-running services.")
    collection_device_states: str = Field(
        "device_states", description="The stream trainer's per-device state."
    )
    collection_checkpoints: str = Field(
        "trainer_checkpoints", description="The stream trainer's checkpointed offsets per partition."
    )
    collection_evaluations: str = Field(
        "evaluations", description="Batch evaluations, one per (global model version, day)."
    )

    # Global model API
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the global model API.")
    api_key: SecretStr | None = Field(None, description="Token this process presents to the API.")
    api_admin_key: SecretStr | None = Field(None, description="Admin key of the API.")

    # Data set
    fleet_schema: str = Field(
        "intel_lab",
        description="The fleet's sensors: a preset (intel_lab, nasa_smap, nasa_msl) or a TOML schema file.",
    )
    intel_lab_data_url: str = Field(
        "http://db.csail.mit.edu/labdata/data.txt.gz", description="The Intel Lab readings (34 MB gzip)."
    )
    intel_lab_locs_url: str = Field(
        "http://db.csail.mit.edu/labdata/mote_locs.txt", description="The Intel Lab mote locations."
    )
    download_attempts: int = Field(5, ge=1, description="Tries per download, with exponential backoff.")
    dataset_start: date = Field(
        date(2004, 2, 28), description="First day of the data set's daily partitions."
    )
    dataset_end: date = Field(date(2004, 4, 5), description="Last day of the data set's daily partitions.")
    flag_rate_warn: float = Field(
        0.25, ge=0, le=1, description="Share of out-of-range readings in a day above which its check warns."
    )

    # Global model service
    api_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body the API accepts."
    )
    api_max_batch_updates: int = Field(
        500, ge=1, description="Most local updates in one POST /api/local-updates request."
    )
    api_max_batch_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest POST /api/local-updates body the API accepts."
    )
    api_body_timeout_s: float = Field(
        30.0, gt=0, description="Time a request body has to arrive in full before the API answers 408."
    )
    api_health_timeout_s: float = Field(
        1.0, gt=0, description="MongoDB ping timeout of /health; no answer for twice this reports it down."
    )
    api_anomaly_summary_max_age_s: float = Field(
        60.0,
        ge=0,
        description="Most age of the per-device anomaly summary before a recount (in the background).",
    )
    aggregation_strategy: str = Field(
        "fedavg", description="fedavg, fedavgm, fedadam, median or trimmed_mean (the API's initial config)."
    )
    auto_aggregate_threshold: int = Field(
        8, ge=1, description="Pending updates that trigger an automatic aggregation."
    )
    max_staleness: int = Field(
        10, ge=0, description="Versions an update's base may lag before it is refused."
    )

    # Differential privacy of device updates (docs/privacy.md)
    dp_mode: Literal["off", "local", "central"] = Field(
        "off",
        description="Device-level DP of updates: off, local (noised on the device) or central "
        "(noised by a trusted server at aggregation).",
    )
    dp_clip_norm: float = Field(1.0, gt=0, description="L2 norm every update is clipped to (DP on).")
    dp_noise_multiplier: float = Field(
        1.0, gt=0, description="Gaussian noise standard deviation over the clip norm (DP on)."
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="The delta of every (epsilon, delta) reported.")
    dp_epsilon_budget: float | None = Field(
        None, gt=0, description="Epsilon past which a device's updates are refused (unset: no budget)."
    )
    collection_privacy: str = Field(
        "privacy_ledger", description="Each device's DP contributions and epsilon (the accountant's ledger)."
    )

    # Stream trainer
    trainer_max_poll_records: int = Field(5000, ge=1, description="Records the trainer takes per poll.")
    trainer_checkpoint_records: int = Field(
        20000, ge=1, description="Records between the trainer's checkpoints."
    )
    trainer_checkpoint_seconds: float = Field(
        10.0, gt=0, description="Seconds between the trainer's checkpoints."
    )
    trainer_push_every: int = Field(1024, ge=1, description="Samples a device learns between local updates.")
    trainer_training_devices: int = Field(
        500,
        ge=0,
        description="Devices of one trainer process that train at once, one round each in turn; the others "
        "score with the global weights held once (0: every device, always). Shared out over the readings "
        "topic's partitions: each partition trains at most its share; its cohort is checkpointed with it.",
    )
    trainer_allowed_lateness_s: float = Field(
        300.0, ge=0, description="Event-time lateness after which a reading goes to the late side output."
    )
    trainer_max_future_s: float = Field(
        300.0,
        ge=0,
        description="How far ahead of the trainer's clock a reading's time may be; later ones go to the DLQ.",
    )
    trainer_health_port: int = Field(
        8081, ge=0, le=65535, description="Port of the trainer's /health endpoint (0: any free port)."
    )
    trainer_health_host: str = Field(
        "127.0.0.1",
        description="Where the supervisor probes a trainer it started (its /health listens on all).",
    )
    trainer_fleet_warmup: int = Field(
        128,
        ge=0,
        description="Readings a device learns before its scores feed its partition's fleet calibration.",
    )
    trainer_exchange: Literal["local", "http"] = Field(
        "local",
        description="Where the trainer sends local updates: in-process (local) or the global API (http).",
    )

    # Alarms grouped into events (flead.model.events.EventConfig), by the stream trainer
    collection_events: str = Field(
        "anomaly_events", description="Anomaly events: runs of alarms, one per (device_id, start)."
    )
    collection_normal_acks: str = Field(
        "normal_acks",
        description="Operators' acknowledgements that a device's behaviour is a new normal (API -> trainer).",
    )
    events_merge_gap: int = Field(
        10, ge=1, description="Alarms closer than this many readings are one event."
    )
    events_min_duration: int = Field(
        1, ge=1, description="Readings from an event's first to its last alarm, at least (else pruned)."
    )
    events_min_severity: float = Field(
        2.0, ge=1.0, description="Times over its threshold an event's peak must reach (else pruned)."
    )

    # Webhook notifications of anomaly events (flead.alerts, services/notifier)
    alerts_webhook_urls: str = Field(
        "", description="Comma-separated http(s) URLs notified of anomaly events (empty: notifications off)."
    )
    alerts_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing every notification; required with ALERTS_WEBHOOK_URLS."
    )
    alerts_format: Literal["flead", "alertmanager"] = Field(
        "flead", description="Notification body: flead (FLEAD's JSON) or alertmanager (its webhook format)."
    )
    alerts_max_attempts: int = Field(
        6, ge=1, description="Tries per notification before it is dead-lettered."
    )
    alerts_backoff_s: float = Field(
        1.0, gt=0, description="Wait after a notification's first failed try; doubles with every next one."
    )
    alerts_backoff_max_s: float = Field(300.0, gt=0, description="Longest wait between two tries.")
    alerts_timeout_s: float = Field(
        5.0, gt=0, description="How long one try waits for the receiver's answer."
    )
    alerts_rate_limit: int = Field(
        10, ge=0, description="Notifications per device and URL per minute, at most (0: no limit)."
    )
    collection_alert_outbox: str = Field(
        "alert_outbox",
        description="Notifications queued, sent, suppressed or dead (one per URL, event, status).",
    )
    collection_alert_dead_letters: str = Field(
        "alert_dead_letters", description="Notifications given up on, with the reason."
    )
    collection_alert_cursor: str = Field(
        "alert_cursor", description="How far the notifier has followed the events collection."
    )

    # Orchestration (Dagster sensors, schedules and checks)
    dagster_host: str = Field("127.0.0.1", description="Host `flead up` serves the Dagster UI on.")
    dagster_port: int = Field(3000, ge=1, le=65535, description="Port `flead up` serves the Dagster UI on.")
    supervise_trainer: bool = Field(
        True, description="Whether the Dagster sensor keeps a stream trainer running."
    )
    supervise_api: bool = Field(True, description="Whether the Dagster sensor keeps the global API running.")
    supervise_notifier: bool = Field(
        True, description="Whether the Dagster sensor keeps the notifier running (with webhook URLs set)."
    )
    service_stale_s: float = Field(
        30.0, gt=0, description="A heartbeat older than this means the service is down."
    )
    pending_updates_trigger: int = Field(
        4, ge=1, description="Pending local updates at which the sensor requests a global_model run."
    )
    evaluation_threshold_quantile: float = Field(
        0.98, gt=0, lt=1, description="Per-device score quantile above which batch evaluation alarms."
    )
    evaluation_f1_tolerance: float = Field(
        0.05, ge=0, le=1, description="How much worse a version's F1 may be than the previous one's."
    )

    # Files
    home: Path = Field(Path(".flead"), description="Root of FLEAD's local files.")
    data_dir: Path | None = Field(None, description="Downloaded and generated raw data (default HOME/data).")
    lake_dir: Path | None = Field(None, description="Parquet lake, one folder per day (default HOME/lake).")
    labelled_dir: Path | None = Field(
        None, description="Lake copy with injected, labelled anomalies (default HOME/labelled)."
    )
    state_dir: Path | None = Field(
        None, description="Local services' PID files, logs and data (default HOME/state)."
    )
    evaluations_dir: Path | None = Field(
        None, description="Scored readings of batch evaluations, Parquet (default HOME/evaluations)."
    )
    reports_dir: Path | None = Field(
        None, description="Anomaly reports, Markdown + PNG (default HOME/reports)."
    )

    # Spark
    spark_master: str = Field("local[*]", description="Spark master URL.")
    spark_driver_memory: str = Field("2g", description="Spark driver memory (local mode runs all in it).")
    spark_shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions.")
    spark_driver_host: str = Field(
        "127.0.0.1", description="Address the Spark driver binds to and advertises in local mode."
    )

    # Security (production)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); required by SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name; required by SASL_*.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password; required by SASL_*.")
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM file of the CAs that sign the brokers' certificates (SSL, SASL_SSL)."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate for mutual TLS with Kafka (SSL, SASL_SSL)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the Kafka client certificate (needs the certificate)."
    )
    mongo_tls: bool = Field(False, description="Connect to MongoDB over TLS.")
    mongo_tls_ca_file: Path | None = Field(
        None, description="PEM file of the CAs that sign MongoDB's certificate (needs MONGO_TLS)."
    )
    mongo_username: str | None = Field(
        None, description="MongoDB user (keep credentials out of MONGO_URI; authSource goes in the URI)."
    )
    mongo_password: SecretStr | None = Field(None, description="MongoDB password (needs MONGO_USERNAME).")

    # Embedded local services
    local_start_timeout_s: float = Field(
        20.0, gt=0, description="How long `flead local up` waits for a service to answer."
    )
    local_stop_grace_s: float = Field(
        10.0, ge=0, description="SIGTERM grace period before `flead local down` sends SIGKILL."
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        return _check_servers(value)

    @field_validator("fleet_schema")
    @classmethod
    def _check_fleet_schema(cls, value: str) -> str:
        load_fleet(value)  # a FleetSchemaError (a ValueError) says what is wrong with the file
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _check_mongo_uri(cls, value: str) -> str:
        return _check_mongo_uri(value)

    @field_validator("api_url", "intel_lab_data_url", "intel_lab_locs_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("alerts_webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, value: str) -> str:
        for url in (u.strip() for u in value.split(",") if u.strip()):
            _check_http_url(url)
        return value

    def privacy(self):  # -> flead.privacy.PrivacyConfig (imported here: it needs NumPy and dp-accounting)
        """The deployment's differential-privacy settings."""
        from flead.privacy.config import PrivacyConfig

        return PrivacyConfig(
            mode=self.dp_mode,
            clip_norm=self.dp_clip_norm,
            noise_multiplier=self.dp_noise_multiplier,
            delta=self.dp_delta,
            epsilon_budget=self.dp_epsilon_budget,
        )

    @property
    def alert_urls(self) -> list[str]:
        """The webhook URLs notified of anomaly events (none: notifications off)."""
        return [u.strip() for u in self.alerts_webhook_urls.split(",") if u.strip()]

    @field_validator("aggregation_strategy")
    @classmethod
    def _check_strategy(cls, value: str) -> str:
        # The names the aggregation code accepts; imported here because flead.federated imports NumPy.
        from flead.federated.config import STRATEGY_NAMES

        if value not in STRATEGY_NAMES:
            raise ValueError(f"expected one of {', '.join(STRATEGY_NAMES)}")
        return value

    @field_validator("topic_readings", "topic_anomalies", "topic_dlq", "topic_late", "topic_smoke")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value) or value in (".", ".."):
            raise ValueError("expected a Kafka topic name: 1 to 249 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("consumer_group", "smoke_consumer_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a consumer group name (not empty)")
        return value

    @field_validator("mongo_db")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value or len(value.encode()) > 63 or any(c in value for c in '/\\. "$\0'):
            raise ValueError('expected a MongoDB database name: 1 to 63 bytes, none of / \\ . " $ or a space')
        return value

    @field_validator(*(name for name in __annotations__ if name.startswith("collection_")))
    @classmethod
    def _check_collection(cls, value: str) -> str:
        if not value or "$" in value or "\0" in value or value.startswith("system."):
            raise ValueError("expected a MongoDB collection name: not empty, no $, not starting with system.")
        return value

    @field_validator("trainer_health_host", "dagster_host", "spark_driver_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not re.fullmatch(_HOST, value) and not re.fullmatch(r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*", value):
            raise ValueError("expected a host name or an IP address (e.g. 127.0.0.1)")
        return value

    @field_validator("spark_master")
    @classmethod
    def _check_spark_master(cls, value: str) -> str:
        patterns = (
            r"local(\[([1-9][0-9]*|\*)(,[1-9][0-9]*)?\])?",
            r"local-cluster\[[1-9][0-9]*,[1-9][0-9]*,[1-9][0-9]*\]",
            rf"spark://{_HOST_PORT}(,{_HOST_PORT})*",
            r"yarn",
            r"(k8s|mesos)://\S+",
        )
        if not any(re.fullmatch(pattern, value) for pattern in patterns):
            raise ValueError("expected local, local[N], local[*], spark://host:port, yarn or k8s://...")
        return value

    @field_validator("spark_driver_memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*([kmgtp]b?|b)?", value, re.IGNORECASE):
            raise ValueError("expected a JVM memory size: a number and k, m, g or t (e.g. 512m, 2g)")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        problems = consistency_problems(self) + security_problems(self)
        if problems:
            raise _Problems(problems)
        return self

    def model_post_init(self, __context: object) -> None:
        self.data_dir = self.data_dir or self.home / "data"
        self.lake_dir = self.lake_dir or self.home / "lake"
        self.labelled_dir = self.labelled_dir or self.home / "labelled"
        self.state_dir = self.state_dir or self.home / "state"
        self.evaluations_dir = self.evaluations_dir or self.home / "evaluations"
        self.reports_dir = self.reports_dir or self.home / "reports"

    @cached_property
    def fleet(self) -> FleetSchema:
        """The fleet schema `fleet_schema` names (loaded once)."""
        return load_fleet(self.fleet_schema)

    @cached_property
    def kafka_address(self) -> Address:
        """The first bootstrap server: where the embedded broker listens."""
        return Address.parse(self.kafka_bootstrap_servers.split(",")[0].strip())

    @cached_property
    def mongo_address(self) -> Address:
        """Where the embedded MongoDB-protocol server listens."""
        host = urlsplit(self.mongo_uri).netloc.rsplit("@", 1)[-1].split(",")[0]
        return Address.parse(host if ":" in host else f"{host}:27017")


def _check_servers(value: str) -> str:
    expected = "expected host:port, several separated by commas (e.g. kafka-1:9092,kafka-2:9092)"
    for server in (server.strip() for server in value.split(",")):
        if not re.fullmatch(_HOST_PORT, server):
            raise ValueError(f"{expected}; {server!r} is not host:port")
        if not 1 <= int(server.rpartition(":")[2]) <= 65535:
            raise ValueError(f"{expected}; the port of {server!r} is not in 1..65535")
    return value


def _check_mongo_uri(value: str) -> str:
    expected = "expected mongodb://host[:port][,host[:port]...][/database][?options] or mongodb+srv://host"
    scheme, sep, rest = value.partition("://")
    if scheme not in ("mongodb", "mongodb+srv") or not sep:
        raise ValueError(expected)
    hosts = re.split(r"[/?]", rest, maxsplit=1)[0].rpartition("@")[2]
    for host in hosts.split(","):
        match = re.fullmatch(rf"({_HOST}|%2[Ff][^:]+)(?::([0-9]{{1,5}}))?", host)  # %2F...: a Unix socket
        if not match:
            raise ValueError(f"{expected}; {host!r} is not a host" if host else f"{expected}; no host given")
        if match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535:
            raise ValueError(f"{expected}; the port of {host!r} is not in 1..65535")
        if scheme == "mongodb+srv" and (match.group(2) is not None or "," in hosts):
            raise ValueError(f"{expected}; mongodb+srv:// takes one host name and no port")
    return value


def _check_http_url(value: str) -> str:
    expected = "expected an http:// or https:// URL with a host (e.g. http://127.0.0.1:8000)"
    parts = urlsplit(value)
    match = re.fullmatch(rf"({_HOST})(?::([0-9]{{1,5}}))?", parts.netloc.rpartition("@")[2])
    if parts.scheme not in ("http", "https") or not match:
        raise ValueError(expected)
    if match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"{expected}; its port is not in 1..65535")
    return value


def consistency_problems(settings: Settings) -> list[str]:
    """Settings each valid alone but contradicting one another, each naming its variables."""
    problems = []
    if settings.kafka_heartbeat_interval_ms >= settings.kafka_session_timeout_ms:
        problems.append(
            f"FLEAD_KAFKA_HEARTBEAT_INTERVAL_MS={settings.kafka_heartbeat_interval_ms} must be lower than "
            f"FLEAD_KAFKA_SESSION_TIMEOUT_MS={settings.kafka_session_timeout_ms} (a third of it or less)"
        )
    if settings.dataset_start > settings.dataset_end:
        problems.append(
            f"FLEAD_DATASET_START={settings.dataset_start} is after FLEAD_DATASET_END={settings.dataset_end}"
        )
    if settings.alert_urls and settings.alerts_webhook_secret is None:
        problems.append(
            "FLEAD_ALERTS_WEBHOOK_URLS is set but FLEAD_ALERTS_WEBHOOK_SECRET is not: every notification "
            "is signed (set a secret shared with the receivers)"
        )
    return problems


def security_problems(settings: Settings) -> list[str]:
    """Contradictory or incomplete Kafka/MongoDB security settings, each naming its variables.

    A setting that would be silently ignored (SASL credentials under a non-SASL protocol, TLS files
    without TLS) is a problem too: it means the deployment is not secured the way its operator thinks.
    """
    problems = []
    protocol = settings.kafka_security_protocol
    sasl = {
        "FLEAD_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "FLEAD_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "FLEAD_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    if protocol.startswith("SASL_"):
        missing = [name for name, value in sasl.items() if not _given(value)]
        if missing:
            problems.append(f"FLEAD_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
    else:
        extra = [name for name, value in sasl.items() if _given(value)]
        if extra:
            problems.append(
                f"{', '.join(extra)} set but FLEAD_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL "
                "(use SASL_SSL or SASL_PLAINTEXT)"
            )
    ssl_files = {
        "FLEAD_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "FLEAD_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "FLEAD_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
    }
    if not protocol.endswith("SSL"):
        extra = [name for name, value in ssl_files.items() if value is not None]
        if extra:
            problems.append(
                f"{', '.join(extra)} set but FLEAD_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                "(use SSL or SASL_SSL)"
            )
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        problems.append("FLEAD_KAFKA_SSL_KEYFILE needs FLEAD_KAFKA_SSL_CERTFILE (the key's certificate)")
    if settings.mongo_tls_ca_file is not None and not settings.mongo_tls:
        problems.append("FLEAD_MONGO_TLS_CA_FILE set but FLEAD_MONGO_TLS is false")
    if _given(settings.mongo_username) != _given(settings.mongo_password):
        problems.append("FLEAD_MONGO_USERNAME and FLEAD_MONGO_PASSWORD go together: set both or neither")
    if _given(settings.mongo_username) and "@" in urlsplit(settings.mongo_uri).netloc:
        problems.append(
            "credentials are given twice: in FLEAD_MONGO_URI and in FLEAD_MONGO_USERNAME; "
            "keep them in FLEAD_MONGO_USERNAME/FLEAD_MONGO_PASSWORD only"
        )
    return problems


def _given(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value != ""


def load_settings(**values: Any) -> Settings:
    """``Settings(**values)``, or one ``SettingsError`` listing every bad variable at once."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, values)) from None


def load_settings_or_exit(**values: Any) -> Settings:
    """``load_settings()`` for a process's entry point: bad settings print one message, then exit 2."""
    try:
        return load_settings(**values)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _explain(exc: ValidationError, values: dict[str, Any]) -> list[str]:
    """One line per bad field (its variable, the value given, what is allowed), then the combinations."""
    lines, seen = [], set()
    for error in exc.errors():
        reason = error.get("ctx", {}).get("error")
        if not error["loc"]:  # the model validator: its problems name their variables themselves
            lines += reason.problems if isinstance(reason, _Problems) else [str(reason or error["msg"])]
            continue
        name = str(error["loc"][0])
        if name in seen or name not in Settings.model_fields:
            continue
        seen.add(name)
        variable, given, source = _given_value(name, values, error.get("input"))
        if _is_secret(name):
            given = "********"
        elif isinstance(given, str):
            given = _mask_url_password(given)
        allowed = str(reason) if error["type"] == "value_error" else _expected(name)
        lines.append(f"{variable}={given!r}{source}: {allowed}")
    return lines


def _given_value(name: str, values: dict[str, Any], fallback: object) -> tuple[str, object, str]:
    """(the variable or argument, the value given, where it was given) of field `name`."""
    if name in values:
        return name, values[name], " (argument)"
    variable = f"{Settings.model_config.get('env_prefix', '')}{name}".upper()
    for key, value in os.environ.items():  # the names are case-insensitive
        if key.upper() == variable:
            return key, value, ""
    env_files = Settings.model_config.get("env_file") or ()
    for env_file in [env_files] if isinstance(env_files, str | os.PathLike) else env_files:
        if Path(env_file).is_file():
            from dotenv import dotenv_values  # a dependency of pydantic-settings

            for key, value in dotenv_values(env_file).items():
                if key.upper() == variable:
                    return key, value, f" (in {env_file})"
    return variable, fallback, ""


def _field_type(name: str) -> Any:
    annotation = Settings.model_fields[name].annotation
    if get_origin(annotation) in (Union, types.UnionType):  # X | None
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _is_secret(name: str) -> bool:
    return _field_type(name) is SecretStr


def _expected(name: str) -> str:
    """What field `name` allows, from its type and bounds."""
    kind = _field_type(name)
    if kind is bool:
        return "expected true or false (also 1/0, yes/no, on/off)"
    if get_origin(kind) is Literal:
        return f"expected one of {', '.join(map(str, get_args(kind)))}"
    if kind is date:
        return "expected a date, YYYY-MM-DD"
    if kind not in (int, float):
        return f"expected {getattr(kind, '__name__', kind)}"
    bounds = {
        bound: getattr(item, bound)
        for item in Settings.model_fields[name].metadata
        for bound in ("ge", "gt", "le", "lt")
        if getattr(item, bound, None) is not None
    }
    what = "an integer" if kind is int else "a finite number"
    if not bounds:
        return f"expected {what}"
    if bounds.keys() == {"ge", "le"}:
        return f"expected {what} from {bounds['ge']} to {bounds['le']}"
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return f"expected {what} " + " and ".join(f"{signs[bound]} {value}" for bound, value in bounds.items())


def _mask_url_password(value: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:********@host`` (anything else unchanged)."""
    if "://" not in value or "@" not in value:
        return value
    parts = urlsplit(value)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return value
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:********@{hosts}"))


def settings_rows(settings: Settings | None = None) -> list[tuple[str, str, str]]:
    """(environment variable, value, description) per field; secrets masked."""
    rows = []
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name) if settings is not None else info.default
        if isinstance(value, SecretStr):
            value = "********"
        elif isinstance(value, str):
            value = _mask_url_password(value)  # a password written into a URI is a secret too
        shown = "" if value is None else str(value)
        rows.append((f"FLEAD_{name.upper()}", shown, info.description or ""))
    return rows


def settings_markdown_table() -> str:
    """The README's configuration table, generated from the fields' defaults and descriptions."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, description in settings_rows():
        lines.append(f"| `{env}` | {f'`{default}`' if default else '(unset)'} | {description} |")
    return "\n".join(lines)
