"""The whole asset graph on a small synthetic fleet: real broker, MongoDB, global API, stream trainer
(started by the supervisor) and Spark; then a two-partition backfill; definitions, schedules."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import date, datetime

import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_schedule_context,
    evaluate_automation_conditions,
    materialize,
)

from flead.config import Settings
from flead.local.services import free_port
from flead.local.supervisor import Supervisor
from flead.storage.mongo import get_database, make_mongo_client
from flead_dagster.asset_metadata import COLUMN_SCHEMA
from flead_dagster.definitions import defs
from flead_dagster.defs.assets import PIPELINE
from flead_dagster.defs.assets.data import readings_lake
from flead_dagster.defs.assets.model import f1_check, global_model_evaluation
from flead_dagster.defs.assets.stream import stream_replay
from flead_dagster.defs.jobs import MAIN_JOB_JOBS
from flead_dagster.defs.resources import FleadResource, default_resources
from flead_dagster.defs.schedules import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    daily_evaluation_schedule,
    global_aggregation_schedule,
    range_tags,
)
from flead_dagster.main_job import MAIN_JOB_TAG, SOURCE_TAG, TRIGGER_TAG, run_main_job

DAYS = [date(2004, 2, 28), date(2004, 2, 29), date(2004, 3, 1)]


def test_definitions_load_and_validate():
    repository = defs.get_repository_def()
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {"stream_replay", "global_model", "global_model_evaluation", "anomaly_report"} <= keys
    assert {"global_aggregation_schedule", "daily_evaluation_schedule"} <= {
        s.name for s in repository.schedule_defs
    }
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "flead_dagster.definitions"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_aggregation_schedule_runs_every_30_minutes_on_global_model():
    assert global_aggregation_schedule.cron_schedule == "*/30 * * * *"
    job = defs.resolve_job_def(global_aggregation_schedule.job_name)
    assert job.asset_layer.executable_asset_keys == {AssetKey("global_model")}


def test_the_report_is_rebuilt_after_a_new_evaluation_partition():
    instance = DagsterInstance.ephemeral()
    quiet = evaluate_automation_conditions(defs=defs, instance=instance)
    assert quiet.total_requested == 0
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key="global_model_evaluation", partition=DAYS[1].isoformat())
    )
    after = evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    assert after.total_requested == 1
    assert after.get_num_requested(AssetKey("anomaly_report")) == 1
    again = evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert again.total_requested == 0  # requested once per new evaluation, not on every tick


def test_f1_check_fails_only_beyond_the_tolerance():
    assert f1_check(0.50, 0.52, 0.05).passed
    assert not f1_check(0.40, 0.52, 0.05).passed
    assert f1_check(0.60, 0.52, 0.0).passed
    unknown = f1_check(None, 0.52, 0.05)
    assert unknown.passed and "no labels" in unknown.metadata["note"].value
    assert f1_check(0.1, None, 0.05).passed


@pytest.fixture
def pipeline_env(services_env, tmp_path, monkeypatch) -> Settings:
    """Private topic, group, database, API and trainer ports, Dagster home; services stopped after."""
    run = uuid.uuid4().hex[:8]
    session_state = Settings().state_dir  # where the session's broker and MongoDB are recorded
    for name, value in {
        "FLEAD_HOME": str(tmp_path / "home"),
        "FLEAD_TOPIC_READINGS": f"pipeline.{run}",
        "FLEAD_CONSUMER_GROUP": f"pipeline-{run}",
        "FLEAD_MONGO_DB": f"pipeline_{run}",
        "FLEAD_API_URL": f"http://127.0.0.1:{free_port()}",
        "FLEAD_TRAINER_HEALTH_PORT": str(free_port()),
        "FLEAD_TRAINER_PUSH_EVERY": "512",
        "FLEAD_SPARK_MASTER": "local[1]",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEAD_STATE_DIR", str(session_state))
    settings = Settings()
    yield settings
    Supervisor(settings, log_dir=tmp_path / "dagster" / "flead" / "logs").stop_all()


def test_main_job_then_a_two_day_backfill(pipeline_env: Settings):
    settings = pipeline_env
    steps: list[str] = []
    result = run_main_job(
        settings, days=3, source="synthetic", synthetic_devices=6, on_step=lambda _i, name: steps.append(name)
    )
    assert result.days == DAYS and result.source == "synthetic"
    lake = pl.read_parquet(f"{settings.lake_dir}/date=*/part-0.parquet")
    assert result.readings == lake.height > 0
    assert result.version >= 1, "the trainer's updates were aggregated into a new global version"
    assert result.report is not None and result.report.is_file()

    # Every step ran as its named job, tagged with the trigger, the source and the main job's id.
    runs = DagsterInstance.get().get_runs(filters=RunsFilter(tags={MAIN_JOB_TAG: result.main_job_id}))
    assert sorted(r.job_name for r in runs) == sorted(job.name for job in MAIN_JOB_JOBS)
    assert {r.run_id for r in runs} == set(result.runs.values())
    for run in runs:
        assert run.status == DagsterRunStatus.SUCCESS, run.job_name
        assert (run.tags[TRIGGER_TAG], run.tags[SOURCE_TAG]) == ("demo", "synthetic"), run.job_name
    evaluation = next(r for r in runs if r.job_name == "evaluation_job")
    assert evaluation.tags["flead/spark"] == "evaluation"  # the job's own tag, beside the run's
    assert evaluation.tags[RANGE_START_TAG] == DAYS[0].isoformat()

    # The column schemas the lake and evaluation assets declare are the files' columns.
    declared = {
        node.key.to_user_string(): [c.name for c in node.metadata[COLUMN_SCHEMA].value.columns]
        for node in defs.get_repository_def().asset_graph.asset_nodes
        if COLUMN_SCHEMA in node.metadata
    }
    day = f"date={DAYS[0]}/part-0.parquet"
    assert declared == {
        "readings_lake": pl.read_parquet(settings.lake_dir / day).columns,
        "labelled_benchmark": pl.read_parquet(settings.labelled_dir / day).columns,
        "global_model_evaluation": pl.read_parquet(
            settings.evaluations_dir / f"version={result.version}" / day
        ).columns,
    }

    client = make_mongo_client(settings)
    db = get_database(client, settings)
    try:
        # The trainer saw every replayed reading, per device.
        counts = {d["_id"]: d for d in db[settings.collection_devices].find()}
        per_device = dict(lake.group_by("device_id").len().iter_rows())
        assert {k: v["readings"] for k, v in counts.items()} == per_device
        evaluations = list(db[settings.collection_evaluations].find({"version": result.version}))
        assert sorted(e["_id"] for e in evaluations) == [f"v{result.version}:{d}" for d in DAYS]
    finally:
        client.close()
    scored = pl.read_parquet(f"{settings.evaluations_dir}/version={result.version}/date=*/part-0.parquet")
    # Scored on the labelled benchmark: the lake with injected anomalies (dropouts remove readings).
    labelled = pl.read_parquet(f"{settings.labelled_dir}/date=*/part-0.parquet")
    assert scored.height == labelled.height and scored["label"].null_count() == 0
    assert result.f1 is not None and 0.0 <= result.f1 <= 1.0  # the labelled benchmark covers the days

    # A two-day backfill of lake -> replay -> evaluation rematerialises exactly those partitions.
    instance = DagsterInstance.get()
    before = _materialized_counts(instance, ["readings_lake", "stream_replay", "global_model_evaluation"])
    untouched = settings.evaluations_dir / f"version={result.version}" / f"date={DAYS[0]}" / "part-0.parquet"
    mtime = untouched.stat().st_mtime_ns
    backfill = materialize(
        PIPELINE,
        selection=[readings_lake, stream_replay, global_model_evaluation],
        instance=instance,
        resources=default_resources(settings),
        tags=range_tags(DAYS[1].isoformat(), DAYS[2].isoformat()),
    )
    assert backfill.success
    after = _materialized_counts(instance, ["readings_lake", "stream_replay", "global_model_evaluation"])
    for asset, counts_before in before.items():
        grown = {key for key in after[asset] if after[asset][key] != counts_before.get(key, 0)}
        assert grown == {DAYS[1].isoformat(), DAYS[2].isoformat()}, asset
    assert untouched.stat().st_mtime_ns == mtime
    replayed = backfill.asset_materializations_for_node("stream_replay")[0].metadata["readings"].value
    assert replayed == lake.filter(pl.col("ts").dt.date().is_in(DAYS[1:])).height


def test_daily_evaluation_schedule_requests_one_run_over_the_lake(pipeline_env: Settings):
    context = build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 28, 3, 0), resources={"flead": FleadResource()}
    )
    skipped = daily_evaluation_schedule(context)
    assert "no day" in skipped.skip_message
    for day in DAYS[:2]:
        folder = pipeline_env.lake_dir / f"date={day}"
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"")
    request = daily_evaluation_schedule(context)
    assert request.tags[RANGE_START_TAG] == DAYS[0].isoformat()
    assert request.tags[RANGE_END_TAG] == DAYS[1].isoformat()
    assert request.run_key == "evaluation-2026-11-28"


def _materialized_counts(instance: DagsterInstance, assets: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for asset in assets:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=1000)
        per_partition: dict[str, int] = {}
        for record in records.records:
            partition = record.asset_materialization.partition
            per_partition[partition] = per_partition.get(partition, 0) + 1
        counts[asset] = per_partition
    return counts
