"""The README's main job: local services, the long-running services, then the whole asset graph.

Every step is a Dagster run of a named job (`flead_dagster.defs.jobs`) in the instance at ``DAGSTER_HOME``
(default ``<FLEAD_HOME>/dagster``), so `flead up` (``dagster dev``) shows them afterwards, tagged
``flead/trigger`` (``demo`` for `flead demo`), ``flead/source`` (the source asked for: auto, download,
path or synthetic) and ``flead/main_job`` (one id for all the runs of one main job, to filter by).
"""

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, JobDefinition

from flead.config import Settings
from flead.local.services import LocalServices
from flead.local.supervisor import Outcome, State, Supervisor
from flead_dagster.defs.assets import PIPELINE
from flead_dagster.defs.jobs import (
    MAIN_JOB_JOBS,
    benchmark_job,
    evaluation_job,
    global_model_job,
    lake_job,
    raw_data_job,
    replay_job,
    report_job,
)
from flead_dagster.defs.partitions import DAILY
from flead_dagster.defs.resources import default_resources
from flead_dagster.defs.schedules import range_tags

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TRIGGER_TAG = "flead/trigger"
SOURCE_TAG = "flead/source"
MAIN_JOB_TAG = "flead/main_job"
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


class MainJobError(RuntimeError):
    """A step's Dagster run failed; the message names the job and the run (its log is in the UI)."""


@dataclass
class MainJobResult:
    source: str
    note: str
    days: list[date]
    readings: int = 0  # replayed, and trained on: the job fails otherwise
    version: int = -1
    f1: float | None = None
    alarms: int = 0
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    main_job_id: str = ""  # the flead/main_job tag of its runs
    runs: dict[str, str] = field(default_factory=dict)  # job name -> run id


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
    trigger: str = "demo",
    quiet: dict | None = None,
    capture_output: bool = True,
) -> MainJobResult:
    """Run every step; `days` None means every day of the data set. A synthetic fleet (the fallback
    offline) has `synthetic_devices` devices; `path` is the data of source "path" (a data.txt(.gz) or
    a folder of Node*.txt files). `trigger` is the runs' ``flead/trigger`` tag; `quiet` the runs'
    logger config (default: Dagster's console logger at WARNING). `capture_output` False keeps the
    steps' stdout and stderr out of the runs' compute logs (see `_instance`)."""
    timings: dict[str, float] = {}
    main_job_id = uuid.uuid4().hex[:12]
    runs: dict[str, str] = {}
    steps = iter(enumerate(STEPS))

    @contextmanager
    def step() -> Iterator[None]:
        """The next of STEPS: announced, timed."""
        index, name = next(steps)
        on_step(index, name)
        started = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - started, 2)

    with step():
        LocalServices(settings).up()

    with step():
        home = dagster_home(settings)
        instance = _instance(home, capture_output)
        with Supervisor(settings, log_dir=home / "flead" / "logs") as supervisor:
            for service in supervisor.wanted():
                ensure_healthy(supervisor, service)
    # The jobs bound to this call's settings (`definitions.defs` reads the environment's at each use).
    defs = Definitions(assets=PIPELINE, jobs=list(MAIN_JOB_JOBS), resources=default_resources(settings))
    tags = {TRIGGER_TAG: trigger, SOURCE_TAG: source, MAIN_JOB_TAG: main_job_id}

    def run(job: JobDefinition, partitions: list[date] | None = None, run_config: dict | None = None):
        days = range_tags(partitions[0].isoformat(), partitions[-1].isoformat()) if partitions else {}
        run_id = runs[job.name] = str(uuid.uuid4())
        try:
            return defs.resolve_job_def(job.name).execute_in_process(
                instance=instance,
                run_id=run_id,
                tags={**tags, **days},
                run_config={**(QUIET if quiet is None else quiet), **(run_config or {})},
            )
        except Exception as exc:
            raise MainJobError(f"{job.name} failed (run {run_id}): {type(exc).__name__}: {exc}") from exc

    with step():
        synthetic = {
            "n_devices": synthetic_devices,
            "days": days or (settings.dataset_end - settings.dataset_start).days + 1,
        }
        raw_config = {"source": source, **synthetic, **({"path": str(path)} if path else {})}
        raw = run(raw_data_job, run_config={"ops": {"raw_intel_lab": {"config": raw_config}}})
        staged = _metadata(raw, "raw_intel_lab")
        first, last = (date.fromisoformat(staged[k]) for k in ("first_day", "last_day"))
        chosen = _choose_days(first, last, days)
        result = MainJobResult(staged["source"], "" if staged["note"] == "-" else staged["note"], chosen)
        result.main_job_id, result.runs = main_job_id, runs

    with step():
        run(lake_job, chosen)

    with step():
        window = {"start": chosen[0].isoformat(), "end": chosen[-1].isoformat()}
        run(benchmark_job, run_config={"ops": {"labelled_benchmark": {"config": window}}})

    with step():  # fails when the trainer does not train every replayed reading
        replayed = _metadata(run(replay_job, chosen), "stream_replay")
        if replayed["trained"] != replayed["readings"]:
            raise RuntimeError(
                f"{replayed['readings']:,} readings replayed but {replayed['trained']:,} trained"
            )
        result.readings = replayed["trained"]

    with step():
        result.version = _metadata(run(global_model_job), "global_model")["version"]

    with step():
        evaluated = _metadata(run(evaluation_job, chosen), "global_model_evaluation")
        result.f1 = None if math.isnan(evaluated["f1"]) else evaluated["f1"]  # NaN: no labels
        result.alarms = evaluated["alarms"]

    with step():
        result.report = Path(_metadata(run(report_job), "anomaly_report")["path"])
    result.seconds = timings
    return result


def _instance(home: Path, capture_output: bool) -> DagsterInstance:
    """The Dagster instance at `home`. Without `capture_output` its compute log manager is the no-op
    one: Dagster's local one mirrors each step's output through a ``tail`` and a watcher process of
    ours, and a terminal's Ctrl-C reaches those too, which then print their own tracebacks."""
    if capture_output:
        return DagsterInstance.get()
    from dagster._core.instance.ref import InstanceRef  # the documented dagster.yaml, one key overridden

    noop = {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides={"compute_logs": noop}))


def _metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The metadata values of `asset`'s materialization in a run (a run over a partition range has one
    per partition, all with the same metadata)."""
    event = result.asset_materializations_for_node(asset)[0]
    return {key: value.value for key, value in event.metadata.items()}


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
