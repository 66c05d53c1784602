"""Which network each device runs: window autoencoder vs next-step forecaster, by measurement.

    python benchmarks/model_choice.py [--intel PATH] [--devices N --days D] [--seeds S ...]

Labelled data is made in memory for each seed: a synthetic fleet (generate_fleet -> parse_files ->
inject_anomalies) and, when the folder exists, the 9 real Intel Lab motes (default
../shared/data/intel_lab) with injected anomalies. Each device gets its own detector, fed its
readings in time order through ``process_many`` (score, judge, then learn), as the stream trainer
does. Metrics use the readings after the detector's warm-up that the source flags neither
out_of_range nor low_battery (a dying mote's readings are real anomalies that carry no injected
label): PR-AUC, point F1 with the alarm at a fixed quantile of the scores, PR-AUC per anomaly type
(that type against normal readings), and the point F1 and alarms per device-day of the detector's
own online thresholds (the default streaming quantile, and SPOT). The rolling z-score baseline is
scored on the same readings. Throughput is learn+score readings/s of the default detector on one
device's stream at several call sizes, against the z-score baseline in the same run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from flead.datasets.inject import ANOMALY_TYPES, inject_anomalies
from flead.datasets.intel_lab import parse_files, resolve_source
from flead.datasets.synthetic import generate_fleet
from flead.evaluation.metrics import average_precision, point_scores
from flead.evaluation.zscore import rolling_zscore
from flead.model import ModelConfig, OnlineDetector, SpotThreshold, TrainConfig

DEFAULT_INTEL = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"
QUANTILES = (0.95, 0.99)
VARIANTS: dict[str, ModelConfig] = {
    "autoencoder": ModelConfig(),  # the default: window 16, hidden (64, 8), tanh
    "forecaster": ModelConfig(kind="forecaster", window=16, hidden=(32, 32), activation="relu"),
    "forecaster_tanh": ModelConfig(kind="forecaster", window=16, hidden=(32, 32), activation="tanh"),
}
CALL_SIZES = (1_000, 100, 10)


def synthetic_labelled(devices: int, days: int, seed: int) -> pl.DataFrame:
    with tempfile.TemporaryDirectory(prefix="flead-bench-") as tmp:
        fleet = generate_fleet(tmp, n_devices=devices, days=days, seed=seed)
        rows = parse_files(fleet.paths, mote_ids=range(1, devices + 1)).rows
    return inject_anomalies(rows, seed=seed).readings.sort("device_id", "ts")


def intel_labelled(path: Path, seed: int) -> pl.DataFrame:
    return inject_anomalies(parse_files(resolve_source(path)).rows, seed=seed).readings.sort(
        "device_id", "ts"
    )


def run_detectors(frame: pl.DataFrame, config: ModelConfig, spot: bool = False) -> tuple[pl.DataFrame, float]:
    """score / threshold / is_anomaly per reading of `frame`, and the seconds spent in process_many."""
    parts, seconds = [], 0.0
    for _, device in frame.group_by("device_id", maintain_order=True):
        detector = OnlineDetector(config, threshold=SpotThreshold() if spot else None)
        start = time.perf_counter()
        parts.append(detector.process_many(device))
        seconds += time.perf_counter() - start
    return pl.concat(parts), seconds


def online(frame: pl.DataFrame, alarms: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> dict:
    scores = point_scores(alarms[keep], labels)
    days = frame.filter(pl.Series(keep)).select("device_id", pl.col("ts").dt.date()).n_unique()
    return {
        "f1": round(scores.f1 or 0.0, 4),
        "precision": round(scores.precision or 0.0, 4),
        "recall": round(scores.recall or 0.0, 4),
        "alarms_per_device_day": round(float(alarms[keep].sum()) / days, 2),
    }


def quality(frame: pl.DataFrame, scores: np.ndarray, keep: np.ndarray) -> dict:
    labels = frame["label"].to_numpy()[keep].astype(bool)
    score = scores[keep]
    kinds = frame["anomaly_type"].to_numpy()[keep]
    out = {"pr_auc": round(average_precision(score, labels), 4)}
    for q in QUANTILES:
        out[f"f1_at_q{q}"] = round(point_scores(score > np.quantile(score, q), labels).f1 or 0.0, 4)
    out["pr_auc_by_type"] = {
        kind: round(
            average_precision(score[(kinds == kind) | ~labels], kinds[(kinds == kind) | ~labels] == kind), 3
        )
        for kind in ANOMALY_TYPES
        if (kinds == kind).any()
    }
    return out


def evaluate(frame: pl.DataFrame) -> dict:
    trusted = ~(frame["out_of_range"] | frame["low_battery"]).to_numpy()
    results: dict = {"readings": frame.height, "devices": frame["device_id"].n_unique()}
    judged_by_all = trusted.copy()
    for name, config in VARIANTS.items():
        out, seconds = run_detectors(frame, config)
        keep = trusted & np.isfinite(out["threshold"].to_numpy())
        judged_by_all &= keep
        labels = frame["label"].to_numpy()[keep].astype(bool)
        spot, _ = run_detectors(frame, config, spot=True)
        spot_keep = trusted & np.isfinite(spot["threshold"].to_numpy())
        results[name] = {
            "readings_scored": int(keep.sum()),
            "label_rate": round(float(labels.mean()), 4),
            **quality(frame, out["score"].to_numpy(), keep),
            "online_quantile": online(frame, out["is_anomaly"].to_numpy(), labels, keep),
            "online_spot": online(
                frame,
                spot["is_anomaly"].to_numpy(),
                frame["label"].to_numpy()[spot_keep].astype(bool),
                spot_keep,
            ),
            "readings_per_s": round(frame.height / seconds),
        }
    zscore = rolling_zscore(frame, VARIANTS["autoencoder"].features).fill_null(0.0).to_numpy()
    results["baseline_rolling_zscore"] = quality(frame, zscore, judged_by_all)
    return results


def throughput(frame: pl.DataFrame, repeat: int = 3) -> dict:
    """Learn+score readings/s of the default detector on the longest device stream, by call size."""
    device = frame.filter(pl.col("device_id") == frame["device_id"].mode()[0]).select(
        "ts", *VARIANTS["autoencoder"].features
    )
    out = {"readings": device.height}

    def best(run) -> float:
        timings = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            timings.append(time.perf_counter() - start)
        return device.height / min(timings)

    for size in CALL_SIZES:
        batches = [device.slice(i, size) for i in range(0, device.height, size)]

        def process(batches=batches) -> None:
            detector = OnlineDetector()
            for batch in batches:
                detector.process_many(batch)

        out[f"learn_score_per_s_calls_of_{size}"] = round(best(process))
    trained = OnlineDetector()
    trained.process_many(device)
    out["score_only_per_s_calls_of_1000"] = round(
        best(lambda: [trained.score_many(device.slice(i, 1_000)) for i in range(0, device.height, 1_000)])
    )
    baseline = best(lambda: rolling_zscore(device, VARIANTS["autoencoder"].features, device=None))
    out["baseline_rolling_zscore_per_s"] = round(baseline)
    out["learn_score_vs_baseline_calls_of_1000"] = round(out["learn_score_per_s_calls_of_1000"] / baseline, 4)
    return out


def summarise(datasets: dict[str, dict[str, dict]]) -> dict:
    names = [*VARIANTS, "baseline_rolling_zscore"]
    summary: dict = {}
    for name in names:
        row = {}
        for dataset, by_seed in datasets.items():
            for metric in ("pr_auc", "f1_at_q0.95", "f1_at_q0.99"):
                values = [run[name][metric] for run in by_seed.values()]
                row[f"{dataset}_{metric}"] = round(float(np.mean(values)), 4)
            if name in VARIANTS:
                for kind in ("online_quantile", "online_spot"):
                    row[f"{dataset}_{kind}_f1"] = round(
                        float(np.mean([r[name][kind]["f1"] for r in by_seed.values()])), 4
                    )
        row["pr_auc_mean_over_datasets"] = round(
            float(np.mean([v for k, v in row.items() if k.endswith("_pr_auc")])), 4
        )
        summary[name] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intel", type=Path, default=DEFAULT_INTEL)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    datasets: dict[str, dict[str, dict]] = {"synthetic": {}, "intel_lab": {}}
    frames = {}
    for seed in args.seeds:
        frames["synthetic"] = synthetic_labelled(args.devices, args.days, seed)
        datasets["synthetic"][f"seed_{seed}"] = evaluate(frames["synthetic"])
        if args.intel.exists():
            frames["intel_lab"] = intel_labelled(args.intel, seed)
            datasets["intel_lab"][f"seed_{seed}"] = evaluate(frames["intel_lab"])
    datasets = {name: runs for name, runs in datasets.items() if runs}
    summary = summarise(datasets)
    report = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "variants": {name: config.to_dict() for name, config in VARIANTS.items()},
        "train": TrainConfig().to_dict(),
        "summary": summary,
        "best_by_pr_auc": max(VARIANTS, key=lambda name: summary[name]["pr_auc_mean_over_datasets"]),
        "throughput": throughput(frames.get("intel_lab", frames["synthetic"])),
        "datasets": datasets,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
