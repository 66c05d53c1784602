"""Batch evaluation of a global model on Spark: the same scoring as `score_lake`, spread by device.

Spark reads the chosen days' Parquet files, repartitions the rows by device_id, sorts each partition
by device and time and runs `flead.evaluation.batch_scoring.score_table` inside ``mapInArrow``, one
device at a time as its rows stream by (memory is bounded by the largest device, not the partition).
A device's scores depend only on its own rows, so the result equals the in-process `score_lake`'s
row for row, whatever the number of partitions.

No Dagster import here: the benchmark uses it directly; the Dagster asset passes the SparkSession of
its dagster-pyspark resource, configured with the keys of `spark_config`.

Requirements: ``mapInArrow`` needs pandas >= 2.2 installed on the driver (pyspark's ``sql`` extra);
the Python workers must run an interpreter with NumPy, polars, pyarrow and flead (in local mode,
``PYSPARK_PYTHON``, which `make_local_spark` sets to this interpreter when unset).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from flead.config import Settings
from flead.datasets import lake
from flead.evaluation.batch_scoring import (
    DEVICE,
    TS,
    canonical_order,
    lake_sources,
    model_columns,
    score_table,
    source_columns,
)
from flead.model.config import TrainConfig

LOG4J2_CONFIG = Path(__file__).with_name("spark-log4j2.properties")

# The Spark schema of `SCORED_SCHEMA` (timestamps are read in the session time zone: UTC).
SCORED_DDL = (
    "device_id string, ts timestamp, date date, score float, threshold float, "
    "is_anomaly boolean, out_of_range boolean, label boolean"
)


def spark_config(settings: Settings) -> dict[str, str]:
    """The Spark settings batch evaluation expects (also for dagster-pyspark's ``spark_config``).

    The session time zone must be UTC: the lake's days are UTC days.
    """
    config = {
        "spark.master": settings.spark_master,
        "spark.app.name": "flead-evaluation",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}",
    }
    if settings.spark_master.startswith("local"):  # no network lookups of this host's name
        host = settings.spark_driver_host
        config |= {"spark.driver.host": host, "spark.driver.bindAddress": host}
    return config


def prepare_environment(settings: Settings) -> None:
    """What the Spark launcher reads from the environment, before a session starts."""
    # pyspark starts its Python workers with PYSPARK_PYTHON (default: python3 on the PATH, which may
    # lack this environment's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings.spark_master.startswith("local"):  # else Spark warns that the host name is loopback
        os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_host)


def make_local_spark(
    master: str = "local[1]", driver_memory: str = "1g", shuffle_partitions: int = 2
) -> SparkSession:
    """A Spark session for tests and benchmarks (stop it with ``spark.stop()``)."""
    settings = Settings(
        spark_master=master, spark_driver_memory=driver_memory, spark_shuffle_partitions=shuffle_partitions
    )
    prepare_environment(settings)
    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def score_lake_spark(
    spark: SparkSession,
    lake_dir: Path | str,
    days: Iterable[date],
    model_bytes: bytes,
    *,
    quantile: float,
    labelled_dir: Path | str | None = None,
    train: TrainConfig | None = None,
) -> pl.DataFrame:
    """`score_lake` on Spark: the scored rows collected to the driver, in `canonical_order`."""
    if spark.conf.get("spark.sql.session.timeZone") != "UTC":
        raise ValueError("batch evaluation needs spark.sql.session.timeZone=UTC (see spark_config)")
    if not 0.0 < quantile < 1.0:  # checked on the driver too, before any Spark work
        raise ValueError(f"quantile must be within (0, 1), got {quantile}")
    paths, labelled = lake_sources(lake_dir, days, labelled_dir)
    columns = source_columns(model_columns(model_bytes), labelled)
    readings = spark.read.parquet(*(str(p) for p in paths)).select(*columns)
    ranges = lake.lake_fleet(Path(lake_dir)).valid_ranges

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # model_bytes travels in this closure (a global model is tens of kB).
        for table in _devices(batches):
            scored = score_table(table, model_bytes, quantile=quantile, train=train, ranges=ranges)
            yield from scored.to_batches()

    frame = (
        readings.repartition(DEVICE).sortWithinPartitions(DEVICE, TS).mapInArrow(score_partition, SCORED_DDL)
    )
    scored = pl.from_arrow(frame.toArrow())  # ts arrives as timestamp[us, UTC]
    assert isinstance(scored, pl.DataFrame)
    return canonical_order(scored)


def _devices(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Group a stream of batches sorted by device into one table per run of whole devices.

    A device's rows may span batches: the rows of the last device of a batch wait for the next one.
    """
    pending: list[pa.RecordBatch] = []  # rows of one device, maybe not all of them yet
    for batch in batches:
        if not batch.num_rows:
            continue
        devices = batch.column(DEVICE)
        last = devices[batch.num_rows - 1]
        cut = pc.index(devices, last).as_py()  # the first row of the batch's last device
        if cut > 0:
            yield pa.Table.from_batches([*pending, batch.slice(0, cut)])
            pending = []
        elif pending and pending[-1].column(DEVICE)[0] != last:
            yield pa.Table.from_batches(pending)
            pending = []
        pending.append(batch.slice(cut))
    if pending:
        yield pa.Table.from_batches(pending)
