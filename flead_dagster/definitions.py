"""The code location's `Definitions` (`dagster dev -m flead_dagster.definitions`, workspace.yaml), built
from `flead_dagster.defs`. Its ``flead`` resource reads the environment at each use."""

from dagster import Definitions

from flead_dagster.defs.assets import PIPELINE
from flead_dagster.defs.assets.platform import platform_round_trip
from flead_dagster.defs.assets.services import service_assets
from flead_dagster.defs.jobs import MAIN_JOB_JOBS
from flead_dagster.defs.partitions import LOAD_SETTINGS
from flead_dagster.defs.resources import default_resources
from flead_dagster.defs.schedules import report_automation_sensor, schedules
from flead_dagster.defs.sensors import sensors

defs = Definitions(
    assets=[platform_round_trip, *PIPELINE, *service_assets],
    jobs=list(MAIN_JOB_JOBS),
    schedules=schedules,
    sensors=[*sensors, report_automation_sensor],
    resources=default_resources(LOAD_SETTINGS, pinned=False),
)
