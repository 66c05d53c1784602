"""A labelled series through the running system: the readings to replay (`flead.bus.replay`), and the
anomaly documents the stream trainer wrote (`services.stream_trainer.outputs`: ``device_id``,
``ts_us``, ``score``, ``reason``) turned into per-reading decisions that score like `flead evaluate`.

The trainer also raises a rule alarm (``reason == "out_of_range"``, `flead.model.rules`) for a
reading beyond a physical limit, which no detector mode of `flead evaluate` has: such readings (an
injected spike can make one) are left out of the series before both runs (`within_limits`), as
`runner.load_lake_benchmark` leaves out those the lake flags. A document that matches no reading of
the series is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import polars as pl

from flead.evaluation.loader import DEVICE, EVENT, LABEL, TS, LabelledSeries
from flead.evaluation.metrics import Evaluation, evaluate_frame
from flead.model import rules
from flead.schema import MEASUREMENTS

MODEL, RULE = "model", "out_of_range"
TS_US = "ts_us"


@dataclass(frozen=True)
class TrainerDecisions:
    readings: (
        pl.DataFrame
    )  # the series' rows: device_id, ts, ts_us, label(, event_id, ...), is_anomaly, score
    rule_alarms: int  # documents for a physical limit broken (not alarms here; none after `within_limits`)

    def evaluate(self) -> Evaluation:
        """Scored as `flead evaluate` scores a detector mode (no scores of unflagged readings: no PR-AUC)."""
        return evaluate_frame(
            self.readings,
            alarm="is_anomaly",
            score=None,
            ts=TS,
            event_id=EVENT if EVENT in self.readings.columns else None,
        )


def within_limits(series: LabelledSeries) -> tuple[LabelledSeries, int]:
    """The series without the readings that break a physical limit, and how many those were."""
    beyond = rules.out_of_range(series.frame.select(series.features).to_numpy(), series.features)
    kept = series.frame.filter(pl.Series(~beyond))
    return replace(series, frame=kept), int(beyond.sum())


def replay_frame(series: LabelledSeries) -> pl.DataFrame:
    """The series' readings as `flead.bus.replay.replay` sends them: event-time order, ties in the
    series' order (so each device's readings keep the order `flead evaluate` processes them in)."""
    if series.order_column != TS or set(series.features) != set(MEASUREMENTS):
        raise ValueError(f"a replayed series needs timestamps and the features {MEASUREMENTS}")
    return series.frame.select(DEVICE, TS, pl.lit(None, pl.Int64).alias("epoch"), *MEASUREMENTS).sort(
        TS, maintain_order=True
    )


def trainer_decisions(series: LabelledSeries, documents: Iterable[Mapping]) -> TrainerDecisions:
    """Each reading of `series` flagged (``is_anomaly``, the model's alarm) or not by the documents."""
    docs = pl.DataFrame(
        [{DEVICE: d[DEVICE], TS_US: d[TS_US], "score": d["score"], "reason": d["reason"]} for d in documents],
        schema={DEVICE: pl.String, TS_US: pl.Int64, "score": pl.Float64, "reason": pl.String},
    )
    duplicated = docs.height - docs.select(DEVICE, TS_US).n_unique()
    if duplicated:
        raise ValueError(f"{duplicated} anomaly documents repeat a (device_id, ts_us) of another")
    keep = [c for c in (DEVICE, TS, LABEL, EVENT, "anomaly_type") if c in series.frame.columns]
    readings = series.frame.select(keep).with_columns(pl.col(TS).dt.epoch("us").alias(TS_US))
    unmatched = docs.join(readings, on=[DEVICE, TS_US], how="anti")
    if unmatched.height:
        first = unmatched.row(0, named=True)
        raise ValueError(
            f"{unmatched.height} anomaly documents match no reading of the series "
            f"(first: {first[DEVICE]} at ts_us {first[TS_US]})"
        )
    model = docs.filter(pl.col("reason") == MODEL).select(DEVICE, TS_US, "score")
    readings = readings.join(model, on=[DEVICE, TS_US], how="left", maintain_order="left").with_columns(
        pl.col("score").is_not_null().alias("is_anomaly")
    )
    return TrainerDecisions(readings, int((docs["reason"] == RULE).sum()))


def disagreements(offline: pl.DataFrame, trainer: TrainerDecisions) -> dict[str, int | float | None]:
    """Where the trainer's per-reading alarms differ from an offline run's (`EvaluationOutcome.readings`
    with the events off): readings flagged by one only, and the largest score difference on readings
    both flagged (the trainer stores scores of flagged readings only)."""
    both = offline.select(DEVICE, TS, "is_anomaly", "score").join(
        trainer.readings.select(DEVICE, TS, "is_anomaly", "score"),
        on=[DEVICE, TS],
        how="full",
        suffix="_trainer",
    )
    unmatched = both.filter(pl.col(DEVICE).is_null() | pl.col(f"{DEVICE}_trainer").is_null()).height
    if unmatched:
        raise ValueError(f"{unmatched} readings are in only one of the offline run and the series")
    offline_only = both.filter(pl.col("is_anomaly") & ~pl.col("is_anomaly_trainer")).height
    trainer_only = both.filter(~pl.col("is_anomaly") & pl.col("is_anomaly_trainer")).height
    flagged = both.filter(pl.col("is_anomaly") & pl.col("is_anomaly_trainer"))
    gap = (flagged["score"] - flagged["score_trainer"]).abs().max() if flagged.height else None
    return {
        "readings": both.height,
        "flagged_offline_only": offline_only,
        "flagged_by_the_trainer_only": trainer_only,
        "flagged_by_both": flagged.height,
        "max_score_difference": None if gap is None else float(gap),
    }
