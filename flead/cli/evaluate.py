"""`flead evaluate`: detection quality of any labelled sensor data, read against references."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flead.cli.output import console, fail
from flead.config import Settings
from flead.datasets import lake
from flead.evaluation.loader import LabelledSeries, load_labelled, load_train_test
from flead.evaluation.references import REFERENCES
from flead.evaluation.runner import (
    DETECTOR_MODES,
    EvaluationPlan,
    describe_split,
    evaluate,
    load_lake_benchmark,
)
from flead.federated.config import AggregationConfig
from flead.federated.simulate import SimulationConfig

DEFAULT_TRAIN_FRACTION = 0.3  # without a split, a given part or --online
PLAN = EvaluationPlan(train_fraction=DEFAULT_TRAIN_FRACTION)  # the defaults the options show
LABELS = {
    "zscore": "z-score",
    "pca": "PCA T²+Q",
    "flag_everything": "flag everything",
    "flag_nothing": "flag nothing",
}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else f"{value:,}"


def evaluate_command(
    paths: list[Path] = typer.Argument(
        None, help="CSV / Parquet files or folders (default: the lake's labelled benchmark)."
    ),
    train: list[Path] = typer.Option(
        None, "--train", help="Train part: files or folders (repeat the option for more); needs --test."
    ),
    test: list[Path] = typer.Option(
        None, "--test", help="Test part, scored; devices matched to --train by --device or by file name."
    ),
    split_column: str = typer.Option(
        None, "--split-col", help="Column saying train / test per reading (or 0 = train, 1 = test)."
    ),
    mode: list[str] = typer.Option(
        ["federated"],
        "--mode",
        "-m",
        help=f"Detector modes: {', '.join(DETECTOR_MODES)}. The references {', '.join(REFERENCES)} "
        "are always evaluated too (naming only references evaluates just them).",
    ),
    separator: str = typer.Option(
        None,
        "--sep",
        help="CSV field separator (default ',', tab for .tsv; '\\t' or tab = tab); any file extension is "
        "then CSV. A header holding another separator (; tab | ,) but not this one is refused with a hint.",
    ),
    time_column: str = typer.Option(None, "--time", help="Time column (default: row order is time order)."),
    time_format: str = typer.Option(None, help="strftime format of the time column (default: inferred)."),
    device_column: str = typer.Option(
        None,
        "--device",
        help="Device column. Without it every file is one device, and a file with a column that looks "
        "like a device id (device, device_id, sensor, mote, node, id, ... with several values) is "
        "refused rather than read as one device: pass its name, or --one-device-per-file.",
    ),
    one_device_per_file: bool = typer.Option(
        False,
        "--one-device-per-file",
        help="Read every file as one device even when a column looks like a device id.",
    ),
    label_column: str = typer.Option("label", "--label", help="Label column; non-zero = anomaly."),
    features: str = typer.Option(
        None,
        help="Comma-separated feature columns, patterns allowed (cmd_*) (default: every numeric column).",
    ),
    inputs: str = typer.Option(
        None,
        help="Comma-separated columns (patterns allowed) the detectors take as inputs without scoring them.",
    ),
    train_fraction: float = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help=f"Fit on the first F of each device's rows (default {DEFAULT_TRAIN_FRACTION} without a split).",
    ),
    train_rows: int = typer.Option(None, min=0, help="Fit on the first N rows of each device."),
    online: bool = typer.Option(False, help="Prequential: score every reading, then learn from it."),
    quantile: float = typer.Option(
        None,
        min=0.5,
        max=0.99999,
        help="Detector modes: the old alarm budget (this quantile of a device's scores), not calibration.",
    ),
    false_alarm_rate: float = typer.Option(
        PLAN.false_alarm_rate,
        min=1e-9,
        max=0.5,
        help="Per-reading false-alarm target of every threshold calibrated on normal data.",
    ),
    pca_variance: float = typer.Option(
        PLAN.pca_variance,
        min=0.01,
        max=1.0,
        help="PCA reference: share of variance the kept components explain.",
    ),
    dp_mode: str = typer.Option(
        None, help="Federated mode's device-level DP: off, local or central (default FLEAD_DP_MODE)."
    ),
    dp_clip_norm: float = typer.Option(None, min=0, help="DP clip norm (default FLEAD_DP_CLIP_NORM)."),
    dp_noise_multiplier: float = typer.Option(
        None, min=0, help="DP noise multiplier (default FLEAD_DP_NOISE_MULTIPLIER)."
    ),
    dp_epsilon_budget: float = typer.Option(
        None,
        min=0,
        help="Epsilon past which a device's updates are refused (default FLEAD_DP_EPSILON_BUDGET).",
    ),
    out: Path = typer.Option(None, help="JSON results file (default HOME/evaluations/evaluation.json)."),
) -> None:
    """Measure detection quality (point P/R/F1, FAR, MAR, event F1, PR-AUC) against the references."""
    settings = Settings()
    unknown = [m for m in mode if m not in (*DETECTOR_MODES, *REFERENCES)]
    if unknown:
        raise fail(f"unknown mode(s) {unknown}; choose from {', '.join(DETECTOR_MODES)}")
    detector_modes = [m for m in DETECTOR_MODES if m in mode]
    if bool(train) != bool(test):
        raise fail("give both --train and --test")
    if train and paths:
        raise fail("give either PATHS or --train / --test, not both")
    if train and split_column:
        raise fail("give either --train / --test or --split-col, not both")
    given_split = bool(train) or split_column is not None
    chosen = (train_fraction is not None) + (train_rows is not None) + online
    if given_split and chosen:
        raise fail(
            "the data is split by --train / --test or --split-col: "
            "drop --train-fraction / --train-rows / --online"
        )
    if chosen > 1:
        raise fail("choose one of --train-fraction, --train-rows and --online")
    if not given_split and not chosen:
        train_fraction = DEFAULT_TRAIN_FRACTION
    if split_column and not paths:
        raise fail("--split-col needs PATHS")
    options = {
        "label": label_column,
        "separator": separator,
        "time": time_column,
        "time_format": time_format,
        "device": device_column,
        "one_device_per_file": one_device_per_file,
        "features": [*_names(features), *_names(inputs)] if features else None,
    }
    unmatched: list[str] = []
    dropped = 0
    try:
        if train:
            series, unmatched = load_train_test(train, test, **options)
            source = f"train {', '.join(map(str, train))}; test {', '.join(map(str, test))}"
        elif paths:
            series = load_labelled(paths, split=split_column, **options)
            source = ", ".join(str(p) for p in paths)
        else:
            series, dropped = load_lake_benchmark(Path(settings.labelled_dir))
            source = f"labelled benchmark {settings.labelled_dir}"
            if inputs is None:  # the fleet schema's inputs explain its features: read, not scored
                inputs = ",".join(lake.lake_fleet(Path(settings.labelled_dir)).input_names) or None
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None

    chosen_inputs = tuple(
        column for column in series.features if any(fnmatch.fnmatch(column, p) for p in _names(inputs))
    )
    if inputs and not chosen_inputs:
        raise fail(f"--inputs {inputs!r} matches no column of the data ({', '.join(series.features)})")

    overrides = {
        "mode": dp_mode,
        "clip_norm": dp_clip_norm,
        "noise_multiplier": dp_noise_multiplier,
        "epsilon_budget": dp_epsilon_budget,
    }
    try:
        privacy = replace(settings.privacy(), **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise fail(str(exc)) from None
    simulation = SimulationConfig(aggregation=AggregationConfig(privacy=privacy))

    def plan(m: str) -> EvaluationPlan:
        return EvaluationPlan(
            simulation=simulation,
            mode=m,
            train_fraction=train_fraction,
            train_rows=train_rows,
            online=online,
            given_split=given_split,
            threshold_quantile=quantile,
            false_alarm_rate=false_alarm_rate,
            pca_variance=pca_variance,
            inputs=chosen_inputs,
        )

    try:
        split = describe_split(series, plan(REFERENCES[0]))
    except ValueError as exc:
        raise fail(str(exc)) from None
    _print_source(series, source, dropped, split, unmatched)
    results = {}
    with Progress(
        TextColumn("{task.description:16s}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        for m in (*detector_modes, *REFERENCES):
            task = bar.add_task(m, total=None)
            try:
                outcome = evaluate(
                    series,
                    plan(m),
                    lambda done, total, task=task: bar.update(task, completed=done, total=total),
                )
            except ValueError as exc:
                raise fail(str(exc)) from None
            bar.remove_task(task)
            results[m] = outcome.to_dict()
    _print(results)
    if "federated" in results:
        console.print(privacy_line(results["federated"]["privacy"]), highlight=False)
    path = out or Path(settings.home) / "evaluations" / "evaluation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    setup = {
        "source": source,
        "features": [f for f in series.features if f not in chosen_inputs],
        "inputs": list(chosen_inputs),
        "readings": series.frame.height,
        "split": "train/test files" if train else f"column {split_column}" if split_column else None,
        "train_fraction": train_fraction,
        "train_rows": train_rows,
        "online": online,
        "threshold_quantile": quantile,
        "false_alarm_rate": false_alarm_rate,
        "pca_variance": pca_variance,
        "privacy": privacy.to_dict(),
        "parts": split,
    }
    path.write_text(json.dumps({"setup": setup, "results": results}, indent=2, allow_nan=False))
    console.print(f"results: {path}")


def _print_source(
    series: LabelledSeries, source: str, dropped: int, split: dict, unmatched: list[str]
) -> None:
    frame = series.frame
    console.print(
        f"{frame.height:,} readings of {frame['device_id'].n_unique()} devices from {source}; "
        f"features {', '.join(series.features)}; {frame['label'].mean():.2%} labelled"
        + (f"; {dropped:,} out-of-range readings left out" if dropped else "")
    )
    if not split.get("online"):
        console.print(
            f"train part (taken as normal) {split['train_readings']:,} readings, "
            f"scored {split['scored_readings']:,}"
        )
    if split.get("train_labelled"):
        by_device = split["train_labelled_by_device"]
        examples = ", ".join(f"{d} {n:,}" for d, n in list(by_device.items())[:5])
        console.print(
            f"[yellow]warning:[/] the train part holds {split['train_labelled']:,} labelled readings on "
            f"{len(by_device)} devices ({examples}); they train and calibrate as normal",
            highlight=False,
        )
    if without := split.get("scored_devices_without_train_part") or unmatched:
        console.print(
            f"note: {len(without)} scored devices have no train part ({', '.join(without[:5])}"
            f"{', ...' if len(without) > 5 else ''}); they are judged without one, or left unjudged"
        )


def _names(option: str | None) -> list[str]:
    return [name.strip() for name in option.split(",") if name.strip()] if option else []


def privacy_line(privacy: dict) -> str:
    """What the federated run's updates released, in a sentence."""
    if privacy["mode"] == "off":
        return (
            "federated privacy: no DP (FLEAD_DP_MODE=off or --dp-mode): the updates' leakage is not bounded"
        )
    budget = privacy["epsilon_budget"]
    return (
        f"federated privacy: {privacy['mode']} DP, clip norm {privacy['clip_norm']:g}, noise multiplier "
        f"{privacy['noise_multiplier']:g}, delta {privacy['delta']:g}"
        + (f", budget {budget:g}" if budget is not None else ", no budget")
        + f": the final global model carries epsilon {privacy['model_epsilon']:.3g}; devices' epsilon "
        f"max {privacy['max_device_epsilon']:.3g}, median {privacy['median_device_epsilon']:.3g} "
        "(dp-accounting RDP, a device's readings replaced, no sampling amplification)"
    )


def _print(results: dict) -> None:
    table = Table(
        title="detection quality (pooled over all scored readings; the references on the same split)",
        caption="FAR = false alarms / unlabelled readings, MAR = missed / labelled readings; event F1 counts "
        "the data's events; seq-event F1 = the SMAP/MSL definition (labelled runs detected by any alarm "
        "inside; an alarm run touching none is one false positive); unjudged readings raise no alarm",
    )
    columns = (
        "mode",
        "point P",
        "point R",
        "point F1",
        "FAR",
        "MAR",
        "event F1",
        "seq-event F1",
        "PR-AUC",
        "alarms",
        "judged",
        "unjudged",
        "false alarms / device-day",
        "s per M readings",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "mode" else "right")
    reasons = []
    for mode, r in results.items():
        pooled = r["pooled"]
        if r["kind"] == "reference" and mode == REFERENCES[0] and table.row_count:
            table.add_section()
        table.add_row(
            LABELS.get(mode, mode),
            _fmt(pooled["point"]["precision"]),
            _fmt(pooled["point"]["recall"]),
            _fmt(pooled["point"]["f1"]),
            _fmt(pooled["point"]["false_alarm_rate"]),
            _fmt(pooled["point"]["missed_alarm_rate"]),
            _fmt(pooled["event"]["f1"]),
            _fmt(pooled["event_sequence"]["f1"]),
            _fmt(pooled["pr_auc"]),
            _fmt(pooled["alarms"]),
            _fmt(pooled["judged"]),
            _fmt(sum(pooled["unjudged"].values())),
            _fmt(pooled["false_alarms_per_device_day"]),
            _fmt(r["seconds_per_million_readings"]),
        )
        reasons += [f"{LABELS.get(mode, mode)}: {n:,} {why}" for why, n in pooled["unjudged"].items()]
    console.print(table)
    if reasons:
        console.print("unjudged readings, why: " + "; ".join(reasons), highlight=False)
    detectors = [m for m, r in results.items() if r["kind"] == "detector"]
    shown = detectors[-1] if detectors else "pca"
    per_device = Table(title=f"per device ({LABELS.get(shown, shown)}; point F1 of the references beside)")
    for column in (
        "device",
        "readings",
        "labelled",
        "point F1",
        "FAR",
        "event F1",
        "seq-event F1",
        "PR-AUC",
        "unjudged",
        "z-score F1",
        "PCA F1",
    ):
        per_device.add_column(column, justify="left" if column == "device" else "right")
    for device, report in sorted(results[shown]["devices"].items()):
        per_device.add_row(
            device,
            _fmt(report["readings"]),
            _fmt(report["labelled"]),
            _fmt(report["point"]["f1"]),
            _fmt(report["point"]["false_alarm_rate"]),
            _fmt(report["event"]["f1"]),
            _fmt(report["event_sequence"]["f1"]),
            _fmt(report["pr_auc"]),
            _fmt(sum(report["unjudged"].values())),
            _fmt(results["zscore"]["devices"][device]["point"]["f1"]),
            _fmt(results["pca"]["devices"][device]["point"]["f1"]),
        )
    console.print(per_device)
