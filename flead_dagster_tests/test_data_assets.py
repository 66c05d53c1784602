"""The data-set assets materialised with real Dagster, on a small synthetic fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, PartitionKeyRange, materialize

from flead.datasets import lake
from flead.fleet import INTEL_LAB
from flead.schema import LAKE_SCHEMA
from flead_dagster.definitions import defs
from flead_dagster.defs.assets.data import (
    device_registry,
    labelled_benchmark,
    lake_checks,
    raw_intel_lab,
    readings_lake,
)
from flead_dagster.defs.partitions import DAILY
from flead_dagster.defs.resources import FleadResource

ASSETS = [raw_intel_lab, readings_lake, device_registry, labelled_benchmark]
SYNTHETIC = {
    "ops": {"raw_intel_lab": {"config": {"source": "synthetic", "n_devices": 6, "days": 4, "seed": 2}}}
}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def at(home: Path) -> dict[str, FleadResource]:
    """The assets' resources with their FLEAD home (the rest of the settings from the environment)."""
    return {"flead": FleadResource(overrides={"home": str(home)})}


def test_daily_partitions_span_the_data_set():
    keys = DAILY.get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2004-02-28", "2004-04-05", 38)
    assert defs.resolve_assets_def("readings_lake").partitions_def == DAILY


def test_two_partitions_materialise_with_their_checks(home):
    instance = DagsterInstance.ephemeral()
    assert materialize([raw_intel_lab], instance=instance, run_config=SYNTHETIC, resources=at(home)).success
    for key in ("2004-02-28", "2004-02-29"):
        result = materialize(
            ASSETS, selection=[readings_lake], partition_key=key, instance=instance, resources=at(home)
        )
        assert result.success
        metadata = result.asset_materializations_for_node("readings_lake")[0].metadata
        day_file = lake.partition_path(home / "lake", datetime.fromisoformat(key).date())
        assert metadata["rows"].value == pl.read_parquet(day_file).height > 0
        assert metadata["devices"].value == 6
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"schema": True, "unique_device_epoch": True, "flag_rates": True}
    assert instance.get_materialized_partitions(AssetKey("readings_lake")) == {"2004-02-28", "2004-02-29"}

    downstream = materialize(
        ASSETS, selection=[device_registry, labelled_benchmark], instance=instance, resources=at(home)
    )
    assert downstream.success
    assert downstream.asset_materializations_for_node("device_registry")[0].metadata["devices"].value == 6
    labelled = downstream.asset_materializations_for_node("labelled_benchmark")[0].metadata
    assert labelled["days"].value == 2 and labelled["events"].value > 0


def test_backfill_of_a_range_rematerialises_exactly_that_range(home):
    instance = DagsterInstance.ephemeral()
    assert materialize([raw_intel_lab], instance=instance, run_config=SYNTHETIC, resources=at(home)).success
    keys = DAILY.get_partition_keys_in_range(PartitionKeyRange("2004-02-29", "2004-03-01"))
    for key in keys:  # a backfill launches one run per partition
        assert materialize(
            ASSETS, selection=[readings_lake], partition_key=key, instance=instance, resources=at(home)
        ).success
    assert instance.get_materialized_partitions(AssetKey("readings_lake")) == set(keys)
    assert [d.isoformat() for d in lake.list_partitions(home / "lake")] == keys


def test_lake_checks_catch_duplicates_and_high_flag_rates():
    ts = datetime(2004, 3, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "device_id": ["mote-01", "mote-01", "mote-02"],
            "ts": [ts, ts, ts],
            "epoch": [5, 5, 5],
            "temperature": [20.0, 122.0, 121.0],
            "humidity": [40.0, 1.0, 1.0],
            "light": [100.0, 1.0, 1.0],
            "voltage": [2.7, 2.0, 2.0],
            "out_of_range": [False, True, True],
            "low_battery": [False, True, True],
            "missing_fields": [False, False, False],
        },
        schema=LAKE_SCHEMA,
    )
    results = {r.check_name: r for r in lake_checks(frame, flag_rate_warn=0.25, fleet=INTEL_LAB)}
    assert results["schema"].passed
    assert (
        not results["unique_device_epoch"].passed
        and results["unique_device_epoch"].metadata["duplicates"].value == 1
    )
    assert not results["flag_rates"].passed
    assert not lake_checks(frame.drop("light"), 0.25, INTEL_LAB)[0].passed
    # readings without a sequence number (a user's CSV) are keyed by their time
    timed = frame.with_columns(
        epoch=pl.lit(None, pl.Int64), ts=pl.Series([ts, ts + timedelta(seconds=1), ts])
    )
    assert lake_checks(timed, 0.25, INTEL_LAB)[1].passed


def test_a_users_fleet_materialises_through_the_data_assets(home, tmp_path, monkeypatch):
    """The same assets on the fleet schema's CSV (its days inside the data set's partitions)."""
    (tmp_path / "plant.toml").write_text(
        'name = "plant_a"\ndevice_column = "sensor"\n[time]\ncolumn = "timestamp"\n'
        '[[features]]\nname = "pressure"\nmin = 0.0\nmax = 16.0\n'
    )
    monkeypatch.setenv("FLEAD_FLEET_SCHEMA", str(tmp_path / "plant.toml"))
    start = datetime(2004, 3, 1, tzinfo=UTC)
    rows = [f"{(start + timedelta(minutes=i)).isoformat()};pump-{i % 2};{5 + i % 3}" for i in range(300)]
    (tmp_path / "plant.csv").write_text("timestamp;sensor;pressure\n" + "\n".join(rows) + "\n")
    instance = DagsterInstance.ephemeral()
    config = {
        "ops": {
            "raw_intel_lab": {"config": {"source": "path", "path": str(tmp_path / "plant.csv"), "sep": ";"}}
        }
    }
    assert materialize([raw_intel_lab], instance=instance, run_config=config, resources=at(home)).success
    result = materialize(
        ASSETS, selection=[readings_lake], partition_key="2004-03-01", instance=instance, resources=at(home)
    )
    assert result.success
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "schema"]
    assert check.passed
    written = lake.scan_lake(home / "lake").collect()
    assert written.height == 300 and set(written["device_id"]) == {"pump-0", "pump-1"}
    assert lake.lake_fleet(home / "lake").ref == "plant_a@1"
