"""The 30-minute aggregation, the daily evaluation of the latest global model over the whole lake, and
the automation that rebuilds the report after an evaluation."""

from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from flead.datasets import lake
from flead_dagster.defs.jobs import evaluation_job, global_model_job
from flead_dagster.defs.partitions import DAILY
from flead_dagster.defs.resources import FleadResource

# A run over a partition range (what a single-run backfill launches).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

global_aggregation_schedule = ScheduleDefinition(
    name="global_aggregation_schedule",
    job=global_model_job,
    cron_schedule="*/30 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Aggregate pending local updates into a new global model version every 30 minutes.",
)


def range_tags(first: str, last: str) -> dict[str, str]:
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


@schedule(
    name="daily_evaluation_schedule",
    job=evaluation_job,
    cron_schedule="0 3 * * *",
    description="Every night: evaluate the latest global model over every day the lake holds, in one run.",
)
def daily_evaluation_schedule(context: ScheduleEvaluationContext, flead: FleadResource):
    keys = set(DAILY.get_partition_keys())
    lake_dir = Path(flead.settings().lake_dir)
    days = [d.isoformat() for d in lake.list_partitions(lake_dir) if d.isoformat() in keys]
    if not days:
        return SkipReason("the lake holds no day yet")
    return RunRequest(
        run_key=f"evaluation-{context.scheduled_execution_time:%Y-%m-%d}", tags=range_tags(days[0], days[-1])
    )


schedules = [global_aggregation_schedule, daily_evaluation_schedule]

report_automation_sensor = AutomationConditionSensorDefinition(
    "report_automation_sensor",
    target=AssetSelection.assets("anomaly_report"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Rebuilds anomaly_report after a new global_model_evaluation (its automation condition).",
)
