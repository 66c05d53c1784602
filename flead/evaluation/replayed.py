"""A labelled series through the running system: the readings to replay (`flead.bus.replay`), and what
the stream trainer wrote to MongoDB turned into per-reading decisions that score like `flead evaluate`:
its anomaly documents (one per flagged reading: ``device_id``, ``ts_us``, ``score``, ``reason``;
`services.stream_trainer.outputs`) or its event documents (``device_id``, ``start_us``, ``end_us``;
`services.stream_trainer.events`), whose readings from the first alarm to the last are flagged, as
`runner.evaluate` flags the readings inside a kept event.

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
    # the series' rows: device_id, ts, ts_us, label(, event_id, anomaly_type), is_anomaly, score
    # (the trainer's score of a flagged reading; null for the others and for events)
    readings: pl.DataFrame
    rule_alarms: int  # readings or events with a physical limit broken (none after `within_limits`)

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
    """Each reading of `series` flagged (``is_anomaly``: the model's alarm) or not by the trainer's
    anomaly documents."""
    docs = pl.DataFrame(
        [{DEVICE: d[DEVICE], TS_US: d[TS_US], "score": d["score"], "reason": d["reason"]} for d in documents],
        schema={DEVICE: pl.String, TS_US: pl.Int64, "score": pl.Float64, "reason": pl.String},
    )
    readings = _readings(series)
    _check_matched(docs, readings, TS_US, "anomaly")
    model = docs.filter(pl.col("reason") == MODEL).select(DEVICE, TS_US, "score")
    readings = readings.join(model, on=[DEVICE, TS_US], how="left", maintain_order="left").with_columns(
        pl.col("score").is_not_null().alias("is_anomaly")
    )
    return TrainerDecisions(readings, int((docs["reason"] == RULE).sum()))


def trainer_events(series: LabelledSeries, documents: Iterable[Mapping]) -> TrainerDecisions:
    """Each reading of `series` inside one of the trainer's events (from its first alarm to its last)."""
    docs = pl.DataFrame(
        [
            {DEVICE: d[DEVICE], "start_us": d["start_us"], "end_us": d["end_us"], "reason": d["reason"]}
            for d in documents
        ],
        schema={DEVICE: pl.String, "start_us": pl.Int64, "end_us": pl.Int64, "reason": pl.String},
    ).sort(DEVICE, "start_us")
    readings = _readings(series)
    for bound in ("start_us", "end_us"):
        _check_matched(docs, readings, bound, "event")
    overlapping = docs.filter(pl.col("start_us") <= pl.col("end_us").shift(1).over(DEVICE)).height
    if overlapping:
        raise ValueError(f"{overlapping} events start before the previous event of their device ends")
    # a device's events do not overlap: a reading is inside the last one that starts at or before it
    inside = (
        readings.with_row_index("_row")
        .sort(TS_US)
        .join_asof(
            docs.sort("start_us"),
            left_on=TS_US,
            right_on="start_us",
            by=DEVICE,
            strategy="backward",
            check_sortedness=False,  # (both sorted by time: polars cannot check it with `by`)
        )
        .select("_row", (pl.col(TS_US) <= pl.col("end_us")).fill_null(False).alias("is_anomaly"))
        .sort("_row")
    )
    readings = readings.with_columns(inside["is_anomaly"], pl.lit(None, pl.Float64).alias("score"))
    return TrainerDecisions(readings, int((docs["reason"] != MODEL).sum()))


def disagreements(offline: pl.DataFrame, trainer: TrainerDecisions) -> dict[str, int | float | None]:
    """Where the trainer's alarms differ from an offline run's (`EvaluationOutcome.readings`, grouped
    into events or not as the trainer's are): readings flagged by one only, and the largest score
    difference on readings both flagged (the trainer stores scores of flagged readings only)."""
    both = offline.select(DEVICE, TS, "is_anomaly", "score").join(
        trainer.readings.select(DEVICE, TS, "is_anomaly", "score"),
        on=[DEVICE, TS],
        how="full",
        suffix="_trainer",
    )
    unmatched = both.filter(pl.col(DEVICE).is_null() | pl.col(f"{DEVICE}_trainer").is_null()).height
    if unmatched:
        raise ValueError(f"{unmatched} readings are in only one of the offline run and the series")
    flagged = both.filter(pl.col("is_anomaly") & pl.col("is_anomaly_trainer"))
    gap = (flagged["score"] - flagged["score_trainer"]).abs().max() if flagged.height else None
    return {
        "readings": both.height,
        "flagged_offline_only": both.filter(pl.col("is_anomaly") & ~pl.col("is_anomaly_trainer")).height,
        "flagged_by_the_trainer_only": both.filter(
            ~pl.col("is_anomaly") & pl.col("is_anomaly_trainer")
        ).height,
        "flagged_by_both": flagged.height,
        "max_score_difference": None if gap is None else float(gap),
    }


def _readings(series: LabelledSeries) -> pl.DataFrame:
    keep = [c for c in (DEVICE, TS, LABEL, EVENT, "anomaly_type") if c in series.frame.columns]
    return series.frame.select(keep).with_columns(pl.col(TS).dt.epoch("us").alias(TS_US))


def _check_matched(docs: pl.DataFrame, readings: pl.DataFrame, column: str, kind: str) -> None:
    """Every document's (device_id, `column`) is a reading's (device_id, ts_us), and only one's."""
    repeated = docs.height - docs.select(DEVICE, column).n_unique()
    if repeated:
        raise ValueError(f"{repeated} {kind} documents repeat the ({DEVICE}, {column}) of another")
    unmatched = docs.join(readings, left_on=[DEVICE, column], right_on=[DEVICE, TS_US], how="anti")
    if unmatched.height:
        first = unmatched.row(0, named=True)
        raise ValueError(
            f"{unmatched.height} {kind} documents match no reading of the series "
            f"(first: {first[DEVICE]} at {column} {first[column]})"
        )
