"""The `Definitions` object `dagster dev` loads (see workspace.yaml)."""

from dagster import Definitions

from flead.config import Settings
from flead_dagster.assets import platform_round_trip
from flead_dagster.resources import default_resources

defs = Definitions(assets=[platform_round_trip], resources=default_resources(Settings()))
