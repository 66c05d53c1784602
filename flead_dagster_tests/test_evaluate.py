"""`flead evaluate` on labelled CSV files (one device per file) and on the lake's labelled benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flead.config import Settings
from flead.datasets import pipeline
from flead.datasets.inject import InjectionConfig, inject_anomalies
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.loader import LabelledSeries
from flead.evaluation.runner import EvaluationPlan, evaluate
from flead.schema import MEASUREMENTS

FLEAD = str(Path(sys.executable).parent / "flead")
MODES = ("federated", "local", "centralized", "zscore")


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory) -> Path:
    """Four devices as `;`-separated CSV files, two folders with equal file names."""
    root = tmp_path_factory.mktemp("csv")
    fleet = generate_fleet(root / "raw", n_devices=4, days=2, seed=21, failing_fraction=0.0)
    labelled = inject_anomalies(
        parse_files(fleet.paths, range(1, 5)).rows, InjectionConfig(spike_rate=3.0), seed=2
    )
    readings = labelled.readings.sort("device_id", "ts")
    for i, ((device,), part) in enumerate(sorted(readings.partition_by("device_id", as_dict=True).items())):
        out = root / "data" / f"site-{'ab'[i // 2]}" / f"{i % 2}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        part.select(
            pl.col("ts").dt.strftime("%Y-%m-%d %H:%M:%S").alias("time"),
            "temperature",
            "humidity",
            "light",
            pl.col("label").alias("anomaly"),
        ).write_csv(out, separator=";")
        del device
    return root / "data"


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([FLEAD, "evaluate", *args], env=env, capture_output=True, text=True, timeout=600)


def test_all_modes_on_csv_files_with_a_train_fraction(csv_folder, tmp_path):
    out = tmp_path / "results.json"
    args = [str(csv_folder), "--sep", ";", "--time", "time", "--label", "anomaly", "--train-fraction", "0.4"]
    result = run(tmp_path / "home", *args, *(a for m in MODES for a in ("-m", m)), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert set(report["results"]) == set(MODES)
    assert report["setup"]["features"] == ["temperature", "humidity", "light"]
    for mode in MODES:
        r = report["results"][mode]
        assert set(r["devices"]) == {"site-a/0", "site-a/1", "site-b/0", "site-b/1"}
        assert r["readings_scored"] == sum(d["readings"] for d in r["devices"].values())
        assert r["readings_trained"] > 0 and 0 <= r["pooled"]["point"]["recall"] <= 1
        assert r["pooled"]["pr_auc"] is not None
    for column in ("point F1", "event F1", "PR-AUC"):
        assert column in result.stdout


def test_online_mode_scores_every_reading(csv_folder, tmp_path):
    out = tmp_path / "online.json"
    result = run(
        tmp_path / "home",
        str(csv_folder),
        "--sep",
        ";",
        "--label",
        "anomaly",
        "--online",
        "-m",
        "local",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    r = json.loads(out.read_text())["results"]["local"]
    total = sum(pl.read_csv(p, separator=";").height for p in csv_folder.rglob("*.csv"))
    assert r["readings_trained"] == 0 and r["readings_scored"] == total


def test_bad_input_is_a_clear_error(csv_folder, tmp_path):
    wrong_sep = run(tmp_path / "home", str(csv_folder), "--label", "anomaly")
    assert wrong_sep.returncode == 1 and "error:" in wrong_sep.stdout and "Traceback" not in wrong_sep.stderr
    bad_mode = run(tmp_path / "home", str(csv_folder), "-m", "magic")
    assert bad_mode.returncode == 1 and "unknown mode" in bad_mode.stdout
    no_lake = run(tmp_path / "empty-home")
    assert no_lake.returncode == 1 and "flead data inject" in no_lake.stdout


def test_default_is_the_lakes_labelled_benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEAD_HOME", str(tmp_path / "home"))
    settings = Settings()
    raw = pipeline.acquire(settings, pipeline.SourceKind.SYNTHETIC, synthetic=pipeline.SyntheticSpec(3, 3, 1))
    pipeline.stage(raw, settings)
    pipeline.write_lake_days(settings, pipeline.dataset_days(settings)[:3])
    pipeline.label_lake(settings, seed=4)
    result = run(tmp_path / "home", "-m", "zscore", "-m", "federated")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "labelled benchmark" in result.stdout and "out-of-range readings left out" in result.stdout
    saved = json.loads((tmp_path / "home" / "evaluations" / "evaluation.json").read_text())
    assert set(saved["results"]) == {"zscore", "federated"}
    assert saved["results"]["federated"]["global_versions"] > 0


def test_the_neural_detectors_beat_the_zscore_baseline_on_injected_anomalies(tmp_path):
    fleet = generate_fleet(tmp_path, n_devices=6, days=4, seed=3, failing_fraction=0.0)
    labelled = inject_anomalies(parse_files(fleet.paths, range(1, 7)).rows, seed=1).readings.sort(
        "device_id", "ts"
    )
    frame = labelled.select("device_id", "ts", *MEASUREMENTS, pl.col("label").cast(pl.Int8), "event_id")
    series = LabelledSeries(frame=frame, features=MEASUREMENTS, files=())
    pooled = {
        mode: evaluate(series, EvaluationPlan(mode=mode, train_fraction=0.3)).evaluation.pooled
        for mode in MODES
    }
    for mode in ("federated", "local", "centralized"):
        assert pooled[mode].point.f1 > pooled["zscore"].point.f1 + 0.1, mode
        assert pooled[mode].pr_auc > pooled["zscore"].pr_auc, mode
