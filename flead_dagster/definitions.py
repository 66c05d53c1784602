"""The `Definitions` object `dagster dev` loads (see workspace.yaml)."""

from dagster import Definitions

from flead.config import Settings
from flead_dagster.assets import platform_round_trip
from flead_dagster.data_assets import device_registry, labelled_benchmark, raw_intel_lab, readings_lake
from flead_dagster.jobs import evaluation_job, global_model_job
from flead_dagster.pipeline_assets import anomaly_report, global_model, global_model_evaluation, stream_replay
from flead_dagster.resources import default_resources
from flead_dagster.schedules import report_automation_sensor, schedules
from flead_dagster.sensors import sensors, service_assets

defs = Definitions(
    assets=[
        platform_round_trip,
        raw_intel_lab,
        readings_lake,
        device_registry,
        labelled_benchmark,
        stream_replay,
        global_model,
        global_model_evaluation,
        anomaly_report,
        *service_assets,
    ],
    jobs=[global_model_job, evaluation_job],
    schedules=schedules,
    sensors=[*sensors, report_automation_sensor],
    resources=default_resources(Settings()),
)
