"""The streaming and model half of the graph: replay -> global model -> Spark evaluation -> report."""

import base64
from datetime import date
from pathlib import Path

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_pyspark import PySparkResource
from pydantic import Field

from flead.bus import lag
from flead.bus.replay import lake_readings, replay
from flead.config import Settings
from flead.evaluation import batch_scoring, store
from flead.reporting.anomaly_report import AnomalyReport, build_report
from flead.storage.mongo import get_database
from flead_dagster.asset_metadata import EVALUATION_COLUMNS, OWNERS, frame_table
from flead_dagster.data_assets import (
    DAILY,
    device_registry,
    labelled_benchmark,
    raw_intel_lab,
    readings_lake,
)
from flead_dagster.resources import GlobalApiResource, KafkaResource, MongoResource
from flead_dagster.spark_scoring import score_lake_spark

EVALUATION_KEY = AssetKey("global_model_evaluation")


class ReplayConfig(Config):
    speed: float | None = Field(None, gt=0, description="N x real time; None sends as fast as possible")
    wait_for_trainer: bool = Field(
        True, description="wait until the stream trainer's group has committed every replayed reading"
    )
    wait_timeout_s: float = Field(900.0, gt=0, description="longest wait for the trainer")
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="fail once the trainer has committed nothing for this long while readings remain",
    )


class EvaluationConfig(Config):
    version: int | None = Field(None, ge=0, description="global model version to evaluate; None = latest")


def partition_days(context: AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(key) for key in context.partition_keys]


@asset(
    group_name="stream",
    deps=[readings_lake],
    kinds={"kafka", "polars"},
    owners=OWNERS,
    code_version="1",
    partitions_def=DAILY,
    backfill_policy=BackfillPolicy.single_run(),
    description="The days' lake readings replayed into the readings topic, keyed by device, in event-time "
    "order; waits until the stream trainer has checkpointed them.",
)
def stream_replay(
    context: AssetExecutionContext, config: ReplayConfig, kafka: KafkaResource, mongo: MongoResource
) -> MaterializeResult:
    settings = mongo.apply(kafka.apply(Settings()))
    days = partition_days(context)
    frame = lake_readings(settings, days[0], days[-1])
    frame = frame.filter(pl.col("ts").dt.date().is_in(days))
    context.log.info(
        f"replaying {frame.height} readings of {len(days)} day(s) into {settings.topic_readings}"
    )

    def progress(sent: int, total: int) -> None:
        if total and sent % 100_000 < 2_000:
            context.log.info(f"sent {sent}/{total}")

    summary = replay(settings, frame, speed=config.speed, progress=progress)
    targets = lag.end_offsets(settings, settings.topic_readings)  # (may fall short: see next_offsets)
    targets |= {p: max(o, targets.get(p, 0)) for p, o in summary.next_offsets.items()}
    remaining = None
    if config.wait_for_trainer and summary.messages:
        context.log.info(f"waiting for consumer group {settings.consumer_group} to checkpoint")
        waited = lag.wait_for_group(
            settings,
            settings.consumer_group,
            settings.topic_readings,
            targets,
            timeout_s=config.wait_timeout_s,
            stall_s=config.stall_timeout_s,
            on_progress=lambda left: context.log.debug(f"trainer lag {left}"),
        )
        if not waited.caught_up:
            raise Failure(_not_trained(settings, config, waited, summary.messages))
        remaining = waited.remaining
    return MaterializeResult(
        metadata={
            "days": MetadataValue.json([d.isoformat() for d in days]),
            "readings": summary.messages,
            "devices": summary.devices,
            "readings_per_s": round(summary.rate, 1),
            "topic": settings.topic_readings,
            "end_offsets": MetadataValue.json({str(p): o for p, o in sorted(targets.items())}),
            "trainer_lag_after_wait": remaining if remaining is not None else "not waited",
            # what the trainer checkpointed of this replay (-1: not waited for, so not known)
            "trained": summary.messages if remaining is not None else (-1 if summary.messages else 0),
        }
    )


def _not_trained(settings: Settings, config: ReplayConfig, waited: lag.GroupWait, replayed: int) -> str:
    group, topic = settings.consumer_group, settings.topic_readings
    behind = f"{waited.remaining:,} readings of topic {topic} (of {replayed:,} replayed) are not trained"
    if waited.outcome == lag.STALLED:
        return (
            f"the stream trainer made no progress: consumer group {group} committed no offset for "
            f"{waited.still_s:.0f} s (stall_timeout_s {config.stall_timeout_s:g}) and {behind}. Is the "
            f"trainer running with this topic and group? Its /health and log tell (partitions, lag, "
            f"partition_resets)."
        )
    return (
        f"the stream trainer is too slow: after {waited.waited_s:.0f} s (wait_timeout_s "
        f"{config.wait_timeout_s:g}) {behind}; raise wait_timeout_s for a replay this large."
    )


@asset(
    group_name="model",
    deps=[stream_replay],
    kinds={"fastapi", "mongodb", "numpy"},
    owners=OWNERS,
    code_version="1",
    description="The global model: pending local updates aggregated through the global API.",
)
def global_model(context: AssetExecutionContext, global_api: GlobalApiResource) -> MaterializeResult:
    api = global_api.client()
    outcome = api.aggregate()
    current = api.version(outcome["version"])
    if outcome["created"]:
        updates, devices = outcome["n_updates"], outcome["n_devices"]
        context.log.info(f"version {outcome['version']} from {updates} updates of {devices} devices")
    else:
        context.log.info(f"no new version ({outcome['reason']}); the current one is {outcome['version']}")
    metrics = current.get("metrics") or {}
    return MaterializeResult(
        metadata={
            "version": current["version"],
            "created": outcome["created"],
            "reason": outcome["reason"] or "-",
            "parent_version": current["parent_version"] if current["parent_version"] is not None else -1,
            "updates": current["n_updates"],
            "devices": current["n_devices"],
            "samples": current["total_samples"],
            "strategy": current["strategy"] or "-",
            "loss": metrics.get("mean_loss") if metrics.get("mean_loss") is not None else float("nan"),
            "refused": len(outcome["refused"]),
            "metrics": MetadataValue.json(metrics),
        }
    )


@asset(
    group_name="model",
    deps=[global_model, readings_lake, labelled_benchmark],
    kinds={"spark", "parquet", "mongodb"},
    owners=OWNERS,
    code_version="1",
    metadata=EVALUATION_COLUMNS,
    partitions_def=DAILY,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[
        AssetCheckSpec(
            "f1_not_worse",
            asset=EVALUATION_KEY,
            description="F1 within the tolerance of the previous version's on the same days",
        )
    ],
    description="The lake scored by a global model version on Spark: per-device metrics, F1 against the "
    "labelled benchmark's labels where it covers the days; MongoDB `evaluations` and Parquet.",
)
def global_model_evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    pyspark: PySparkResource,
    global_api: GlobalApiResource,
    mongo: MongoResource,
) -> MaterializeResult:
    settings = mongo.apply(Settings())
    days = partition_days(context)
    version, model_bytes = global_api.client().model_bytes(config.version)
    context.log.info(f"scoring {len(days)} day(s) with global model version {version} on Spark")
    labelled = Path(settings.labelled_dir)
    scored = score_lake_spark(
        pyspark.spark_session,
        Path(settings.lake_dir),
        days,
        model_bytes,
        quantile=settings.evaluation_threshold_quantile,
        labelled_dir=labelled if labelled.exists() else None,
    )
    paths = batch_scoring.write_scored(scored, Path(settings.evaluations_dir), version)
    overall = batch_scoring.overall_metrics(scored)
    client = mongo.client()
    try:
        db = get_database(client, settings)
        previous = store.previous_f1(db, settings, version=version, days=days)
        for day, rows in scored.partition_by("date", as_dict=True).items():
            store.save_evaluation(
                db,
                settings,
                version=version,
                day=day[0],
                overall=batch_scoring.overall_metrics(rows),
                per_device=batch_scoring.device_metrics(rows).to_dicts(),
            )
    finally:
        client.close()
    per_device = batch_scoring.device_metrics(scored)
    f1 = overall.get("f1")
    context.log.info(f"{scored.height} readings, {overall['alarms']} alarms, F1 {f1} (previous {previous})")
    return MaterializeResult(
        metadata={
            "version": version,
            "days": len(days),
            "readings": scored.height,
            "alarms": overall["alarms"],
            "alarm_rate": overall["alarm_rate"],
            "f1": f1 if f1 is not None else float("nan"),
            "precision": overall.get("precision") if overall.get("precision") is not None else float("nan"),
            "recall": overall.get("recall") if overall.get("recall") is not None else float("nan"),
            "labelled": f1 is not None,
            "per_device": frame_table(per_device.head(60), bar="alarm_rate"),
            "path": MetadataValue.path(str(paths[0].parent.parent) if paths else settings.evaluations_dir),
        },
        check_results=[f1_check(f1, previous, settings.evaluation_f1_tolerance)],
    )


def f1_check(f1: float | None, previous: float | None, tolerance: float) -> AssetCheckResult:
    """``f1_not_worse``: this version's F1 at most `tolerance` below the previous version's on the same
    days; passes (and says why) when either is unknown."""
    unknown = f1 is None or previous is None
    return AssetCheckResult(
        check_name="f1_not_worse",
        passed=unknown or f1 >= previous - tolerance,
        metadata={
            "f1": float("nan") if f1 is None else f1,
            "previous_f1": float("nan") if previous is None else previous,
            "tolerance": tolerance,
            "note": "no labels or no earlier version on these days" if unknown else "-",
        },
    )


# Rebuilt after any new evaluation partition (not `eager()`: that waits until every day is evaluated).
REPORT_AFTER_EVALUATION = (
    AutomationCondition.any_deps_updated().since(
        AutomationCondition.newly_requested() | AutomationCondition.newly_updated()
    )
    & ~AutomationCondition.in_progress()
)


@asset(
    group_name="model",
    deps=[global_model_evaluation],
    kinds={"duckdb", "matplotlib", "markdown"},
    owners=OWNERS,
    code_version="1",
    automation_condition=REPORT_AFTER_EVALUATION,
    description="DuckDB over the lake and the newest evaluation: per-device and per-day summaries, charts.",
)
def anomaly_report(context: AssetExecutionContext) -> MaterializeResult:
    settings = Settings()
    report = build_report(Path(settings.lake_dir), Path(settings.evaluations_dir), Path(settings.reports_dir))
    context.log.info(f"report of version {report.version} at {report.markdown_path}")
    return MaterializeResult(metadata=report_metadata(report))


REPORT_DAYS = 60  # rows of the per-day table on the asset page
REPORT_DEVICES = 20  # rows of the per-device table (highest alarm rate first)


def report_metadata(report: AnomalyReport) -> dict[str, object]:
    """The report on the asset page: totals, then the charts as tables drawn inline (each with a
    column of text bars), the PNG files' paths, and the Markdown report and the PNGs themselves
    (Markdown this long stays behind "[Show Markdown]" in Dagster 1.13)."""
    per_day = report.per_day.select(
        "date", "scored", "alarms", "alarms_out_of_range", "out_of_range_without_alarm", "alarm_rate"
    )
    per_device = report.per_device.filter(pl.col("scored") > 0).select(
        "device_id", "scored", "alarms", "alarm_rate", "days_with_alarms", "max_score"
    )
    top = report.top_device_days.select("device_id", "date", "scored", "alarms", "alarm_rate", "max_score")
    images = "\n\n".join(
        f"![{name}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
        for name, path in report.png.items()
    )
    return {
        "version": report.version,
        **{k: v for k, v in report.totals.items() if v is not None},
        "alarms_per_day": frame_table(per_day.tail(REPORT_DAYS), bar="alarms"),
        "alarm_rate_per_device": frame_table(per_device.head(REPORT_DEVICES), bar="alarm_rate"),
        "top_device_days": frame_table(top, bar="alarms"),
        **{f"chart_{name}": MetadataValue.path(str(path)) for name, path in report.png.items()},
        "path": MetadataValue.path(str(report.markdown_path)),
        "report": MetadataValue.md(report.markdown),
        "chart_images": MetadataValue.md(images),
    }


# The data set and model assets, in graph order (the main job materialises them step by step).
PIPELINE = [
    raw_intel_lab,
    readings_lake,
    device_registry,
    labelled_benchmark,
    stream_replay,
    global_model,
    global_model_evaluation,
    anomaly_report,
]
