"""Batch scoring of a frozen global model: score_table, score_lake, metrics, Parquet output, MongoDB."""

from __future__ import annotations

import uuid
from datetime import date

import numpy as np
import polars as pl
import pytest

from flead.datasets import lake
from flead.datasets.inject import InjectionConfig, inject_lake
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.evaluation import store
from flead.evaluation.batch_scoring import (
    SCORED_SCHEMA,
    canonical_order,
    device_metrics,
    overall_metrics,
    score_lake,
    score_table,
    write_scored,
)
from flead.model import ModelConfig, OnlineDetector
from flead.storage.mongo import get_database, make_mongo_client

Q = 0.98
DAY_1, DAY_2 = date(2004, 2, 28), date(2004, 2, 29)


@pytest.fixture(scope="module")
def readings(tmp_path_factory) -> pl.DataFrame:
    """Three healthy synthetic motes over two days (LAKE_SCHEMA rows, ~3200-3950 per device)."""
    raw = tmp_path_factory.mktemp("raw")
    fleet = generate_fleet(raw, n_devices=3, days=2, seed=11, failing_fraction=0.0)
    return parse_files(fleet.paths, range(1, 4)).rows


@pytest.fixture(scope="module")
def model_bytes(readings) -> bytes:
    """A global model: a detector trained on one mote; its normaliser must not be used by scoring."""
    detector = OnlineDetector(ModelConfig(), seed=3)
    detector.learn_many(readings.filter(pl.col("device_id") == "mote-01").sort("ts"))
    return detector.model.to_bytes()


def device_rows(readings: pl.DataFrame, device: str) -> pl.DataFrame:
    return readings.filter(pl.col("device_id") == device).sort("ts")


def test_score_table_is_deterministic_and_independent_of_row_order_and_batching(readings, model_bytes):
    table = readings.to_arrow()
    scored = score_table(table, model_bytes, quantile=Q)
    assert scored.schema == SCORED_SCHEMA
    assert scored.num_rows == readings.height
    frame = pl.from_arrow(scored)
    assert pl.from_arrow(score_table(table, model_bytes, quantile=Q)).equals(frame)  # NaN == NaN here

    shuffled = readings.sample(fraction=1.0, shuffle=True, seed=5).to_arrow()
    assert pl.from_arrow(score_table(shuffled, model_bytes, quantile=Q)).equals(frame)

    # Readings at the same time (a duplicate with other values) do not make the order matter either.
    tied = pl.concat([readings, readings.slice(2000, 50).with_columns(pl.col("temperature") + 0.5)])
    first = pl.from_arrow(score_table(tied.to_arrow(), model_bytes, quantile=Q))
    again = pl.from_arrow(score_table(tied.reverse().to_arrow(), model_bytes, quantile=Q))
    assert first.height == readings.height + 50 and first.equals(again)

    # Devices scored in separate calls (as Spark partitions do) give the same rows.
    parts = [
        pl.from_arrow(score_table(device_rows(readings, d).to_arrow(), model_bytes, quantile=Q))
        for d in ("mote-03", "mote-01", "mote-02")
    ]
    assert pl.concat(parts).sort("device_id", "ts").equals(frame)

    assert frame["label"].null_count() == frame.height  # no labels in the input
    assert frame["date"].unique().sort().to_list() == [DAY_1, DAY_2]
    assert (frame["score"] >= 0).all()
    # Every reading is judged against its device's own threshold: the Q quantile of its scores.
    per_device = frame.group_by("device_id").agg(
        pl.col("threshold").n_unique().alias("thresholds"),
        pl.col("threshold").first().alias("threshold"),
        pl.col("score").quantile(Q, "linear").alias("quantile"),
        pl.col("is_anomaly").mean().alias("alarm_share"),
    )
    assert (per_device["thresholds"] == 1).all()
    np.testing.assert_allclose(per_device["threshold"], per_device["quantile"], rtol=1e-5)
    assert per_device["alarm_share"].is_between(0.015, 1 - Q + 0.001).all()


def test_scoring_uses_each_devices_own_normaliser_not_the_global_models(readings, model_bytes):
    """The same readings shifted by a constant score the same: a device's own scale is learned."""
    rows = device_rows(readings, "mote-02")
    shifted = rows.with_columns(pl.col("temperature") + 5.0)
    a = pl.from_arrow(score_table(rows.to_arrow(), model_bytes, quantile=Q))["score"].to_numpy()
    b = pl.from_arrow(score_table(shifted.to_arrow(), model_bytes, quantile=Q))["score"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_a_spike_is_flagged_while_a_quiet_device_has_few_alarms(readings, model_bytes):
    spiked = device_rows(readings, "mote-02").with_row_index("i")
    at = 2500
    spiked = spiked.with_columns(
        pl.when(pl.col("i") == at)
        .then(pl.col("temperature") + 8.0)
        .otherwise("temperature")
        .alias("temperature")
    ).drop("i")
    quiet = device_rows(readings, "mote-03")
    scored = pl.from_arrow(score_table(pl.concat([spiked, quiet]).to_arrow(), model_bytes, quantile=Q))

    spike = scored.filter(pl.col("device_id") == "mote-02").row(at, named=True)
    assert spike["is_anomaly"] and not spike["out_of_range"]
    assert spike["score"] > spike["threshold"] > 0
    spiked_scores = scored.filter(pl.col("device_id") == "mote-02")["score"]
    assert spike["score"] == spiked_scores.max()

    metrics = device_metrics(scored).filter(pl.col("device_id") == "mote-03").row(0, named=True)
    assert metrics["readings"] == quiet.height
    assert metrics["alarms"] <= 0.021 * quiet.height
    assert metrics["out_of_range"] == 0


def test_out_of_range_readings_are_alarms_whatever_their_score(readings, model_bytes):
    rows = device_rows(readings, "mote-01").with_row_index("i")
    rows = rows.with_columns(
        pl.when(pl.col("i") == 10).then(150.0).otherwise("temperature").alias("temperature"),
        pl.when(pl.col("i") == 20).then(None).otherwise("humidity").alias("humidity"),
    ).drop("i")
    scored = pl.from_arrow(score_table(rows.to_arrow(), model_bytes, quantile=Q))
    hot, gap = scored.row(10, named=True), scored.row(20, named=True)
    assert hot["out_of_range"] and hot["is_anomaly"]
    assert not gap["out_of_range"]  # a missing value never trips a physical limit
    assert scored["out_of_range"].sum() == 1
    model_alarms = scored["score"] > scored["threshold"]
    assert (scored["is_anomaly"] == (model_alarms | scored["out_of_range"])).all()


def test_metrics_on_a_hand_made_frame():
    scored = pl.DataFrame(
        {
            "device_id": ["a"] * 5 + ["b"] * 3,
            "ts": [0, 1, 2, 3, 4, 0, 1, 2],
            "score": [1.0, 2.0, 3.0, 4.0, 10.0, 0.5, 0.5, 2.0],
            "threshold": [np.nan] * 8,
            "is_anomaly": [True, False, True, False, True, False, False, True],
            "out_of_range": [False, False, False, False, True, False, False, False],
            "label": [True, True, False, False, False, None, None, None],
        },
        schema_overrides={"score": pl.Float32, "label": pl.Boolean},
    )
    per_device = {row["device_id"]: row for row in device_metrics(scored).iter_rows(named=True)}
    a, b = per_device["a"], per_device["b"]
    assert (a["readings"], a["alarms"], a["out_of_range"]) == (5, 3, 1)
    assert a["alarm_rate"] == pytest.approx(0.6)
    assert a["score_mean"] == pytest.approx(4.0)
    assert a["score_p99"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 99))
    # a's labelled readings: alarms T F T F on labels T T F F -> tp 1, fp 1, fn 1 (the out-of-range
    # reading is the rule's alarm, not the model's: left out, though labelled normal)
    assert (a["labelled"], a["tp"], a["fp"], a["fn"]) == (4, 1, 1, 1)
    assert a["precision"] == a["recall"] == a["f1"] == pytest.approx(0.5)
    assert b["labelled"] is None and b["f1"] is None and b["precision"] is None
    assert b["alarm_rate"] == pytest.approx(1 / 3)

    overall = overall_metrics(scored)
    assert overall["devices"] == 2 and overall["readings"] == 8 and overall["alarms"] == 4
    assert (overall["tp"], overall["fp"], overall["fn"], overall["f1"]) == (1, 1, 1, 0.5)
    assert overall["score_mean"] == pytest.approx(23 / 8)

    unlabelled = overall_metrics(scored.with_columns(pl.lit(None, pl.Boolean).alias("label")))
    assert unlabelled["f1"] is None and unlabelled["precision"] is None and unlabelled["alarms"] == 4


def test_score_lake_reads_the_labelled_copy_when_it_covers_the_days(readings, model_bytes, tmp_path):
    lake.write_days(readings, tmp_path / "lake")
    inject_lake(
        tmp_path / "lake", [DAY_1, DAY_2], tmp_path / "labelled", InjectionConfig(spike_rate=4.0), seed=1
    )
    plain = score_lake(tmp_path / "lake", [DAY_2, DAY_1], model_bytes, quantile=Q)
    assert plain.equals(
        canonical_order(pl.from_arrow(score_table(readings.to_arrow(), model_bytes, quantile=Q)))
    )

    labelled = score_lake(
        tmp_path / "lake", [DAY_1, DAY_2], model_bytes, quantile=Q, labelled_dir=tmp_path / "labelled"
    )
    truth = pl.read_parquet(tmp_path / "labelled" / "date=*" / "*.parquet").sort("device_id", "ts")
    assert labelled["label"].null_count() == 0
    assert labelled["label"].sum() == truth["label"].sum() > 0
    assert overall_metrics(labelled)["f1"] is not None

    # A labelled copy without one of the days is not used: the lake's rows come back, unlabelled.
    lake.partition_path(tmp_path / "labelled", DAY_2).unlink()
    fallback = score_lake(
        tmp_path / "lake", [DAY_1, DAY_2], model_bytes, quantile=Q, labelled_dir=tmp_path / "labelled"
    )
    assert fallback.equals(plain)
    with pytest.raises(FileNotFoundError):
        score_lake(tmp_path / "lake", [date(2004, 3, 9)], model_bytes, quantile=Q)


def test_write_scored_layout_and_atomic_day_replace(readings, model_bytes, tmp_path):
    scored = pl.from_arrow(score_table(readings.to_arrow(), model_bytes, quantile=Q))
    out = tmp_path / "evaluations"
    paths = write_scored(scored, out, 7, days=[date(2004, 3, 1)])
    assert paths == [
        out / "version=7" / f"date={d.isoformat()}" / "part-0.parquet"
        for d in (DAY_1, DAY_2, date(2004, 3, 1))
    ]
    back = pl.read_parquet(
        out / "version=7", hive_partitioning=True, hive_schema={"date": pl.Date, "version": pl.Int64}
    )
    assert back.select(scored.columns).sort("device_id", "ts").equals(scored)
    assert pl.read_parquet(paths[2]).is_empty()
    assert "date" not in pl.read_parquet(paths[0]).columns  # the day lives in the path, as in the lake

    day_2_before = paths[1].read_bytes()
    subset = scored.filter((pl.col("date") == DAY_1) & (pl.col("device_id") == "mote-01"))
    assert write_scored(subset, out, 7) == [paths[0]]
    assert pl.read_parquet(paths[0]).height == subset.height
    assert paths[1].read_bytes() == day_2_before
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["part-0.parquet"]  # no temp file left
    write_scored(scored, out, 7)
    assert paths[1].read_bytes() == day_2_before  # same rows, same file


def test_store_upserts_one_document_per_version_and_day(settings):
    settings = settings.model_copy(update={"collection_evaluations": f"evaluations_{uuid.uuid4().hex[:8]}"})
    client = make_mongo_client(settings)
    try:
        db = get_database(client, settings)
        collection = db[settings.collection_evaluations]
        overall = {
            "readings": 10,
            "alarms": 2,
            "tp": 1,
            "fp": 1,
            "fn": 0,
            "f1": 2 / 3,
            "score_p99": np.float64("nan"),
        }
        devices = pl.DataFrame(
            {"device_id": ["a"], "readings": [10], "f1": [None]}, schema_overrides={"f1": pl.Float64}
        )
        for _ in range(2):
            doc_id = store.save_evaluation(
                db, settings, version=3, day=DAY_1, overall=overall, per_device=devices
            )
        assert doc_id == "v3:2004-02-28"
        assert collection.count_documents({}) == 1
        doc = collection.find_one({"_id": doc_id})
        assert doc["version"] == 3 and doc["day"] == "2004-02-28"
        assert doc["overall"]["tp"] == 1 and doc["overall"]["score_p99"] is None
        assert doc["devices"] == [{"device_id": "a", "readings": 10, "f1": None}]

        def save(version: int, day: date, tp: int, fp: int, fn: int) -> None:
            counts = {"tp": tp, "fp": fp, "fn": fn}
            store.save_evaluation(db, settings, version=version, day=day, overall=counts, per_device=[])

        save(1, DAY_1, 4, 0, 0)
        save(1, DAY_2, 4, 0, 0)
        save(2, DAY_1, 1, 1, 0)
        save(2, DAY_2, 1, 0, 1)
        save(4, DAY_1, 9, 9, 9)  # does not cover DAY_2
        save(6, DAY_1, 0, 5, 5)
        save(6, DAY_2, 0, 5, 5)
        days = [DAY_1, DAY_2]
        # version 5: 4 lacks DAY_2, so 2's pooled F1: 2*2 / (2*2 + 1 + 1)
        assert store.previous_f1(db, settings, version=5, days=days) == pytest.approx(4 / 6)
        assert store.previous_f1(db, settings, version=2, days=days) == pytest.approx(1.0)
        assert store.previous_f1(db, settings, version=1, days=days) is None
        assert store.previous_f1(db, settings, version=5, days=[DAY_1]) == pytest.approx(
            0.5
        )  # 4 covers DAY_1: 18 / 36
        assert store.previous_f1(db, settings, version=7, days=days) == pytest.approx(0.0)
        assert store.previous_f1(db, settings, version=4, days=[date(2004, 3, 9)]) is None
        save(3, DAY_1, None, None, None)  # no labels
        save(3, DAY_2, None, None, None)
        assert store.previous_f1(db, settings, version=4, days=days) is None
    finally:
        client.close()
