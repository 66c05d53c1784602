"""Sensors that keep the long-running services alive and request aggregations when updates pile up.

* ``stream_trainer_sensor``, ``global_api_sensor`` and ``notifier_sensor`` start the service when it
  is down and restart a dead or hung one they started (``flead.local.supervisor``), then record its
  state as an ``AssetObservation`` of the observable assets ``stream_trainer`` / ``global_api`` /
  ``notifier`` (``flead_dagster.defs.assets.services``). ``FLEAD_SUPERVISE_TRAINER`` / ``_API`` /
  ``_NOTIFIER`` switch this off; the notifier runs only with ``FLEAD_ALERTS_WEBHOOK_URLS`` set.
  Started services log to ``$DAGSTER_HOME/flead/logs``.
* ``pending_updates_sensor`` requests ``global_model_job`` once ``FLEAD_PENDING_UPDATES_TRIGGER``
  local updates are pending, once per new batch (the run key is the newest pending update); it asks
  the global API (``GET /api/updates/pending``).

Settings come from the ``flead`` resource, read at every tick, so a changed environment applies at once.
"""

from __future__ import annotations

import hashlib

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from flead.api_client import ApiError, PendingUpdates
from flead.config import Settings
from flead.local.supervisor import API, NOTIFIER, TRAINER, EnsureResult, Supervisor, dagster_log_dir
from flead_dagster.defs.jobs import global_model_job
from flead_dagster.defs.resources import FleadResource

SERVICE_INTERVAL_S = 30
PENDING_INTERVAL_S = 30


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
    def _sensor(context: SensorEvaluationContext, flead: FleadResource) -> SensorResult:
        settings = flead.settings()
        return supervise(context, name, getattr(settings, switch), settings)

    return _sensor


stream_trainer_sensor = service_sensor(TRAINER, "supervise_trainer", "a stream trainer")
global_api_sensor = service_sensor(API, "supervise_api", "the global model API")
notifier_sensor = service_sensor(NOTIFIER, "supervise_notifier", "the webhook notifier")


def pending_run_key(pending: PendingUpdates) -> str:
    """Changes only when a newer update arrives (an update id is never stored twice)."""
    digest = hashlib.sha256(str(pending.newest_id).encode()).hexdigest()[:16]
    return f"pending-{pending.newest_received_at or '-'}-{digest}"


@sensor(
    name="pending_updates_sensor",
    job=global_model_job,
    minimum_interval_seconds=PENDING_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests a global_model run when FLEAD_PENDING_UPDATES_TRIGGER local updates are pending.",
)
def pending_updates_sensor(context: SensorEvaluationContext, flead: FleadResource) -> RunRequest | SkipReason:
    settings = flead.settings()
    try:
        pending = flead.api_client(settings).pending_updates()
    except ApiError as exc:
        return SkipReason(f"global API unanswered ({exc}): pending updates not counted")
    count, trigger = pending.count, settings.pending_updates_trigger
    if count < trigger or pending.newest_id is None:
        return SkipReason(f"{count} pending local update(s); a global_model run needs {trigger}")
    run_key = pending_run_key(pending)
    context.log.info(f"{count} pending local updates (trigger {trigger}): requesting global_model_job")
    return RunRequest(run_key=run_key, tags={"flead/pending_updates": str(count)})


sensors = [stream_trainer_sensor, global_api_sensor, notifier_sensor, pending_updates_sensor]
