"""`flead evaluate` on labelled CSV files (one device per file), on train/test files, with a split
column, and on the lake's labelled benchmark; the references always in the same table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flead.config import Settings
from flead.datasets import pipeline
from flead.datasets.inject import InjectionConfig, inject_anomalies
from flead.datasets.intel_lab import parse_files
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.loader import LabelledSeries
from flead.evaluation.references import REFERENCES
from flead.evaluation.runner import DETECTOR_MODES, EvaluationPlan, evaluate
from flead.privacy import rdp_epsilon
from flead.schema import MEASUREMENTS

FLEAD = str(Path(sys.executable).parent / "flead")
MODES = (*DETECTOR_MODES, "zscore")


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
    assert set(report["results"]) == {*DETECTOR_MODES, *REFERENCES}
    assert report["setup"]["features"] == ["temperature", "humidity", "light"]
    for mode in report["results"]:
        r = report["results"][mode]
        assert set(r["devices"]) == {"site-a/0", "site-a/1", "site-b/0", "site-b/1"}
        assert r["readings_scored"] == sum(d["readings"] for d in r["devices"].values())
        assert r["readings_trained"] > 0 and 0 <= r["pooled"]["point"]["recall"] <= 1
        assert r["pooled"]["pr_auc"] is not None
    for column in ("point F1", "FAR", "MAR", "event F1", "seq-event F1", "PR-AUC", "judged", "unjudged"):
        assert column in result.stdout
    for reference in ("z-score", "PCA T²+Q", "flag everything", "flag nothing"):
        assert reference in result.stdout
    trained = {r["readings_trained"] for r in report["results"].values()}
    assert len(trained) == 1  # the detector modes and the references on the same split


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


def test_federated_mode_reports_the_privacy_its_updates_released(csv_folder, tmp_path):
    out = tmp_path / "private.json"
    common = [str(csv_folder), "--sep", ";", "--time", "time", "--label", "anomaly", "-m", "federated"]
    dp = [
        "--dp-mode",
        "local",
        "--dp-clip-norm",
        "0.5",
        "--dp-noise-multiplier",
        "3",
        "--dp-epsilon-budget",
        "9",
    ]
    result = run(tmp_path / "home", *common, *dp, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    privacy = json.loads(out.read_text())["results"]["federated"]["privacy"]
    sent = privacy["max_updates_per_device"]
    # The devices' epsilon is the accountant's for what they sent; the model carries the worst of them.
    assert privacy["max_device_epsilon"] == pytest.approx(rdp_epsilon(3.0, sent, 1e-5))
    assert sent >= 1 and 0 < privacy["max_device_epsilon"] <= 9
    assert privacy["model_epsilon"] == pytest.approx(privacy["max_device_epsilon"])
    assert f"the final global model carries epsilon {privacy['model_epsilon']:.3g}" in result.stdout
    plain = run(tmp_path / "home", *common, "--dp-mode", "off", "--out", str(out))
    assert "federated privacy: no DP" in plain.stdout
    wrong = run(tmp_path / "home", *common, "--dp-mode", "sometimes")
    assert wrong.returncode == 1 and "mode must be one of off, local, central" in wrong.stdout


def test_bad_input_is_a_clear_error(csv_folder, tmp_path):
    wrong_sep = run(tmp_path / "home", str(csv_folder), "--label", "anomaly")
    assert wrong_sep.returncode == 1 and "error:" in wrong_sep.stdout and "Traceback" not in wrong_sep.stderr
    assert "pass --sep ';'" in wrong_sep.stdout
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
    assert set(saved["results"]) == {"federated", *REFERENCES}
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


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def channel(rng: np.random.Generator, n: int, shift_at: int | None, quote: str = "") -> str:
    """A device's readings as CSV text: time, two correlated features, label; broken from shift_at."""
    t0 = datetime(2004, 2, 29)
    base = rng.normal(size=n)
    lines = ["time,a,b,label"]
    for i in range(n):
        broken = shift_at is not None and i >= shift_at
        b = 2 * base[i] + 0.1 * rng.normal() - (3.0 if broken else 0.0)
        stamp = (t0 + timedelta(seconds=30 * i)).isoformat()
        lines.append(f"{quote}{stamp}{quote},{base[i] + 0.1 * rng.normal():.4f},{b:.4f},{int(broken)}")
    return "\n".join(lines) + "\n"


def train_test_files(tmp_path: Path, seed: int) -> list[str]:
    """Two devices: 600 normal train readings each, 400 test readings broken from the 300th."""
    rng = np.random.default_rng(seed)
    for name in ("m1", "m2"):
        write(tmp_path / "train" / f"{name}.csv", channel(rng, 600, None))
        write(tmp_path / "test" / f"{name}.csv", channel(rng, 400, 300))
    return ["--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--time", "time"]


def test_train_and_test_files_with_the_references_on_the_same_split(tmp_path):
    out = tmp_path / "tt.json"
    args = train_test_files(tmp_path, 5)
    result = run(tmp_path / "home", *args, "-m", "local", "--false-alarm-rate", "0.001", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["setup"]["split"] == "train/test files"
    assert report["setup"]["parts"]["train_readings"] == 1200
    assert set(report["results"]) == {"local", *REFERENCES}
    for mode, r in report["results"].items():
        assert r["readings_trained"] == 1200 and r["readings_scored"] == 800, mode
        assert set(r["devices"]) == {"m1", "m2"}, mode
        pooled = r["pooled"]
        assert pooled["judged"] + sum(pooled["unjudged"].values()) == 800, mode
        for device in r["devices"].values():  # pooled counts are sums over devices
            assert device["event_sequence"]["events"] == 1
        assert pooled["event_sequence"]["events"] == 2, mode
    pca = report["results"]["pca"]["pooled"]
    assert pca["point"]["f1"] > 0.9 and pca["point"]["false_alarm_rate"] < 0.02
    assert report["results"]["flag_everything"]["pooled"]["point"]["false_alarm_rate"] == 1.0
    # The detector's warm-up is reported as unjudged readings with the reason.
    local = report["results"]["local"]["pooled"]
    assert local["unjudged"] == {} or "no threshold yet" in next(iter(local["unjudged"]))


def test_a_split_column_and_its_unknown_values(tmp_path):
    rng = np.random.default_rng(6)
    text = channel(rng, 500, 400).splitlines()
    rows = [text[0] + ",part"] + [
        f"{line},{'train' if i < 300 else 'test'}" for i, line in enumerate(text[1:])
    ]
    rows[5] = rows[5].rsplit(",", 1)[0] + ",Train"  # any case
    path = write(tmp_path / "d" / "m1.csv", "\n".join(rows) + "\n")
    out = tmp_path / "split.json"
    args = [str(path), "--time", "time", "--split-col", "part", "-m", "zscore", "--out", str(out)]
    result = run(tmp_path / "home", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert set(report["results"]) == set(REFERENCES)  # naming only references evaluates just them
    assert report["setup"]["features"] == ["a", "b"]
    assert all(r["readings_trained"] == 300 for r in report["results"].values())
    write(tmp_path / "bad" / "m1.csv", "time,a,label,part\n2004-01-01,1,0,train\n2004-01-02,2,0,validation\n")
    bad = run(tmp_path / "home", str(tmp_path / "bad"), "--time", "time", "--split-col", "part", "-m", "pca")
    assert bad.returncode == 1 and "neither train / test" in bad.stdout and "validation" in bad.stdout
    both = run(tmp_path / "home", str(path), "--split-col", "part", "--train-fraction", "0.5")
    assert both.returncode == 1 and "drop --train-fraction" in both.stdout


def test_a_labelled_train_part_is_reported_and_warned_about(tmp_path):
    rng = np.random.default_rng(7)
    write(tmp_path / "train" / "m1.csv", channel(rng, 300, 250))  # the "normal" part holds 50 labelled
    write(tmp_path / "test" / "m1.csv", channel(rng, 300, 200))
    out = tmp_path / "w.json"
    args = [
        "--train",
        str(tmp_path / "train"),
        "--test",
        str(tmp_path / "test"),
        "-m",
        "pca",
        "--out",
        str(out),
    ]
    result = run(tmp_path / "home", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning:" in result.stdout and "50 labelled readings" in result.stdout
    assert json.loads(out.read_text())["setup"]["parts"]["train_labelled_by_device"] == {"m1": 50}


def test_a_quoted_export_with_another_extension_and_a_tab_separator(tmp_path):
    rng = np.random.default_rng(8)
    text = channel(rng, 400, 300, quote="'").replace(",", "\t")
    path = write(tmp_path / "export.dat", text)
    out = tmp_path / "q.json"
    args = [
        str(path),
        "--sep",
        "\\t",
        "--time",
        "time",
        "--train-rows",
        "200",
        "-m",
        "pca",
        "--out",
        str(out),
    ]
    result = run(tmp_path / "home", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["results"]["pca"]["devices"]["export"]["readings"] == 200
    assert report["results"]["pca"]["pooled"]["device_days"] == 1  # the quoted times were parsed
    no_sep = run(tmp_path / "home", str(path), "--time", "time")
    assert no_sep.returncode == 1 and "once a separator is given" in no_sep.stdout


def test_conflicting_inputs_are_clear_errors(tmp_path):
    write(tmp_path / "a.csv", "x,label\n1,0\n")
    only_train = run(tmp_path / "home", "--train", str(tmp_path / "a.csv"))
    assert only_train.returncode == 1 and "give both --train and --test" in only_train.stdout
    mixed = run(tmp_path / "home", str(tmp_path / "a.csv"), "--train", str(tmp_path / "a.csv"), "--test", "x")
    assert mixed.returncode == 1 and "not both" in mixed.stdout


def test_inputs_are_fed_to_the_detectors_and_scored_by_nobody(tmp_path):
    out = tmp_path / "inputs.json"
    args = train_test_files(tmp_path, 8)
    result = run(tmp_path / "home", *args, "--inputs", "a", "-m", "local", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["setup"]["features"] == ["b"] and report["setup"]["inputs"] == ["a"]
    assert report["results"]["local"]["readings_scored"] == 800
    bad = run(tmp_path / "home", *args, "--inputs", "nope*", "-m", "local")
    assert bad.returncode != 0 and "matches no column" in bad.stdout + bad.stderr
