"""Batch evaluation throughput: Spark (`score_lake_spark`) against in-process `score_lake`.

    python benchmarks/spark_eval.py [--devices 54] [--days 1 4 16] [--master local[*]] [--repeat 1]

Both paths score the same days of the same lake with the same global model (a detector trained on one
synthetic mote for a day) and must return identical rows; each timing is the best of N runs after a
warm-up run of the smallest size. Data: a seeded synthetic fleet written through the lake's own
writer into a temporary folder, scored over its first 1, 4, 16 ... days, and the 9 shared real motes
(../shared/data/intel_lab, when present), all of their days. The Spark session's start (JVM, first
job) is timed separately and not counted in Spark's rates. The break-even is where straight lines
fitted to seconds(rows) of the two paths cross. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from flead.datasets import lake
from flead.datasets.intel_lab import parse_files, resolve_source
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.batch_scoring import score_lake
from flead.model import ModelConfig, OnlineDetector
from flead_dagster.spark_scoring import make_local_spark, score_lake_spark

SHARED = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"
QUANTILE = 0.98


def best_of(repeat: int, run: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
    timings, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - start)
    assert result is not None
    return min(timings), result


def global_model(lake_dir: Path, day: date) -> bytes:
    first = lake.scan_lake(lake_dir, day, day).collect()
    device = first["device_id"].min()
    detector = OnlineDetector(ModelConfig(), seed=0)
    detector.learn_many(first.filter(pl.col("device_id") == device).sort("ts"))
    return detector.model.to_bytes()


def measure(spark, lake_dir: Path, days: list[date], model: bytes, repeat: int, label: str) -> dict:
    polars_s, expected = best_of(repeat, lambda: score_lake(lake_dir, days, model, quantile=QUANTILE))
    spark_s, got = best_of(repeat, lambda: score_lake_spark(spark, lake_dir, days, model, quantile=QUANTILE))
    if not got.sort("device_id", "ts").equals(expected.sort("device_id", "ts")):
        raise AssertionError(f"{label}: Spark and in-process scoring differ")
    rows = expected.height
    return {
        "data": label,
        "days": len(days),
        "devices": expected["device_id"].n_unique(),
        "rows": rows,
        "in_process": {"seconds": round(polars_s, 3), "rows_per_s": round(rows / polars_s)},
        "spark": {"seconds": round(spark_s, 3), "rows_per_s": round(rows / spark_s)},
        "ratio_spark_vs_in_process": round(polars_s / spark_s, 3),  # > 1: Spark is faster
        "identical": True,
    }


def break_even(results: list[dict]) -> dict:
    """Where seconds = a + b * rows of the two paths cross (least squares over the measured sizes)."""
    rows = np.array([r["rows"] for r in results], dtype=float)
    fits = {}
    for path in ("in_process", "spark"):
        seconds = np.array([r[path]["seconds"] for r in results])
        slope, intercept = np.polyfit(rows, seconds, 1) if len(rows) > 1 else (seconds[0] / rows[0], 0.0)
        fits[path] = (float(intercept), float(slope))
    (a_p, b_p), (a_s, b_s) = fits["in_process"], fits["spark"]
    out: dict = {
        "fit_in_process": {"fixed_s": round(a_p, 3), "us_per_row": round(b_p * 1e6, 3)},
        "fit_spark": {"fixed_s": round(a_s, 3), "us_per_row": round(b_s * 1e6, 3)},
        "ratio_trend": [r["ratio_spark_vs_in_process"] for r in sorted(results, key=lambda r: r["rows"])],
    }
    faster = sorted(r["rows"] for r in results if r["ratio_spark_vs_in_process"] > 1)
    largest = int(rows.max())
    if b_s < b_p:
        crossing = max(0.0, (a_s - a_p) / (b_p - b_s))
        out["break_even_rows"] = round(crossing)
        out["break_even"] = (
            f"measured: Spark faster from {faster[0]} rows" if faster else f"not reached up to {largest} rows"
        ) + f"; the fitted lines cross at ~{round(crossing):,} rows"
    else:
        out["break_even_rows"] = None
        out["break_even"] = (
            f"not reached up to {largest} rows: Spark's cost per row is not lower, so it is not expected "
            "to overtake on this machine"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=54)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--shuffle-partitions", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flead-bench-spark-"))
    try:
        fleet = generate_fleet(work / "raw", n_devices=args.devices, days=max(args.days), seed=args.seed)
        lake.write_days(parse_files(fleet.paths, range(1, args.devices + 1)).rows, work / "lake")
        all_days = lake.list_partitions(work / "lake")
        model = global_model(work / "lake", all_days[0])

        started = time.perf_counter()
        spark = make_local_spark(args.master, driver_memory="2g", shuffle_partitions=args.shuffle_partitions)
        spark.range(1).count()
        spark_start_s = time.perf_counter() - started
        try:
            # Warm-up: imports, the Python workers, the JIT of the first jobs.
            measure(spark, work / "lake", all_days[:1], model, 1, "warm-up")
            results = [
                measure(spark, work / "lake", all_days[:n], model, args.repeat, "synthetic")
                for n in sorted(args.days)
            ]
            real = None
            if SHARED.is_dir():
                lake.ingest(resolve_source(SHARED), work / "real")
                real = measure(
                    spark,
                    work / "real",
                    lake.list_partitions(work / "real"),
                    model,
                    args.repeat,
                    "intel_lab_9_motes",
                )
        finally:
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "master": args.master,
        "shuffle_partitions": args.shuffle_partitions,
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "repeat": args.repeat,
        "quantile": QUANTILE,
        "python": platform.python_version(),
        "polars": pl.__version__,
        "spark_session_start_s": round(spark_start_s, 3),
        "synthetic": results,
        "synthetic_break_even": break_even(results),
        "intel_lab": real,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
