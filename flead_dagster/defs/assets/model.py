"""The model stage: the global model aggregated through the API, evaluated over lake days on Spark."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
)
from dagster_pyspark import PySparkResource
from pydantic import Field

from flead.evaluation import batch_scoring, store
from flead.storage.mongo import get_database
from flead_dagster.asset_metadata import EVALUATION_COLUMNS, flead_asset, frame_table
from flead_dagster.defs.assets.data import labelled_benchmark, readings_lake
from flead_dagster.defs.assets.stream import stream_replay
from flead_dagster.defs.partitions import DAILY, partition_days
from flead_dagster.defs.resources import FleadResource
from flead_dagster.spark_scoring import score_lake_spark

EVALUATION_KEY = AssetKey("global_model_evaluation")


class EvaluationConfig(Config):
    version: int | None = Field(None, ge=0, description="global model version to evaluate; None = latest")


@flead_asset(
    group_name="model",
    deps=[stream_replay],
    kinds={"fastapi", "mongodb", "numpy"},
    description="The global model: pending local updates aggregated through the global API.",
)
def global_model(context: AssetExecutionContext, flead: FleadResource) -> MaterializeResult:
    api = flead.api_client()
    outcome = api.aggregate()
    current = api.version(outcome["version"])
    if outcome["created"]:
        updates, devices = outcome["n_updates"], outcome["n_devices"]
        context.log.info(f"version {outcome['version']} from {updates} updates of {devices} devices")
    else:
        context.log.info(f"no new version ({outcome['reason']}); the current one is {outcome['version']}")
    metrics = current.get("metrics") or {}
    privacy = current.get("privacy") or {"mode": "off"}
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
            **privacy_metadata(privacy),
        }
    )


def privacy_metadata(privacy: dict) -> dict:
    """``dp_mode`` and ``privacy`` (in words) always; ``epsilon`` (a float, so the UI plots it over
    materialisations) only when the version has a bound: no DP means no epsilon, not a number."""
    mode = privacy.get("mode", "off")
    epsilon = privacy.get("epsilon")
    if mode == "off":
        text = "no DP"
    elif epsilon is None:
        text = f"{mode} DP, no epsilon bound: {privacy.get('note') or 'an ancestor was made without DP'}"
    else:
        accountant = privacy.get("accountant")
        text = f"{mode} DP: epsilon {epsilon:.4g} at delta {privacy.get('delta'):g} ({accountant})"
    metadata: dict = {"dp_mode": mode, "privacy": text}
    if mode != "off" and epsilon is not None:
        metadata["epsilon"] = float(epsilon)
    return metadata


@flead_asset(
    group_name="model",
    deps=[global_model, readings_lake, labelled_benchmark],
    kinds={"spark", "parquet", "mongodb"},
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
    flead: FleadResource,
) -> MaterializeResult:
    settings = flead.settings()
    days = partition_days(context)
    version, model_bytes = flead.api_client(settings).model_bytes(config.version)
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
    client = flead.mongo_client(settings)
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
