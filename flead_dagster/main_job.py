"""The README's main job: local services, the long-running services, then the whole asset graph.

Every step is a Dagster run in the instance at ``DAGSTER_HOME`` (default ``<FLEAD_HOME>/dagster``), so
`flead up` (``dagster dev``) shows them afterwards.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from dagster import DagsterInstance, materialize

from flead.config import Settings
from flead.local.services import LocalServices
from flead.local.supervisor import SERVICES, Outcome, State, Supervisor
from flead_dagster.data_assets import DAILY, device_registry, labelled_benchmark, raw_intel_lab, readings_lake
from flead_dagster.pipeline_assets import (
    PIPELINE,
    anomaly_report,
    global_model,
    global_model_evaluation,
    stream_replay,
)
from flead_dagster.resources import default_resources
from flead_dagster.schedules import range_tags

DATASET_START, DATASET_END = Settings().dataset_start, Settings().dataset_end
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
STEPS = (
    "local services",
    "global API and stream trainer",
    "data set",
    "lake",
    "device registry and labelled benchmark",
    "replay -> stream trainer",
    "global model",
    "Spark evaluation",
    "report",
)


@dataclass
class MainJobResult:
    source: str
    note: str
    days: list[date]
    readings: int = 0
    version: int = -1
    f1: float | None = None
    alarms: int = 0
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def dagster_home(settings: Settings) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or Path(settings.home) / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():  # local storage in DAGSTER_HOME (the default), no telemetry
        instance_yaml.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_main_job(
    settings: Settings,
    *,
    days: int | None = 3,
    source: str = "auto",
    synthetic_devices: int = 54,
    path: Path | None = None,
    on_step: Callable[[int, str], None] = lambda _i, _name: None,
) -> MainJobResult:
    """Run every step; `days` None means every day of the data set. A synthetic fleet (the fallback
    offline) has `synthetic_devices` devices; `path` is the data of source "path" (a data.txt(.gz) or
    a folder of Node*.txt files)."""
    timings: dict[str, float] = {}
    step = iter(enumerate(STEPS))

    def begin() -> str:
        index, name = next(step)
        on_step(index, name)
        timings[name] = time.perf_counter()
        return name

    def end(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 2)

    name = begin()
    LocalServices(settings).up()
    end(name)

    name = begin()
    home = dagster_home(settings)
    instance = DagsterInstance.get()
    supervisor = Supervisor(settings, log_dir=home / "flead" / "logs")
    for service in SERVICES:
        ensure_healthy(supervisor, service)
    end(name)
    resources = default_resources(settings)

    def run(selection, partitions: list[date] | None = None, run_config: dict | None = None):
        tags = range_tags(partitions[0].isoformat(), partitions[-1].isoformat()) if partitions else None
        return materialize(
            PIPELINE,
            selection=selection,
            instance=instance,
            resources=resources,
            tags=tags,
            run_config={**QUIET, **(run_config or {})},
        )

    name = begin()
    synthetic = {"n_devices": synthetic_devices, "days": days or (DATASET_END - DATASET_START).days + 1}
    raw_config = {"source": source, **synthetic, **({"path": str(path)} if path else {})}
    raw = run([raw_intel_lab], run_config={"ops": {"raw_intel_lab": {"config": raw_config}}})
    metadata = raw.asset_materializations_for_node("raw_intel_lab")[0].metadata
    first, last = (date.fromisoformat(metadata[k].value) for k in ("first_day", "last_day"))
    chosen = _choose_days(first, last, days)
    note = metadata["note"].value
    result = MainJobResult(metadata["source"].value, "" if note == "-" else note, chosen)
    end(name)

    name = begin()
    run([readings_lake], chosen)
    end(name)

    name = begin()
    window = {"start": chosen[0].isoformat(), "end": chosen[-1].isoformat()}
    run([device_registry, labelled_benchmark], run_config={"ops": {"labelled_benchmark": {"config": window}}})
    end(name)

    name = begin()
    replayed = run([stream_replay], chosen)
    result.readings = int(
        replayed.asset_materializations_for_node("stream_replay")[0].metadata["readings"].value
    )
    end(name)

    name = begin()
    model = run([global_model])
    result.version = int(model.asset_materializations_for_node("global_model")[0].metadata["version"].value)
    end(name)

    name = begin()
    evaluation = run([global_model_evaluation], chosen)
    evaluated = evaluation.asset_materializations_for_node("global_model_evaluation")[0].metadata
    f1 = evaluated["f1"].value
    result.f1 = None if f1 != f1 else float(f1)  # NaN: no labels
    result.alarms = int(evaluated["alarms"].value)
    end(name)

    name = begin()
    report = run([anomaly_report])
    result.report = Path(report.asset_materializations_for_node("anomaly_report")[0].metadata["path"].value)
    end(name)
    result.seconds = timings
    return result


def ensure_healthy(supervisor: Supervisor, service: str, timeout_s: float = 90.0) -> None:
    """Start `service` if needed and wait until it answers healthy (each call waits up to 15 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = supervisor.ensure_running(service, enabled=True)
        if result.status.state is State.HEALTHY:
            return
        if result.outcome is Outcome.FAILED or time.monotonic() > deadline:
            raise RuntimeError(
                f"{service} is {result.status.state}: {result.status.detail} (log: {result.status.log_file})"
            )


def _choose_days(first: date, last: date, days: int | None) -> list[date]:
    keys = set(DAILY.get_partition_keys())
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    chosen = [d for d in span if d.isoformat() in keys]
    if not chosen:
        raise RuntimeError(
            f"the data set's days {first}..{last} lie outside the partitions {min(keys)}..{max(keys)}"
        )
    return chosen if days is None else chosen[:days]
