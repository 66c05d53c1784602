"""A fleet of the user's own sensors: the schema file, and their CSV / Parquet files into the lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from flead.bus.clients import make_producer
from flead.bus.replay import lake_readings, replay
from flead.config import Settings
from flead.datasets import lake, pipeline
from flead.datasets.tabular import parse_table_files
from flead.evaluation.batch_scoring import score_lake, write_scored
from flead.fleet import INTEL_LAB, NASA_MSL, NASA_SMAP, FleetSchemaError, load_fleet
from flead.model.anomaly_model import AnomalyModel
from flead.model.config import model_for_fleet
from flead.reporting.anomaly_report import build_report
from flead.schema import LAKE_SCHEMA, lake_schema
from flead_dagster_tests.helpers.trainer import (
    Trainer,
    create_topics,
    device_table,
    isolated_env,
    mongo_db,
    offsets_total,
    read_all,
    settings_for,
)

FLEAD = str(Path(sys.executable).parent / "flead")

PLANT = """
name = "plant_a"
version = 2
device_column = "sensor"

[time]
column = "timestamp"

[[features]]
name = "pressure"
unit = "bar"
min = 0.0
max = 16.0
resolution = 0.01

[[features]]
name = "vibration"
unit = "mm/s"
min = 0.0

[[inputs]]
name = "valve_open"
"""


@pytest.fixture
def plant(tmp_path) -> Path:
    path = tmp_path / "plant.toml"
    path.write_text(PLANT)
    return path


def plant_csv(path: Path, rows: int = 200, extra: list[str] = ()) -> Path:
    start = datetime(2024, 5, 1, 23, tzinfo=UTC)
    lines = ["timestamp,sensor,pressure,vibration,valve_open,site"]
    for i in range(rows):
        for sensor in ("pump-1", "pump-2"):
            t = (start + timedelta(minutes=i)).isoformat()
            lines.append(f"{t},{sensor},{5 + (i % 7) / 10:.2f},{(i % 5) / 10:.2f},{i % 2},north")
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def run(home: Path, fleet: Path | str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_HOME": str(home), "FLEAD_FLEET_SCHEMA": str(fleet), "COLUMNS": "200"}
    return subprocess.run([FLEAD, "data", *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_schema_file_declares_features_inputs_and_columns(plant):
    fleet = load_fleet(plant)
    assert fleet.ref == "plant_a@2"
    assert fleet.columns == ("pressure", "vibration", "valve_open")
    assert fleet.valid_ranges == {"pressure": (0.0, 16.0), "vibration": (0.0, float("inf"))}
    assert fleet.resolutions["pressure"] == 0.01
    assert list(lake_schema(fleet))[3:6] == ["pressure", "vibration", "valve_open"]
    assert lake_schema(INTEL_LAB) == LAKE_SCHEMA
    assert NASA_SMAP.feature_names == NASA_MSL.feature_names == ("value",)
    assert (len(NASA_SMAP.inputs), len(NASA_MSL.inputs)) == (24, 54)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PLANT.replace("max = 16.0", "max = -1.0"), "features.0: Value error, min (0.0) must be below max"),
        (PLANT.replace('name = "valve_open"', 'name = "pressure"'), "repeated: ['pressure']"),
        (PLANT.replace('name = "valve_open"', 'name = "ts"'), "'ts' is a column the lake adds itself"),
        (PLANT.replace('unit = "bar"', 'units = "bar"'), "features.0.units: Extra inputs are not permitted"),
        (PLANT.replace('[time]\ncolumn = "timestamp"', '[time]\nkind = "weekly"'), "time.kind"),
        ("name = ", "not valid TOML"),
    ],
)
def test_a_bad_schema_file_names_the_file_and_the_field(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FleetSchemaError) as error:
        load_fleet(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_settings_name_the_fleet_schema_and_refuse_one_that_does_not_load(plant, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEAD_FLEET_SCHEMA", str(plant))
    assert Settings().fleet.ref == "plant_a@2"
    monkeypatch.setenv("FLEAD_FLEET_SCHEMA", str(tmp_path / "missing.toml"))
    with pytest.raises(ValidationError, match="neither a preset"):
        Settings()


def test_every_row_of_a_users_csv_is_a_lake_row_or_a_reject_with_its_reason(plant, tmp_path):
    bad = [
        "2024-05-01T23:00:00+00:00,pump-1,5.0,0.1,0,north",  # the first reading again
        "not a time,pump-1,5.0,0.1,0,north",
        "2024-05-04T00:00:00Z,,5.0,0.1,0,north",
        "2024-05-04T00:01:00Z,pump 1,5.0,0.1,0,north",
        "2024-05-04T00:02:00Z,pump-1,abc,0.1,0,north",
        "2024-05-04T00:03:00Z,pump-1,5.0,inf,0,north",
        "2024-05-04T00:04:00Z,pump-1,99,0.1,0,north",  # beyond the sensor's 16 bar: kept, flagged
        "2024-05-04T00:05:00Z,pump-1,,0.1,0,north",  # missing: kept, flagged
    ]
    parsed = parse_table_files([plant_csv(tmp_path / "plant.csv", extra=bad)], load_fleet(plant))
    assert parsed.lines == 400 + len(bad) and parsed.rows.height + parsed.rejects.height == parsed.lines
    assert dict(parsed.rejects.select("line", "reason").iter_rows()) == {
        402: "duplicate",
        403: "bad time (not ISO-8601: give the schema's time format)",
        404: "bad device id",
        405: "bad device id",
        406: "not a number: pressure",
        407: "not a number: vibration",
    }
    assert parsed.rejects["raw"][1] == "not a time,pump-1,5.0,0.1,0,north"
    tail = parsed.rows.filter(pl.col("ts") >= datetime(2024, 5, 4, tzinfo=UTC)).sort("ts")
    assert tail.select("pressure", "out_of_range", "missing_fields").rows() == [
        (99.0, True, False),
        (None, False, True),
    ]
    assert parsed.rows.schema == lake_schema(load_fleet(plant))


def test_cli_ingests_a_users_csv_into_the_lake_of_its_schema(plant, tmp_path):
    home = tmp_path / "home"
    result = run(home, plant, "ingest", str(plant_csv(tmp_path / "plant.csv")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "400 rows, 0 rejects" in result.stdout
    assert "columns not in the fleet schema plant_a@2, ignored: ['site']" in result.stdout
    rows = lake.scan_lake(home / "lake").collect()
    assert rows.height == 400 and set(rows["device_id"]) == {"pump-1", "pump-2"}
    assert set(rows["date"]) == {date(2024, 5, 1), date(2024, 5, 2)}
    assert {"pressure", "vibration", "valve_open"} <= set(rows.columns) and "temperature" not in rows.columns
    assert lake.lake_fleet(home / "lake") == load_fleet(plant)

    # The same home cannot take another fleet's readings: the lake says which it holds.
    intel = run(home, "intel_lab", "synth", "--devices", "2", "--days", "1", "--out", str(tmp_path / "raw"))
    assert intel.returncode == 0, intel.stdout + intel.stderr
    other = run(home, "intel_lab", "ingest", str(tmp_path / "raw"))
    out = other.stdout + other.stderr
    assert other.returncode == 1 and "holds readings of the fleet schema plant_a@2" in out


def test_cli_says_why_when_no_row_of_a_file_is_a_reading(plant, tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("timestamp,sensor,pressure,vibration,valve_open\n" + "yesterday,pump-1,1,1,0\n" * 5)
    result = run(tmp_path / "home", plant, "ingest", str(path))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "all 5 rows" in out and "Traceback" not in out
    assert "bad time (not ISO-8601: give the schema's time format) (5)" in out

    missing = tmp_path / "other.csv"
    missing.write_text("time,id,temperature\n2024-05-01T00:00:00Z,a,1\n")
    result = run(tmp_path / "home", plant, "ingest", str(missing))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "missing columns ['sensor', 'timestamp', 'pressure'" in out


def test_an_index_timed_parquet_fleet_gets_times_a_step_apart(tmp_path):
    frame = pl.DataFrame(
        {
            "device_id": ["P-1"] * 3 + ["M-6"] * 2,
            "t": [0, 1, 2, 0, 1],
            "value": [0.1, -0.2, 3.0, 0.0, None],
            **{f"cmd_{i:02d}": [0.0] * 5 for i in range(1, 25)},
        }
    )
    frame.write_parquet(tmp_path / "channels.parquet")
    parsed = parse_table_files([tmp_path / "channels.parquet"], NASA_SMAP)
    rows = parsed.rows.sort("device_id", "ts")
    origin = NASA_SMAP.time.origin
    assert rows.filter(pl.col("device_id") == "P-1")["ts"].to_list() == [
        origin + timedelta(minutes=m) for m in range(3)
    ]
    assert rows["epoch"].to_list() == [0, 1, 0, 1, 2]  # the steps: M-6, then P-1
    assert rows["out_of_range"].to_list() == [False, False, False, False, True]  # 3.0 beyond -1..1
    assert rows["missing_fields"].sum() == 1 and parsed.rejects.height == 0


def test_the_intel_text_format_is_refused_for_another_fleet(plant, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEAD_FLEET_SCHEMA", str(plant))
    (tmp_path / "data.txt").write_text("2004-02-28 00:59:16.02785 3 1 19.9884 37.0933 45.08 2.69964\n")
    with pytest.raises(ValueError, match="Intel Lab text format holds only the intel_lab fleet"):
        pipeline.acquire(Settings(), pipeline.SourceKind.PATH, tmp_path / "data.txt")


def test_a_users_fleet_runs_from_its_csv_through_kafka_and_the_trainer(plant, services_env, tmp_path):
    """ingest -> lake -> replay (Kafka messages of the plant's schema) -> the real trainer: every
    reading scored with the plant's features, an out-of-range pressure alarmed with its values, and a
    reading of another fleet dead-lettered with the reason."""
    env = isolated_env(services_env, FLEAD_HOME=str(tmp_path / "home"), FLEAD_FLEET_SCHEMA=str(plant))
    settings = settings_for(env)
    spike = "2024-05-02T03:00:30Z,pump-1,25.0,0.2,1,north"  # beyond the sensor's 16 bar
    ingest = subprocess.run(
        [FLEAD, "data", "ingest", str(plant_csv(tmp_path / "plant.csv", rows=600, extra=[spike]))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    create_topics(settings)
    frame = lake_readings(settings)
    assert frame.height == 1201 and "pressure" in frame.columns
    replay(settings, frame)
    producer = make_producer(settings)
    intel = {"schema_version": 2, "fleet": "intel_lab@1", "device_id": "pump-1", "ts": "2024-05-02T09:00:00Z"}
    producer.send(settings.topic_readings, key=b"pump-1", value=json.dumps({**intel, "values": {}}).encode())
    producer.flush()
    producer.close()

    trainer = Trainer(env, tmp_path, "--flush-idle", "0.5")
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == frame.height + 1 and h["buffered"] == 0,
        120,
        "every reading consumed, scored and checkpointed",
    )
    assert health["counters"]["scored"] == frame.height and health["counters"]["dlq"] == 1
    assert trainer.stop() == 0, trainer.tail()
    assert {d: stats[0] for d, stats in device_table(settings).items()} == {"pump-1": 601, "pump-2": 600}
    client, db = mongo_db(settings)
    try:
        alarm = db[settings.collection_anomalies].find_one({"device_id": "pump-1", "values.pressure": 25.0})
    finally:
        client.close()
    assert alarm is not None and set(alarm["values"]) == {"pressure", "vibration", "valve_open"}
    [letter] = read_all(settings, settings.topic_dlq, 1)
    assert b"is not this deployment's fleet schema 'plant_a@2'" in dict(letter.headers)["flead.error"]


SHARED_NASA = Path(__file__).resolve().parents[2] / "shared/data/nasa_smap_msl"


@pytest.mark.skipif(
    not SHARED_NASA.is_dir(), reason="the shared NASA SMAP / MSL folder is not beside the repo"
)
def test_the_nasa_smap_preset_runs_real_channels_through_kafka_and_the_trainer(services_env, tmp_path):
    channels = (
        pl.read_parquet(SHARED_NASA / "smap_test.parquet")
        .filter(pl.col("device_id").is_in(["P-1", "E-1", "T-1"]) & (pl.col("t") < 400))
        .drop("label")
    )
    channels.write_parquet(tmp_path / "smap.parquet")
    env = isolated_env(
        services_env,
        FLEAD_HOME=str(tmp_path / "home"),
        FLEAD_FLEET_SCHEMA="nasa_smap",
        FLEAD_TRAINER_PUSH_EVERY="100",  # the three channels federate: updates, aggregations, versions
        FLEAD_AUTO_AGGREGATE_THRESHOLD="3",
    )
    settings = settings_for(env)
    ingest = subprocess.run(
        [FLEAD, "data", "ingest", str(tmp_path / "smap.parquet")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "1,200 rows, 0 rejects" in ingest.stdout
    create_topics(settings)
    frame = lake_readings(settings)
    assert frame.height == 1200 and frame["ts"].min() == NASA_SMAP.time.origin
    replay(settings, frame)
    trainer = Trainer(env, tmp_path, "--flush-idle", "0.5")
    health = trainer.wait_for(
        lambda h: offsets_total(h, "checkpointed_offsets") == frame.height and h["buffered"] == 0,
        120,
        "every reading consumed, scored and checkpointed",
    )
    assert health["counters"]["scored"] == 1200 and health["counters"]["dlq"] == 0
    assert health["exchange"]["aggregations"] >= 1 and health["exchange"]["global_version"] >= 1
    assert trainer.stop() == 0, trainer.tail()
    assert {d: stats[0] for d, stats in device_table(settings).items()} == {
        "P-1": 400,
        "E-1": 400,
        "T-1": 400,
    }

    # and the same channels evaluated on their own train / test split, the readings counted
    pick = pl.col("device_id").is_in(["P-1", "E-1"])
    train = pl.read_parquet(SHARED_NASA / "smap_train.parquet").filter(pick)
    test = pl.read_parquet(SHARED_NASA / "smap_test.parquet").filter(pick)
    train.write_parquet(tmp_path / "train.parquet")
    test.write_parquet(tmp_path / "test.parquet")
    out = tmp_path / "smap.json"
    split = ["--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet")]
    options = ["--device", "device_id", "--features", "value", "-m", "federated", "--out", str(out)]
    evaluate = subprocess.run(
        [FLEAD, "evaluate", *split, *options],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    federated = json.loads(out.read_text())["results"]["federated"]
    assert (federated["readings_trained"], federated["readings_scored"]) == (train.height, test.height)
    assert federated["global_versions"] >= 1


def test_the_module_examples_run():
    import doctest

    import flead.fleet

    assert doctest.testmod(flead.fleet).failed == 0


def test_a_users_fleet_is_labelled_and_evaluated_with_its_own_features(plant, tmp_path):
    home = tmp_path / "home"
    assert run(home, plant, "ingest", str(plant_csv(tmp_path / "plant.csv", rows=1500))).returncode == 0
    inject = run(home, plant, "inject", "--seed", "3", "--rate-scale", "20")
    assert inject.returncode == 0, inject.stdout + inject.stderr
    events = pl.read_parquet(home / "labelled" / "events.parquet")
    assert set(events["feature"].drop_nulls()) <= {"pressure", "vibration"}  # never the input
    assert events.height > 0 and lake.lake_fleet(home / "labelled") == load_fleet(plant)

    out = tmp_path / "evaluation.json"
    env = {**os.environ, "FLEAD_HOME": str(home), "FLEAD_FLEET_SCHEMA": str(plant), "COLUMNS": "200"}
    evaluate = subprocess.run(
        [FLEAD, "evaluate", "-m", "local", "-m", "pca", "--train-fraction", "0.3", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    result = json.loads(out.read_text())
    assert result["setup"]["features"] == ["pressure", "vibration"]
    assert result["setup"]["inputs"] == ["valve_open"]  # the schema's input: read, not scored
    assert result["results"]["local"]["readings_scored"] > 0


def test_batch_scoring_reads_a_fleets_inputs_and_judges_its_limits(plant, tmp_path):
    fleet = load_fleet(plant)
    spike = "2024-05-02T03:00:30Z,pump-1,25.0,0.2,1,north"  # beyond the sensor's 16 bar
    parsed = parse_table_files([plant_csv(tmp_path / "plant.csv", rows=600, extra=[spike])], fleet)
    root = tmp_path / "lake"
    lake.claim_lake(root, fleet)
    lake.write_days(parsed.rows, root, fleet)
    model = AnomalyModel(model_for_fleet(fleet, window=4, hidden=(8, 2)), seed=0)
    scored = score_lake(root, lake.list_partitions(root), model.to_bytes(), quantile=0.99)
    assert scored.height == 1201
    flagged = scored.filter(pl.col("out_of_range"))
    assert flagged.select("device_id", "ts").rows() == [
        ("pump-1", datetime(2024, 5, 2, 3, 0, 30, tzinfo=UTC))
    ]

    # The anomaly report reads the lake's flags and the scores, whatever the fleet measures.
    write_scored(scored, tmp_path / "evaluations", 0, lake.list_partitions(root))
    report = build_report(root, tmp_path / "evaluations", tmp_path / "report")
    assert report.per_device["device_id"].sort().to_list() == ["pump-1", "pump-2"]
    assert report.totals["readings"] == 1201 and report.totals["out_of_range"] == 1


def test_a_fleets_default_model_scores_its_features_reads_its_inputs_and_floors_at_its_resolutions(plant):
    fleet = load_fleet(plant)
    model = model_for_fleet(fleet)
    assert (model.features, model.inputs) == (("pressure", "vibration"), ("valve_open",))
    assert model.min_std == (0.01, 0.0, 0.0) and model.time_features  # clock times: the hour is an input
    smap = model_for_fleet(NASA_SMAP, window=8)
    assert smap.inputs == tuple(f"cmd_{i:02d}" for i in range(1, 25)) and not smap.time_features
    assert smap.window == 8 and model_for_fleet(fleet, ["pressure"]).columns == ("pressure", "valve_open")
