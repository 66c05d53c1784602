"""The data stage: raw source -> day-partitioned lake -> device registry, labelled benchmark."""

from datetime import date
from pathlib import Path

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from flead.datasets import lake, pipeline
from flead.datasets.files import parse_separator
from flead.datasets.inject import ANOMALY_TYPES, InjectionConfig
from flead.fleet import FleetSchema
from flead.schema import lake_schema
from flead_dagster.asset_metadata import flead_asset, frame_table, labelled_columns, lake_columns
from flead_dagster.defs.partitions import DAILY, FLEET
from flead_dagster.defs.resources import FleadResource

LAKE_KEY = AssetKey("readings_lake")


class RawSourceConfig(Config):
    source: str = Field("auto", description="auto (download, else synthetic), download, path or synthetic")
    path: str | None = Field(
        None,
        description="source=path: CSV / Parquet files of the fleet schema (FLEAD_FLEET_SCHEMA), or the Intel "
        "Lab's data.txt(.gz) or a folder of Node*.txt files",
    )
    sep: str | None = Field(None, description="the CSV separator of a path source's files (default ,)")
    max_mote: int = Field(54, ge=1, description="highest valid mote id in a path source's files")
    n_devices: int = Field(54, ge=1, description="synthetic fleet size")
    days: int = Field(38, ge=1, description="synthetic fleet days from the data set's first day")
    seed: int = 0


class LabelConfig(Config):
    start: str | None = Field(None, description="first lake day to label (default: the lake's first)")
    end: str | None = Field(None, description="last lake day to label (default: the lake's last)")
    seed: int = 0
    rate_scale: float = Field(1.0, gt=0, description="multiplies every anomaly type's rate")


@flead_asset(
    group_name="data",
    kinds={"python", "polars"},
    description="The raw readings (Intel Lab download, a synthetic fleet, or a local path: the Intel Lab "
    "format or the fleet schema's CSV / Parquet files), parsed once.",
)
def raw_intel_lab(
    context: AssetExecutionContext, config: RawSourceConfig, flead: FleadResource
) -> MaterializeResult:
    settings = flead.settings()
    raw = pipeline.acquire(
        settings,
        pipeline.SourceKind(config.source),
        Path(config.path) if config.path else None,
        pipeline.SyntheticSpec(config.n_devices, config.days, config.seed),
        mote_ids=range(1, config.max_mote + 1),
        separator=parse_separator(config.sep),
    )
    if raw.note:
        context.log.warning(raw.note)
    summary = pipeline.stage(raw, settings)
    context.log.info(f"{summary.lines} lines: {summary.rows} rows, {summary.rejects} rejects")
    return MaterializeResult(
        metadata={
            "source": summary.kind,
            "note": summary.note or "-",
            "files": MetadataValue.json(summary.files),
            "lines": summary.lines,
            "rows": summary.rows,
            "rejects": summary.rejects,
            "rejects_by_reason": MetadataValue.json(summary.rejects_by_reason),
            "devices": summary.devices,
            "first_day": summary.days[0] if summary.days else "-",
            "last_day": summary.days[-1] if summary.days else "-",
        }
    )


@flead_asset(
    group_name="data",
    deps=[raw_intel_lab],
    kinds={"polars", "parquet"},
    metadata=lake_columns(FLEET),
    partitions_def=DAILY,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[
        AssetCheckSpec("schema", asset=LAKE_KEY, description="columns and dtypes are the lake schema"),
        AssetCheckSpec(
            "unique_device_epoch", asset=LAKE_KEY, description="no (device_id, epoch) twice in a day"
        ),
        AssetCheckSpec(
            "flag_rates", asset=LAKE_KEY, description="out-of-range share of a day below the bound"
        ),
    ],
    description="Typed readings, one Parquet folder per UTC day; impossible readings flagged, never dropped.",
)
def readings_lake(context: AssetExecutionContext, flead: FleadResource) -> MaterializeResult:
    settings = flead.settings()
    days = [date.fromisoformat(key) for key in context.partition_keys]
    written = pipeline.write_lake_days(settings, days).partitions
    rejects = pipeline.rejects_per_day(settings)
    for stats in written:
        context.log.info(f"{stats.day}: {stats.rows} rows from {stats.devices} devices")
    frame = pl.concat([pl.read_parquet(stats.path) for stats in written]) if written else pl.DataFrame()
    return MaterializeResult(
        metadata={
            "days": len(written),
            "rows": sum(s.rows for s in written),
            "devices": frame["device_id"].n_unique() if frame.height else 0,
            "rejects": sum(rejects.get(day, 0) for day in days),
            "out_of_range": sum(s.flags.out_of_range for s in written),
            "low_battery": sum(s.flags.low_battery for s in written),
            "missing_fields": sum(s.flags.missing_fields for s in written),
            "path": MetadataValue.path(str(written[0].path if len(written) == 1 else settings.lake_dir)),
        },
        check_results=lake_checks(frame, settings.flag_rate_warn, settings.fleet),
    )


def lake_checks(frame: pl.DataFrame, flag_rate_warn: float, fleet: FleetSchema) -> list[AssetCheckResult]:
    """Schema, uniqueness of (device_id, epoch) — (device_id, ts) for readings without an epoch — and
    the out-of-range share of one day of the lake."""
    key = pl.coalesce(pl.col("epoch").cast(pl.String), pl.col("ts").cast(pl.String)) if frame.height else None
    duplicates = frame.height - frame.select("device_id", key).n_unique() if frame.height else 0
    rate = float(frame["out_of_range"].mean() or 0.0) if frame.height else 0.0
    return [
        AssetCheckResult(
            check_name="schema",
            passed=dict(frame.schema) == lake_schema(fleet),
            metadata={"columns": MetadataValue.json({n: str(t) for n, t in frame.schema.items()})},
        ),
        AssetCheckResult(
            check_name="unique_device_epoch", passed=duplicates == 0, metadata={"duplicates": duplicates}
        ),
        AssetCheckResult(
            check_name="flag_rates",
            passed=rate <= flag_rate_warn,
            severity=AssetCheckSeverity.WARN,
            metadata={"out_of_range_rate": rate, "bound": flag_rate_warn},
        ),
    ]


@flead_asset(
    group_name="data",
    deps=[readings_lake],
    kinds={"polars", "parquet"},
    description="Devices seen in the lake, with locations when known.",
)
def device_registry(context: AssetExecutionContext, flead: FleadResource) -> MaterializeResult:
    settings = flead.settings()
    registry = pipeline.build_device_registry(settings)
    context.log.info(f"{registry.height} devices")
    preview = registry.select("device_id", "readings", "days", "out_of_range", "x", "y").head(60)
    return MaterializeResult(
        metadata={
            "devices": registry.height,
            "with_location": int(registry["x"].is_not_null().sum()),
            "path": MetadataValue.path(str(pipeline.registry_path(settings))),
            "preview": frame_table(preview, bar="readings"),
        }
    )


@flead_asset(
    group_name="data",
    deps=[readings_lake],
    kinds={"polars", "parquet"},
    metadata=labelled_columns(FLEET),
    description="The lake with injected, labelled anomalies (a separate data set), one Parquet file per day.",
)
def labelled_benchmark(
    context: AssetExecutionContext, config: LabelConfig, flead: FleadResource
) -> MaterializeResult:
    settings = flead.settings()
    days = lake.list_partitions(Path(settings.lake_dir))
    first = date.fromisoformat(config.start) if config.start else None
    last = date.fromisoformat(config.end) if config.end else None
    days = [d for d in days if (first is None or d >= first) and (last is None or d <= last)]
    base = InjectionConfig()
    scaled = InjectionConfig(
        **{f"{kind}_rate": base.rate(kind) * config.rate_scale for kind in ANOMALY_TYPES}
    )
    labelled = pipeline.label_lake(settings, days, scaled, config.seed)
    by_type = dict(labelled.events.group_by("anomaly_type").len().sort("anomaly_type").iter_rows())
    labelled_points = int(labelled.readings["label"].sum())
    context.log.info(f"{labelled.events.height} events over {len(days)} days")
    return MaterializeResult(
        metadata={
            "days": len(days),
            "events": labelled.events.height,
            "events_by_type": MetadataValue.json(by_type),
            "readings": labelled.readings.height,
            "labelled_readings": labelled_points,
            "labelled_share": labelled_points / max(labelled.readings.height, 1),
            "path": MetadataValue.path(str(settings.labelled_dir)),
        }
    )
