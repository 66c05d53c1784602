"""What the definitions' shape depends on, read once when they load: the data set's days (the daily
partitions) and the fleet schema (the lake's column metadata). Bad settings fail here, at load, with
one clear `SettingsError`; at run time assets read their settings through the ``flead`` resource."""

from datetime import date, timedelta

from dagster import AssetExecutionContext, DailyPartitionsDefinition

from flead.config import load_settings

LOAD_SETTINGS = load_settings()
DAILY = DailyPartitionsDefinition(
    start_date=LOAD_SETTINGS.dataset_start.isoformat(),
    # exclusive: dataset_end is the last day
    end_date=(LOAD_SETTINGS.dataset_end + timedelta(days=1)).isoformat(),
)
FLEET = LOAD_SETTINGS.fleet


def partition_days(context: AssetExecutionContext) -> list[date]:
    """The days of a run's partition (range)."""
    return [date.fromisoformat(key) for key in context.partition_keys]
