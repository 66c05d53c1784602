"""`flead data ...`: fetch, generate, ingest, label and inspect the data set; `flead replay`: the lake to
Kafka."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date
from pathlib import Path

import polars as pl
import typer
from kafka.errors import KafkaError
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from flead.bus.replay import ReplayError, lake_readings, replay
from flead.cli.output import console, fail
from flead.config import Settings
from flead.datasets import intel_lab, lake, pipeline
from flead.datasets.files import parse_separator
from flead.datasets.inject import ANOMALY_TYPES, EVENTS_FILE, InjectionConfig
from flead.datasets.synthetic import generate_fleet

data_app = typer.Typer(
    help="Fetch, generate, ingest, label and inspect the sensor data set.", no_args_is_help=True
)


@contextmanager
def _progress(description: str, *, bytes_: bool = False):
    """A rich progress bar; yields a callback(done, total) for the core library."""
    columns = (
        [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
        if bytes_
        else [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    )
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _table(title: str, frame: pl.DataFrame) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame.schema[column].is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return table


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise fail(f"not a date (YYYY-MM-DD): {value!r}") from None


@data_app.command("fetch")
def fetch() -> None:
    """Download the Intel Lab data set (resumable, retried, checksum-verified) into DATA_DIR/intel_lab."""
    settings = Settings()
    try:
        with _progress("downloading", bytes_=True) as progress:
            files = intel_lab.download_intel_lab(
                Path(settings.data_dir) / "intel_lab",
                data_url=settings.intel_lab_data_url,
                locs_url=settings.intel_lab_locs_url,
                progress=progress,
                attempts=settings.download_attempts,
            )
    except intel_lab.DownloadError as exc:
        raise fail(f"{exc}\nOffline? `flead data synth` or `flead data ingest --source synthetic`.") from None
    for path in (files.data, files.locations):
        console.print(f"{path}  sha256 {intel_lab.checksum_path(path).read_text().split()[0]}")


@data_app.command("synth")
def synth(
    devices: int = typer.Option(54, min=1, help="Fleet size (motes 1..N)."),
    days: int = typer.Option(38, min=1, help="Days from the data set's first day."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same bytes."),
    out: Path = typer.Option(None, help="Output folder (default DATA_DIR/synthetic)."),
    per_device_files: bool = typer.Option(False, help="One NodeNN.txt per device instead of data.txt."),
    gzip: bool = typer.Option(False, help="Gzip the output."),
) -> None:
    """Generate a synthetic Intel-Lab-like fleet in the raw text format."""
    settings = Settings()
    with _progress("generating devices") as progress:
        fleet = generate_fleet(
            out or Path(settings.data_dir) / "synthetic",
            n_devices=devices,
            days=days,
            start=settings.dataset_start,
            seed=seed,
            per_device_files=per_device_files,
            gzip=gzip,
            progress=progress,
        )
    console.print(
        f"{fleet.lines:,} lines for {fleet.n_devices} devices over {fleet.days} days "
        f"in {len(fleet.paths)} file(s)"
    )
    if fleet.failures:
        failures = pl.DataFrame(
            {
                "device": [intel_lab.device_id(f.mote_id) for f in fleet.failures],
                "battery failure from": [f.start.isoformat(timespec="minutes") for f in fleet.failures],
            }
        )
        console.print(_table("planted battery failures", failures))
    console.print(f"ingest with: flead data ingest {fleet.paths[0].parent} --max-mote {devices}")


@data_app.command("ingest")
def ingest(
    path: Path = typer.Argument(
        None,
        help="CSV / Parquet files (or a folder of them) of the fleet schema (FLEAD_FLEET_SCHEMA), "
        "or the Intel Lab's data.txt(.gz) or a folder of Node*.txt files; implies --source path.",
    ),
    sep: str = typer.Option(None, "--sep", help="CSV separator (\\t for tab); given, PATH is read as CSV."),
    source: pipeline.SourceKind = typer.Option(
        pipeline.SourceKind.AUTO, help="Where the raw data comes from."
    ),
    devices: int = typer.Option(54, min=1, help="Synthetic fleet size."),
    days: int = typer.Option(38, min=1, help="Synthetic fleet days."),
    seed: int = typer.Option(0, help="Synthetic fleet seed."),
    max_mote: int = typer.Option(
        54, min=1, help="Highest valid mote id in PATH's files (a synthetic fleet's N)."
    ),
    start: str = typer.Option(None, help="First day to write (default: first day with data)."),
    end: str = typer.Option(None, help="Last day to write (default: last day with data)."),
) -> None:
    """Parse raw readings into the day-partitioned Parquet lake; every line is a row or a reject."""
    settings = Settings()
    first, last = _day(start), _day(end)
    kind = pipeline.SourceKind.PATH if path is not None else source
    try:
        with _progress(
            "acquiring raw data", bytes_=kind in (pipeline.SourceKind.AUTO, pipeline.SourceKind.DOWNLOAD)
        ) as progress:
            raw = pipeline.acquire(
                settings,
                kind,
                path,
                pipeline.SyntheticSpec(devices, days, seed),
                progress,
                range(1, max_mote + 1),
                parse_separator(sep),
            )
    except (intel_lab.DownloadError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    if raw.note:
        console.print(f"[yellow]note:[/] {raw.note}")
    with console.status(f"parsing {len(raw.files)} file(s)"):
        try:
            staged = pipeline.stage(raw, settings)
        except ValueError as exc:
            raise fail(str(exc)) from None
    if staged.unused_columns:
        console.print(
            f"[yellow]note:[/] columns not in the fleet schema {staged.fleet}, "
            f"ignored: {staged.unused_columns}"
        )
    if staged.rows == 0 and staged.rejects:
        reasons = ", ".join(f"{reason} ({n:,})" for reason, n in list(staged.rejects_by_reason.items())[:3])
        raise fail(
            f"no readings: all {staged.rejects:,} rows of the {staged.fleet} source were rejected "
            f"({reasons}); "
            f"the rejects are in {Path(settings.lake_dir) / lake.REJECTS_FILE}"
        )
    chosen = [
        d
        for d in map(date.fromisoformat, staged.days)
        if (first is None or d >= first) and (last is None or d <= last)
    ]
    with _progress("writing lake days") as progress:
        written = pipeline.write_lake_days(settings, chosen, progress)
    console.print(
        f"{staged.lines:,} lines from the {staged.kind} source: {staged.rows:,} rows, "
        f"{staged.rejects:,} rejects; "
        f"{written.rows:,} rows written to {len(written.partitions)} day partitions under {settings.lake_dir}"
    )
    _print_lake_summary(settings)


@data_app.command("inject")
def inject(
    start: str = typer.Option(None, help="First lake day to label (default: the lake's first)."),
    end: str = typer.Option(None, help="Last lake day to label (default: the lake's last)."),
    seed: int = typer.Option(0, help="Random seed."),
    rate_scale: float = typer.Option(1.0, min=0.0, help="Multiply every anomaly type's rate."),
) -> None:
    """Write a labelled copy of the lake with injected anomalies (the lake itself is never changed)."""
    settings = Settings()
    first, last = _day(start), _day(end)
    days = [
        d
        for d in lake.list_partitions(Path(settings.lake_dir))
        if (first is None or d >= first) and (last is None or d <= last)
    ]
    if not days:
        raise fail(
            f"no lake partitions in that range under {settings.lake_dir}; run `flead data ingest` first"
        )
    base = InjectionConfig()
    config = InjectionConfig(**{f"{k}_rate": base.rate(k) * rate_scale for k in ANOMALY_TYPES})
    with console.status(f"injecting anomalies into {len(days)} day(s)"):
        labelled = pipeline.label_lake(settings, days, config, seed)
    _print_labelled_summary(labelled.readings, labelled.events)
    console.print(f"labelled data set: {settings.labelled_dir}")


@data_app.command("inspect")
def inspect() -> None:
    """Summaries of the lake (rows per day and device, flags, rejects) and of the labelled data set."""
    settings = Settings()
    if not lake.list_partitions(Path(settings.lake_dir)):
        raise fail(f"the lake at {settings.lake_dir} is empty; run `flead data ingest` first")
    _print_lake_summary(settings)
    labelled_root = Path(settings.labelled_dir)
    if lake.list_partitions(labelled_root):
        readings = pl.scan_parquet(labelled_root / "date=*" / lake.PARTITION_FILE, hive_partitioning=False)
        _print_labelled_summary(
            readings.select("label", "anomaly_type").collect(), pl.read_parquet(labelled_root / EVENTS_FILE)
        )


def _print_lake_summary(settings: Settings) -> None:
    rows = lake.scan_lake(Path(settings.lake_dir))
    rejects = pipeline.rejects_per_day(settings)
    flags = [pl.col(f).sum().alias(f) for f in ("out_of_range", "low_battery", "missing_fields")]
    per_day = (
        rows.group_by("date")
        .agg(pl.len().alias("rows"), pl.col("device_id").n_unique().alias("devices"), *flags)
        .sort("date")
        .collect()
    )
    per_day = per_day.with_columns(
        pl.col("date").replace_strict(rejects, default=0, return_dtype=pl.Int64).alias("rejects")
    )
    per_device = (
        rows.group_by("device_id")
        .agg(pl.len().alias("rows"), pl.col("date").n_unique().alias("days"), *flags)
        .sort("device_id")
        .collect()
    )
    console.print(_table("lake: rows per day", per_day))
    console.print(_table("lake: rows per device", per_device))
    all_rejects = lake.read_rejects(Path(settings.lake_dir))
    if all_rejects.height:
        console.print(
            _table(
                "rejected lines by reason",
                all_rejects.group_by("reason").len(name="lines").sort("lines", descending=True),
            )
        )
    console.print(
        f"{per_day['rows'].sum():,} rows in {per_day.height} days, {per_device.height} devices; "
        f"{all_rejects.height:,} rejects in {Path(settings.lake_dir) / lake.REJECTS_FILE}"
    )


def _print_labelled_summary(readings: pl.DataFrame, events: pl.DataFrame) -> None:
    points = (
        readings.filter(pl.col("label") == 1)
        .group_by("anomaly_type")
        .len()
        .rename({"len": "labelled readings"})
    )
    by_type = (
        events.group_by("anomaly_type")
        .len()
        .rename({"len": "events"})
        .join(points, on="anomaly_type", how="left")
    )
    console.print(_table("injected anomalies", by_type.sort("anomaly_type")))
    console.print(
        f"{events.height} events; {int(readings['label'].sum()):,} of {readings.height:,} readings labelled "
        f"({readings['label'].mean():.2%})"
    )


def replay_command(
    start: str = typer.Option(None, help="First day (YYYY-MM-DD); default: the lake's first."),
    end: str = typer.Option(None, help="Last day (YYYY-MM-DD); default: the lake's last."),
    device: list[str] = typer.Option(None, help="Only these device ids (repeatable)."),
    speed: float = typer.Option(None, min=0.0, help="Replay N times faster than real time."),
    max_rate: bool = typer.Option(False, "--max", help="As fast as the broker takes them (the default)."),
    topic: str = typer.Option(None, help="Target topic (default: FLEAD_TOPIC_READINGS)."),
) -> None:
    """Publish lake readings to Kafka, keyed by device id, in event-time order."""
    if speed is not None and max_rate:
        raise fail("choose --speed N or --max, not both")
    settings = Settings()
    try:
        first, last = (date.fromisoformat(d) if d else None for d in (start, end))
    except ValueError as exc:
        raise fail(f"bad date: {exc}") from None
    frame = lake_readings(settings, first, last, device or None)
    if not frame.height:
        raise fail(
            f"no readings in the lake at {settings.lake_dir} for that selection; run `flead data ingest`"
        )
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("replay", total=frame.height)
        try:
            summary = replay(
                settings,
                frame,
                speed=speed,
                topic=topic,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (ReplayError, KafkaError) as exc:
            raise fail(f"{exc}\nIs the broker up? `flead local status`") from None
    console.print(
        f"{summary.messages:,} readings of {summary.devices} devices "
        f"({summary.first_ts} .. {summary.last_ts}) to {summary.topic} "
        f"in {summary.seconds:.1f} s ({summary.rate:,.0f}/s)"
    )
