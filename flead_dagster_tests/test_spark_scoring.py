"""Batch scoring on a real local Spark session equals the in-process scoring, row for row."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from flead.config import Settings
from flead.datasets import lake
from flead.datasets.inject import InjectionConfig, inject_lake
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.batch_scoring import score_lake
from flead.model import ModelConfig, OnlineDetector
from flead_dagster.spark_scoring import _devices, make_local_spark, score_lake_spark, spark_config
from flead_dagster_tests.helpers.reports import DAYS

Q = 0.98


@pytest.fixture(scope="module")
def spark():
    session = make_local_spark("local[1]", driver_memory="1g", shuffle_partitions=3)
    # Small Arrow batches, so devices span several batches of a partition.
    session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "700")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark-lake")
    fleet = generate_fleet(root / "raw", n_devices=4, days=2, seed=8, failing_fraction=0.5)
    lake.write_days(parse_files(fleet.paths, range(1, 5)).rows, root / "lake")
    inject_lake(root / "lake", DAYS, root / "labelled", InjectionConfig(spike_rate=3.0), seed=2)
    return root / "lake", root / "labelled"


@pytest.fixture(scope="module")
def model_bytes(dirs) -> bytes:
    detector = OnlineDetector(ModelConfig(), seed=4)
    detector.learn_many(lake.scan_lake(dirs[0]).filter(pl.col("device_id") == "mote-02").sort("ts").collect())
    return detector.model.to_bytes()


def test_spark_equals_score_lake_row_for_row(spark, dirs, model_bytes):
    lake_dir, _ = dirs
    expected = score_lake(lake_dir, DAYS, model_bytes, quantile=Q)
    got = score_lake_spark(spark, lake_dir, DAYS, model_bytes, quantile=Q)
    assert got.schema == expected.schema
    assert got.height == expected.height > 9_000
    assert expected["device_id"].n_unique() == 4
    assert expected["out_of_range"].any() and expected["is_anomaly"].any()  # failing motes
    assert got.sort("device_id", "ts").equals(expected.sort("device_id", "ts"))


def test_spark_reads_the_labelled_copy_like_score_lake(spark, dirs, model_bytes):
    lake_dir, labelled_dir = dirs
    expected = score_lake(lake_dir, DAYS, model_bytes, quantile=Q, labelled_dir=labelled_dir)
    got = score_lake_spark(spark, lake_dir, DAYS[::-1], model_bytes, quantile=Q, labelled_dir=labelled_dir)
    assert got["label"].null_count() == 0 and got["label"].sum() > 0
    assert got.sort("device_id", "ts").equals(expected.sort("device_id", "ts"))


def test_devices_regroups_a_sorted_stream_into_whole_devices():
    def batch(devices: str) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({"device_id": list(devices), "x": list(range(len(devices)))})

    stream = [batch("aab"), batch("bbb"), batch(""), batch("bcc"), batch("d"), batch("deef"), batch("g")]
    tables = list(_devices(iter(stream)))
    assert [t.column("device_id").to_pylist() for t in tables] == [
        ["a", "a"],
        ["b", "b", "b", "b", "b"],
        ["c", "c"],
        ["d", "d", "e", "e"],
        ["f"],
        ["g"],
    ]
    assert list(_devices(iter([]))) == []


def test_spark_config_is_utc_and_local_friendly():
    settings = Settings(spark_master="local[*]", spark_driver_memory="3g", spark_shuffle_partitions=5)
    local = spark_config(settings)
    assert local["spark.sql.session.timeZone"] == "UTC"
    assert local["spark.sql.shuffle.partitions"] == "5" and local["spark.driver.memory"] == "3g"
    assert local["spark.driver.host"] == Settings().spark_driver_host
    assert "spark.driver.host" not in spark_config(Settings(spark_master="spark://cluster:7077"))
