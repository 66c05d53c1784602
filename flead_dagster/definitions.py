"""The `Definitions` object `dagster dev` loads (see workspace.yaml)."""

from dagster import Definitions

from flead.config import Settings
from flead_dagster.assets import platform_round_trip
from flead_dagster.data_assets import device_registry, labelled_benchmark, raw_intel_lab, readings_lake
from flead_dagster.resources import default_resources

defs = Definitions(
    assets=[platform_round_trip, raw_intel_lab, readings_lake, device_registry, labelled_benchmark],
    resources=default_resources(Settings()),
)
