"""The one settings object. Every host, port, topic, collection and directory comes from here.

Values come from (highest first): constructor arguments, environment variables prefixed
``FLEAD_`` (e.g. ``FLEAD_KAFKA_BOOTSTRAP_SERVERS``), a ``.env`` file in the working directory,
and the defaults below, which point at the embedded local services (`flead local up`).
"""

from __future__ import annotations

from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flead.fleet import FleetSchema, load_fleet


class Address(tuple):
    """A (host, port) pair parsed from a URL or a ``host:port`` string."""

    @classmethod
    def parse(cls, value: str) -> Address:
        parts = urlsplit(value if "//" in value else f"//{value}")
        if not parts.hostname or not parts.port:
            raise ValueError(f"expected host:port, got {value!r}")
        return cls((parts.hostname, parts.port))

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEAD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
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
        description="The fleet's sensors: a preset (intel_lab, nasa_smap_msl) or a TOML schema file.",
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

    # Stream trainer
    trainer_max_poll_records: int = Field(5000, ge=1, description="Records the trainer takes per poll.")
    trainer_checkpoint_records: int = Field(
        20000, ge=1, description="Records between the trainer's checkpoints."
    )
    trainer_checkpoint_seconds: float = Field(
        10.0, gt=0, description="Seconds between the trainer's checkpoints."
    )
    trainer_push_every: int = Field(1024, ge=1, description="Samples a device learns between local updates.")
    trainer_allowed_lateness_s: float = Field(
        300.0, ge=0, description="Event-time lateness after which a reading goes to the late side output."
    )
    trainer_max_future_s: float = Field(
        300.0,
        ge=0,
        description="How far ahead of the trainer's clock a reading's time may be; later ones go to the DLQ.",
    )
    trainer_health_port: int = Field(
        8081, ge=0, le=65535, description="Port of the trainer's /health endpoint."
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

    # Orchestration (Dagster sensors, schedules and checks)
    dagster_host: str = Field("127.0.0.1", description="Host `flead up` serves the Dagster UI on.")
    dagster_port: int = Field(3000, ge=1, le=65535, description="Port `flead up` serves the Dagster UI on.")
    supervise_trainer: bool = Field(
        True, description="Whether the Dagster sensor keeps a stream trainer running."
    )
    supervise_api: bool = Field(True, description="Whether the Dagster sensor keeps the global API running.")
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
        for server in value.split(","):
            Address.parse(server.strip())
        return value

    @field_validator("fleet_schema")
    @classmethod
    def _check_fleet_schema(cls, value: str) -> str:
        load_fleet(value)  # a FleetSchemaError (a ValueError) says what is wrong with the file
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _check_mongo_uri(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(f"must start with mongodb:// or mongodb+srv://, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        problems = security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
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
