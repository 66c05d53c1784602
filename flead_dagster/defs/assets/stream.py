"""The streaming stage: lake days replayed into the readings topic, trained on by the stream trainer."""

import polars as pl
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
)
from pydantic import Field

from flead.bus import lag
from flead.bus.replay import lake_readings, replay
from flead.config import Settings
from flead_dagster.asset_metadata import flead_asset
from flead_dagster.defs.assets.data import readings_lake
from flead_dagster.defs.partitions import DAILY, partition_days
from flead_dagster.defs.resources import FleadResource


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


@flead_asset(
    group_name="stream",
    deps=[readings_lake],
    kinds={"kafka", "polars"},
    partitions_def=DAILY,
    backfill_policy=BackfillPolicy.single_run(),
    description="The days' lake readings replayed into the readings topic, keyed by device, in event-time "
    "order; waits until the stream trainer has checkpointed them.",
)
def stream_replay(
    context: AssetExecutionContext, config: ReplayConfig, flead: FleadResource
) -> MaterializeResult:
    settings = flead.settings()
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
