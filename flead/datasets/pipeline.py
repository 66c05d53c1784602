"""From a raw source to the lake, the device registry and the labelled benchmark.

The steps the CLI (`flead data ...`) and the Dagster assets share:

1. `acquire`: the raw files, downloaded, taken from a path, or generated (synthetic fleet);
2. `stage`: parse them once into ``DATA_DIR/staged/`` (typed rows) and the lake's rejects file;
3. `write_lake_days`: (re)write chosen days of the lake from the staged rows;
4. `build_device_registry` and `label_lake`: what downstream work needs from the lake.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path

import polars as pl

from flead.config import Settings
from flead.datasets import intel_lab, lake
from flead.datasets.inject import InjectionConfig, LabelledData, inject_lake
from flead.datasets.synthetic import generate_fleet

Progress = Callable[[int, int | None], None]


class SourceKind(StrEnum):
    AUTO = "auto"  # download, and the synthetic fleet when the network does not allow it
    DOWNLOAD = "download"
    PATH = "path"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class SyntheticSpec:
    n_devices: int = 54
    days: int = 38
    seed: int = 0


@dataclass(frozen=True)
class RawData:
    kind: SourceKind  # what was used (never AUTO)
    files: tuple[Path, ...]
    locations: Path | None
    mote_ids: range
    note: str = ""  # why AUTO fell back to the synthetic fleet


@dataclass(frozen=True)
class StageSummary:
    kind: str
    files: list[str]
    lines: int
    rows: int
    rejects: int
    rejects_by_reason: dict[str, int]
    days: list[str]
    devices: int
    note: str = ""


def staged_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "staged"


def registry_path(settings: Settings) -> Path:
    return Path(settings.lake_dir) / "_registry" / "devices.parquet"


def dataset_days(settings: Settings) -> list[date]:
    span = (settings.dataset_end - settings.dataset_start).days
    return [settings.dataset_start + timedelta(days=i) for i in range(span + 1)]


def acquire(
    settings: Settings,
    kind: SourceKind = SourceKind.AUTO,
    path: Path | None = None,
    synthetic: SyntheticSpec = SyntheticSpec(),
    progress: Progress | None = None,
    mote_ids: range = intel_lab.MOTE_IDS,
) -> RawData:
    """The raw files of the chosen source, in the original Intel Lab text format.

    `mote_ids` are the valid ids in a PATH source (a synthetic fleet of N devices written to a folder
    needs range(1, N + 1)); lines with other ids are rejected.
    """
    if kind is SourceKind.PATH:
        if path is None:
            raise ValueError("source 'path' needs a path to a data.txt(.gz) or a folder of Node*.txt files")
        files = intel_lab.resolve_source(Path(path))
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        locations = folder / intel_lab.LOCS_FILE
        return RawData(kind, tuple(files), locations if locations.is_file() else None, mote_ids)
    if kind in (SourceKind.DOWNLOAD, SourceKind.AUTO):
        try:
            files = intel_lab.download_intel_lab(
                Path(settings.data_dir) / "intel_lab",
                data_url=settings.intel_lab_data_url,
                locs_url=settings.intel_lab_locs_url,
                progress=progress,
                attempts=settings.download_attempts if kind is SourceKind.DOWNLOAD else 1,
            )
        except intel_lab.DownloadError as exc:
            if kind is SourceKind.DOWNLOAD:
                raise
            fallback = acquire(settings, SourceKind.SYNTHETIC, synthetic=synthetic, progress=progress)
            note = f"the Intel Lab download failed ({exc}); using a synthetic fleet instead"
            return RawData(fallback.kind, fallback.files, None, fallback.mote_ids, note)
        return RawData(SourceKind.DOWNLOAD, (files.data,), files.locations, intel_lab.MOTE_IDS)
    fleet = generate_fleet(
        Path(settings.data_dir) / "synthetic",
        n_devices=synthetic.n_devices,
        days=synthetic.days,
        start=settings.dataset_start,
        seed=synthetic.seed,
        progress=progress,
    )
    return RawData(SourceKind.SYNTHETIC, fleet.paths, None, range(1, synthetic.n_devices + 1))


def stage(raw: RawData, settings: Settings) -> StageSummary:
    """Parse the raw files once: typed rows to the staging area, rejects to the lake's rejects file."""
    parsed = intel_lab.parse_files(raw.files, raw.mote_ids)
    out = staged_dir(settings)
    lake.write_parquet_atomic(parsed.rows, out / "readings.parquet")
    lake.write_rejects(parsed.rejects, Path(settings.lake_dir))
    (out / "locations.parquet").unlink(missing_ok=True)
    if raw.locations is not None:
        lake.write_parquet_atomic(intel_lab.read_mote_locations(raw.locations), out / "locations.parquet")
    days = parsed.rows.select(pl.col("ts").dt.date().unique().sort())["ts"].to_list()
    summary = StageSummary(
        kind=raw.kind.value,
        files=[str(f) for f in raw.files],
        lines=parsed.lines,
        rows=parsed.rows.height,
        rejects=parsed.rejects.height,
        rejects_by_reason=parsed.rejects_by_reason(),
        days=[d.isoformat() for d in days],
        devices=parsed.rows["device_id"].n_unique(),
        note=raw.note,
    )
    (out / "manifest.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def read_stage_summary(settings: Settings) -> StageSummary:
    manifest = staged_dir(settings) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"nothing staged yet ({manifest} is missing): "
            "run `flead data ingest` or materialize raw_intel_lab"
        )
    return StageSummary(**json.loads(manifest.read_text()))


def write_lake_days(
    settings: Settings, days: Iterable[date], progress: Progress | None = None
) -> lake.LakeWriteSummary:
    """Rewrite the given days of the lake from the staged rows (a day without rows gets an empty file)."""
    read_stage_summary(settings)  # a clear error when nothing is staged
    staged = pl.scan_parquet(staged_dir(settings) / "readings.parquet")
    days = sorted(set(days))
    rows = staged.filter(pl.col("ts").dt.date().is_in(days)).collect()
    written = []
    for i, day in enumerate(days):
        written.append(lake.write_day(rows, Path(settings.lake_dir), day))
        if progress:
            progress(i + 1, len(days))
    return lake.LakeWriteSummary(partitions=tuple(written))


def rejects_per_day(settings: Settings) -> dict[date, int]:
    """Rejected lines by the day their text starts with (lines without a readable date are not counted)."""
    rejects = lake.read_rejects(Path(settings.lake_dir))
    days = rejects.select(pl.col("raw").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False).alias("day"))
    counts = days.drop_nulls().group_by("day").len()
    return dict(counts.iter_rows())


def build_device_registry(settings: Settings) -> pl.DataFrame:
    """One row per device in the lake: location (when known), first and last reading, counts, flags."""
    stats = (
        lake.scan_lake(Path(settings.lake_dir))
        .group_by("device_id")
        .agg(
            pl.col("ts").min().alias("first_seen"),
            pl.col("ts").max().alias("last_seen"),
            pl.len().alias("readings"),
            pl.col("date").n_unique().alias("days"),
            pl.col("out_of_range").sum().alias("out_of_range"),
            pl.col("low_battery").sum().alias("low_battery"),
        )
        .collect()
    )
    locations_file = staged_dir(settings) / "locations.parquet"
    if locations_file.is_file():
        locations = pl.read_parquet(locations_file)
    else:
        locations = pl.DataFrame(schema={"device_id": pl.String, "x": pl.Float64, "y": pl.Float64})
    registry = stats.join(locations, on="device_id", how="left").sort("device_id")
    lake.write_parquet_atomic(registry, registry_path(settings))
    return registry


def label_lake(
    settings: Settings,
    days: Iterable[date] | None = None,
    config: InjectionConfig | None = None,
    seed: int = 0,
) -> LabelledData:
    """Inject labelled anomalies into the lake's days (all by default) as a separate data set."""
    chosen = list(days) if days is not None else lake.list_partitions(Path(settings.lake_dir))
    if not chosen:
        raise FileNotFoundError(f"the lake at {settings.lake_dir} has no partitions to label")
    out = Path(settings.labelled_dir)
    for old in lake.list_partitions(out):  # the labelled set is rebuilt whole, never mixed with an older one
        lake.partition_path(out, old).unlink()
    return inject_lake(Path(settings.lake_dir), chosen, Path(settings.labelled_dir), config, seed)
