"""Sensors that keep the long-running services alive and request aggregations when updates pile up.

* ``stream_trainer_sensor``, ``global_api_sensor`` and ``notifier_sensor`` start the service when it
  is down and restart a dead or hung one they started (``flead.local.supervisor``), then record its
  state as an ``AssetObservation`` of the observable assets ``stream_trainer`` / ``global_api`` /
  ``notifier`` (``service_assets``). ``FLEAD_SUPERVISE_TRAINER`` / ``_API`` / ``_NOTIFIER`` switch this
  off; the notifier runs only with ``FLEAD_ALERTS_WEBHOOK_URLS`` set.
  Started services log to ``$DAGSTER_HOME/flead/logs``.
* ``pending_updates_sensor`` requests ``global_model_job`` once ``FLEAD_PENDING_UPDATES_TRIGGER``
  local updates are pending, once per new batch (the run key is the newest pending update).

Settings are read at every tick (``flead.config.Settings``), so a changed environment applies at once.
"""

from __future__ import annotations

import hashlib

from dagster import (
    AssetObservation,
    AssetSpec,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from flead.config import Settings
from flead.local.supervisor import API, NOTIFIER, TRAINER, EnsureResult, Supervisor, dagster_log_dir
from flead.storage.mongo import make_mongo_client
from flead_dagster.asset_metadata import OWNERS
from flead_dagster.jobs import global_model_job
from services.global_api.update_store import UpdateStatus, UpdateStore

SERVICE_INTERVAL_S = 30
PENDING_INTERVAL_S = 30

service_assets = [
    AssetSpec(
        TRAINER,
        group_name="services",
        kinds={"python", "kafka"},
        owners=OWNERS,
        code_version="1",
        description=(
            "The stream trainer (`flead trainer run`): consumes the readings topic, trains one detector "
            "per device, scores every reading and federates through the global API. Observed by "
            "`stream_trainer_sensor`, which keeps it running."
        ),
    ),
    AssetSpec(
        API,
        group_name="services",
        kinds={"python", "fastapi"},
        owners=OWNERS,
        code_version="1",
        description=(
            "The global model API (`flead api run`): receives local updates, aggregates them and serves "
            "every global model version. Observed by `global_api_sensor`, which keeps it running."
        ),
    ),
    AssetSpec(
        NOTIFIER,
        group_name="services",
        kinds={"python", "mongodb"},
        owners=OWNERS,
        code_version="1",
        description=(
            "The notifier (`flead alerts run`): follows the anomaly events and delivers signed webhook "
            "notifications through a MongoDB outbox (FLEAD_ALERTS_*). Observed by `notifier_sensor`, "
            "which keeps it running while webhook URLs are set."
        ),
    ),
]


def observation_metadata(result: EnsureResult) -> dict[str, object]:
    status = result.status
    metadata: dict[str, object] = {
        "state": str(status.state),
        "outcome": str(result.outcome),
        "pid": status.pid,
        "previous_pid": result.previous_pid,
        "supervised": status.supervised,
        "detail": status.detail,
        "log_file": MetadataValue.path(str(status.log_file)),
    }
    for key, value in status.info.items():
        if isinstance(value, bool | int | float | str) or value is None:
            metadata[key] = value
    return metadata


def supervise(context: SensorEvaluationContext, name: str, enabled: bool, settings: Settings) -> SensorResult:
    """One tick for one service: keep it running, log and observe its state."""
    with Supervisor(settings, log_dir=dagster_log_dir()) as supervisor:
        result = supervisor.ensure_running(name, enabled=enabled)
    status = result.status
    context.log.info(
        f"{name}: {result.outcome} -> {status.state} (PID {status.pid or '-'}): {status.detail}; "
        f"log {status.log_file}"
    )
    return SensorResult(
        asset_events=[AssetObservation(asset_key=name, metadata=observation_metadata(result))]
    )


def service_sensor(name: str, switch: str, what: str) -> SensorDefinition:
    """The sensor ``<name>_sensor`` that keeps service `name` running while the setting `switch`
    (``FLEAD_<SWITCH>``) is true, and observes its health."""

    @sensor(
        name=f"{name}_sensor",
        minimum_interval_seconds=SERVICE_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps {what} running (FLEAD_{switch.upper()}) and observes its health.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult:
        settings = Settings()
        return supervise(context, name, getattr(settings, switch), settings)

    return _sensor


stream_trainer_sensor = service_sensor(TRAINER, "supervise_trainer", "a stream trainer")
global_api_sensor = service_sensor(API, "supervise_api", "the global model API")
notifier_sensor = service_sensor(NOTIFIER, "supervise_notifier", "the webhook notifier")


def pending_updates(settings: Settings) -> tuple[int, dict | None]:
    """How many local updates are pending, and the newest of them (None when there is none)."""
    client = make_mongo_client(settings)
    try:
        collection = client[settings.mongo_db][settings.collection_local_updates]
        count = UpdateStore(collection).pending_count()
        newest = collection.find_one(
            {"status": str(UpdateStatus.PENDING)},
            projection={"_id": 1, "received_at": 1},
            sort=[("received_at", DESCENDING), ("_id", DESCENDING)],
        )
    finally:
        client.close()
    return count, newest


def pending_run_key(newest: dict) -> str:
    """Changes only when a newer update arrives (an update id is never stored twice)."""
    digest = hashlib.sha256(str(newest["_id"]).encode()).hexdigest()[:16]
    received = newest.get("received_at")
    stamp = received.isoformat() if received is not None else "-"
    return f"pending-{stamp}-{digest}"


@sensor(
    name="pending_updates_sensor",
    job=global_model_job,
    minimum_interval_seconds=PENDING_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests a global_model run when FLEAD_PENDING_UPDATES_TRIGGER local updates are pending.",
)
def pending_updates_sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    settings = Settings()
    try:
        count, newest = pending_updates(settings)
    except PyMongoError as exc:
        return SkipReason(f"MongoDB unreachable ({type(exc).__name__}): pending updates not counted")
    trigger = settings.pending_updates_trigger
    if count < trigger or newest is None:
        return SkipReason(f"{count} pending local update(s); a global_model run needs {trigger}")
    run_key = pending_run_key(newest)
    context.log.info(f"{count} pending local updates (trigger {trigger}): requesting global_model_job")
    return RunRequest(run_key=run_key, tags={"flead/pending_updates": str(count)})


sensors = [stream_trainer_sensor, global_api_sensor, notifier_sensor, pending_updates_sensor]
