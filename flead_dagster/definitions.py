"""The `Definitions` object `dagster dev` loads (see workspace.yaml)."""

from dagster import Definitions

from flead.config import load_settings
from flead_dagster.assets import platform_round_trip
from flead_dagster.jobs import MAIN_JOB_JOBS
from flead_dagster.pipeline_assets import PIPELINE
from flead_dagster.resources import default_resources
from flead_dagster.schedules import report_automation_sensor, schedules
from flead_dagster.sensors import sensors, service_assets

defs = Definitions(
    assets=[platform_round_trip, *PIPELINE, *service_assets],
    jobs=list(MAIN_JOB_JOBS),
    schedules=schedules,
    sensors=[*sensors, report_automation_sensor],
    resources=default_resources(load_settings()),
)
