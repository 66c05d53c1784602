"""`flead evaluate`: detection quality of any labelled sensor data, in four modes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flead.cli_output import console, fail
from flead.config import Settings
from flead.evaluation.loader import load_labelled
from flead.evaluation.runner import EVALUATION_MODES, EvaluationPlan, evaluate, load_lake_benchmark


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def evaluate_command(
    paths: list[Path] = typer.Argument(
        None, help="CSV / Parquet files or folders (default: the lake's labelled benchmark)."
    ),
    mode: list[str] = typer.Option(
        ["federated"], "--mode", "-m", help=f"One or more of {', '.join(EVALUATION_MODES)}."
    ),
    separator: str = typer.Option(",", "--sep", help="CSV field separator."),
    time_column: str = typer.Option(None, "--time", help="Time column (default: row order is time order)."),
    time_format: str = typer.Option(None, help="strftime format of the time column (default: inferred)."),
    device_column: str = typer.Option(None, "--device", help="Device column (default: one device per file)."),
    label_column: str = typer.Option("label", "--label", help="Label column; non-zero = anomaly."),
    features: str = typer.Option(
        None, help="Comma-separated feature columns (default: every numeric column)."
    ),
    train_fraction: float = typer.Option(
        None, min=0.0, max=1.0, help="Fit on the first F of each device's rows."
    ),
    train_rows: int = typer.Option(None, min=0, help="Fit on the first N rows of each device."),
    online: bool = typer.Option(False, help="Prequential: score every reading, then learn from it."),
    quantile: float = typer.Option(
        0.98, min=0.5, max=0.99999, help="Alarm above this quantile of a device's scores."
    ),
    out: Path = typer.Option(None, help="JSON results file (default HOME/evaluations/evaluation.json)."),
) -> None:
    """Measure detection quality (point / event F1, PR-AUC, delay, false alarms) on labelled data."""
    settings = Settings()
    unknown = [m for m in mode if m not in EVALUATION_MODES]
    if unknown:
        raise fail(f"unknown mode(s) {unknown}; choose from {', '.join(EVALUATION_MODES)}")
    if (train_fraction is not None) + (train_rows is not None) + online > 1:
        raise fail("choose one of --train-fraction, --train-rows and --online")
    if train_fraction is None and train_rows is None and not online:
        train_fraction = 0.3
    try:
        if paths:
            series = load_labelled(
                paths,
                label=label_column,
                separator=separator,
                time=time_column,
                time_format=time_format,
                device=device_column,
                features=[f.strip() for f in features.split(",")] if features else None,
            )
            source, dropped = ", ".join(str(p) for p in paths), 0
        else:
            series, dropped = load_lake_benchmark(Path(settings.labelled_dir))
            source = f"labelled benchmark {settings.labelled_dir}"
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    frame = series.frame
    console.print(
        f"{frame.height:,} readings of {frame['device_id'].n_unique()} devices from {source}; "
        f"features {', '.join(series.features)}; {frame['label'].mean():.2%} labelled"
        + (f"; {dropped:,} out-of-range readings left out" if dropped else "")
    )
    results = {}
    for m in mode:
        plan = EvaluationPlan(
            mode=m,
            train_fraction=train_fraction,
            train_rows=train_rows,
            online=online,
            threshold_quantile=quantile,
        )
        with Progress(
            TextColumn(f"{m:12s}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(m, total=None)
            try:
                outcome = evaluate(
                    series, plan, lambda done, total, task=task: bar.update(task, completed=done, total=total)
                )
            except ValueError as exc:
                raise fail(str(exc)) from None
        results[m] = outcome.to_dict()
    _print(results)
    path = out or Path(settings.home) / "evaluations" / "evaluation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    setup = {
        "source": source,
        "features": list(series.features),
        "readings": frame.height,
        "train_fraction": train_fraction,
        "train_rows": train_rows,
        "online": online,
        "threshold_quantile": quantile,
    }
    path.write_text(json.dumps({"setup": setup, "results": results}, indent=2, allow_nan=False))
    console.print(f"results: {path}")


def _print(results: dict) -> None:
    table = Table(title="detection quality (pooled over all scored readings)")
    for column in (
        "mode",
        "point P",
        "point R",
        "point F1",
        "event F1",
        "PR-AUC",
        "delay (readings)",
        "false alarms / device-day",
        "s per M readings",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, r in results.items():
        pooled = r["pooled"]
        table.add_row(
            mode,
            _fmt(pooled["point"]["precision"]),
            _fmt(pooled["point"]["recall"]),
            _fmt(pooled["point"]["f1"]),
            _fmt(pooled["event"]["f1"]),
            _fmt(pooled["pr_auc"]),
            _fmt(pooled["delay"]["mean_readings"]),
            _fmt(pooled["false_alarms_per_device_day"]),
            _fmt(r["seconds_per_million_readings"]),
        )
    console.print(table)
    last = next(reversed(results.values()))
    per_device = Table(title=f"per device ({next(reversed(results))})")
    for column in ("device", "readings", "labelled", "point F1", "event F1", "PR-AUC"):
        per_device.add_column(column, justify="left" if column == "device" else "right")
    for device, report in sorted(last["devices"].items()):
        per_device.add_row(
            device,
            str(report["readings"]),
            str(report["labelled"]),
            _fmt(report["point"]["f1"]),
            _fmt(report["event"]["f1"]),
            _fmt(report["pr_auc"]),
        )
    console.print(per_device)
