"""Detection metrics against hand-computed examples: points, events, PR-AUC, delays, false alarms."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from flead.evaluation.metrics import (
    average_precision,
    count_device_days,
    detection_delays,
    evaluate_device,
    evaluate_frame,
    event_index,
    event_scores,
    point_scores,
)


def bits(text: str) -> np.ndarray:
    return np.array([c == "1" for c in text.replace(" ", "")])


# index       0123456789012345
LABELS = bits("0011111000011000")  # events: 2..6 and 11..12
ALARMS = bits("0100111011000010")  # runs: 1 (just before the event), 4..6 (inside), 8..9, 14


def test_point_scores_count_readings() -> None:
    scores = point_scores(ALARMS, LABELS)
    assert (scores.tp, scores.fp, scores.fn) == (3, 4, 4)
    assert scores.precision == pytest.approx(3 / 7)
    assert scores.recall == pytest.approx(3 / 7)
    assert scores.f1 == pytest.approx(3 / 7)


def test_an_event_counts_once_and_untouching_alarm_runs_are_false_positives() -> None:
    scores = event_scores(ALARMS, LABELS)
    # Event 2..6 fires on three readings but is one detection; 11..12 is missed. The run at 1 ends
    # right before the event without touching it, so it is a false positive like 8..9 and 14.
    assert (scores.events, scores.detected, scores.false_positive_runs) == (2, 1, 3)
    assert scores.precision == pytest.approx(1 / 4)
    assert scores.recall == pytest.approx(1 / 2)
    assert scores.f1 == pytest.approx(1 / 3)


def test_an_alarm_run_overlapping_an_event_is_not_a_false_positive() -> None:
    labels = bits("000111000")
    alarms = bits("011110000")  # starts before the event, runs into it
    scores = event_scores(alarms, labels)
    assert (scores.events, scores.detected, scores.false_positive_runs) == (1, 1, 0)
    assert scores.precision == 1.0


def test_event_ids_define_events_instead_of_runs() -> None:
    labels = bits("011110010")
    ids = np.array([-1, 7, 7, 8, 8, -1, -1, 7, -1])  # event 7 is split around event 8
    alarms = bits("001010000")
    assert event_index(labels, ids).tolist() == [-1, 0, 0, 1, 1, -1, -1, 0, -1]
    by_id = event_scores(alarms, labels, ids)
    by_run = event_scores(alarms, labels)
    assert (by_id.events, by_id.detected) == (2, 2)
    assert (by_run.events, by_run.detected) == (2, 1)  # runs 1..4 and 7
    readings, _ = detection_delays(alarms, labels, event_ids=ids)
    assert readings.tolist() == [1, 1]  # event 7 starts at 1, fires at 2; event 8 starts at 3, fires at 4


def test_event_ids_must_match_labels() -> None:
    with pytest.raises(ValueError, match="exactly on the labelled readings"):
        event_scores(bits("0110"), bits("0110"), np.array([-1, 3, -1, -1]))


def test_detection_delays_in_readings_and_seconds() -> None:
    #                    0    1    2    3    4    5    6     7     8     9     10    11    12
    seconds = np.array([0, 10, 20, 50, 60, 70, 100, 130, 140, 150, 160, 170, 200])
    ts = np.datetime64("2024-03-01T00:00:00") + seconds.astype("timedelta64[s]")
    labels = bits("0111001111011")  # events 1..3, 6..9, 11..12
    alarms = bits("0001000110010")
    readings, secs = detection_delays(alarms, labels, ts)
    assert readings.tolist() == [2, 1, 0]
    assert secs.tolist() == [40.0, 30.0, 0.0]
    delay = evaluate_device(labels, alarms, ts=ts).delay
    assert (delay.detected, delay.mean_readings, delay.median_readings) == (3, 1.0, 1.0)
    assert delay.mean_seconds == pytest.approx(70 / 3)
    assert delay.median_seconds == 30.0


def test_undetected_events_have_no_delay() -> None:
    delay = evaluate_device(bits("0110"), bits("1000")).delay
    assert delay.detected == 0
    assert delay.mean_readings is None and delay.mean_seconds is None


def test_false_alarms_per_device_day_counts_days_with_readings() -> None:
    start = datetime(2024, 1, 1, 23, 0, tzinfo=UTC)
    times = [start, start + timedelta(minutes=30), start + timedelta(hours=2), start + timedelta(days=3)]
    ts = np.array([t.replace(tzinfo=None) for t in times], dtype="datetime64[us]")
    report = evaluate_device(bits("0100"), bits("1101"), ts=ts)
    assert count_device_days(ts) == 3  # Jan 1, Jan 2 and Jan 4; Jan 3 had no readings
    assert report.false_alarms == 2
    assert report.false_alarms_per_device_day == pytest.approx(2 / 3)


def test_no_timestamps_no_device_days() -> None:
    report = evaluate_device(bits("01"), bits("11"))
    assert report.device_days is None and report.false_alarms_per_device_day is None


def test_average_precision_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3, 0.1])
    labels = np.array([1, 1, 0, 0, 1, 0])
    # Thresholds 0.9: P=1, R=1/3; 0.8 (tie, two readings enter together): P=2/3, R=2/3;
    # 0.5: P=2/4, R=2/3; 0.3: P=3/5, R=1; 0.1: P=3/6, R=1.
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5)
    assert average_precision(scores, labels) == pytest.approx(expected)


def test_average_precision_matches_the_scikit_learn_documentation_example() -> None:
    # sklearn.metrics.average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(5 / 6)


def test_average_precision_bounds() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0])
    assert average_precision(labels * 2.0 + 0.5, labels) == 1.0
    rng = np.random.default_rng(7)
    many = rng.random(50_000) < 0.1
    assert average_precision(rng.random(many.size), many) == pytest.approx(many.mean(), abs=0.01)
    assert average_precision(np.array([np.inf, 1.0, -np.inf]), np.array([1, 0, 0])) == 1.0


def test_average_precision_refuses_nan_and_is_undefined_without_positives() -> None:
    with pytest.raises(ValueError, match="1 NaN"):
        average_precision(np.array([0.1, np.nan]), np.array([0, 1]))
    assert average_precision(np.array([0.1, 0.2]), np.array([0, 0])) is None


def test_undefined_ratios_are_none_not_zero() -> None:
    quiet = evaluate_device(bits("0000"), bits("0000"), scores=np.zeros(4))
    assert (quiet.point.precision, quiet.point.recall, quiet.point.f1) == (None, None, None)
    assert quiet.event.f1 is None and quiet.pr_auc is None
    missed = evaluate_device(bits("0110"), bits("0000"))
    assert (missed.point.precision, missed.point.recall, missed.point.f1) == (None, 0.0, 0.0)


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        point_scores(bits("01"), bits("011"))
    with pytest.raises(ValueError, match="labels must be booleans or 0/1"):
        point_scores(bits("01"), np.array([0, 2]))


def unbalanced() -> pl.DataFrame:
    """A long, perfectly detected device and a short one where everything goes wrong."""
    big_label = np.zeros(100, dtype=np.int8)
    big_label[10:30] = 1
    small_label = np.array([1, 1, 0, 0], dtype=np.int8)
    small_alarm = np.array([False, False, True, True])
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "device_id": ["big"] * 100 + ["small"] * 4,
            "ts": [t0 + timedelta(minutes=i) for i in range(100)]
            + [t0 + timedelta(minutes=i) for i in range(4)],
            "label": np.r_[big_label, small_label],
            "alarm": np.r_[big_label == 1, small_alarm],
            "score": np.r_[big_label.astype(float), small_alarm.astype(float)],
        }
    )


def test_micro_average_pools_readings_and_events() -> None:
    frame = unbalanced()
    result = evaluate_frame(frame)
    assert result.devices["big"].point.f1 == 1.0
    assert result.devices["small"].point.f1 == 0.0
    assert result.macro["point_f1"] == pytest.approx(0.5)
    # Pooled: tp = 20, fp = 2, fn = 2.
    assert result.pooled.point.f1 == pytest.approx(40 / 44)
    assert (result.pooled.event.events, result.pooled.event.detected) == (2, 1)
    assert result.pooled.event.false_positive_runs == 1
    assert result.pooled.event.f1 == pytest.approx(2 / 4)
    # PR-AUC of the pooled readings: the score-1 tie holds 20 of 22 positives among 22 readings.
    assert result.pooled.pr_auc == pytest.approx((20 / 22) * (20 / 22) + (2 / 22) * (22 / 104))
    assert result.pooled.pr_auc == pytest.approx(average_precision(frame["score"], frame["label"]))
    assert result.macro["pr_auc"] == pytest.approx((1.0 + 0.5) / 2)
    assert result.pooled.device_days == 2


def test_pooled_runs_never_cross_devices() -> None:
    # a's event runs up to its last reading and b's starts at its first; c's alarms run to its last
    # reading and d's start at its first: pooled, each device's runs stay its own.
    frame = pl.DataFrame(
        {
            "device_id": ["a"] * 4 + ["b"] * 4 + ["c"] * 2 + ["d"] * 2,
            "label": [*(0, 0, 1, 1), *(1, 1, 0, 0), *(0, 0), *(0, 0)],
            "alarm": [*(0, 1, 0, 0), *(1, 0, 0, 0), *(0, 1), *(1, 0)],
        }
    ).with_columns(pl.col("alarm").cast(pl.Boolean))
    pooled = evaluate_frame(frame, score=None, ts=None).pooled
    assert (pooled.event.events, pooled.event.detected, pooled.event.false_positive_runs) == (2, 1, 3)


def test_evaluate_frame_orders_rows_by_device_and_time() -> None:
    frame = unbalanced()
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    assert evaluate_frame(shuffled).to_dict() == evaluate_frame(frame).to_dict()


def test_evaluate_frame_takes_event_ids_with_nulls() -> None:
    frame = pl.DataFrame(
        {
            "device_id": ["a"] * 4,
            "label": [1, 1, 0, 0],
            "event_id": [4, 5, None, None],
            "alarm": [True, True, False, False],
        }
    )
    result = evaluate_frame(frame, score=None, event_id="event_id")
    assert (result.pooled.event.events, result.pooled.event.detected) == (2, 2)


def test_evaluate_frame_refuses_missing_scores() -> None:
    frame = unbalanced().with_columns(score=pl.lit(None, dtype=pl.Float64))
    with pytest.raises(ValueError, match="missing scores"):
        evaluate_frame(frame)


def test_reports_serialise_to_strict_json() -> None:
    text = json.dumps(evaluate_frame(unbalanced()).to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["pooled"]["event"]["detected"] == 1
    assert set(back["devices"]) == {"big", "small"}


# index          0123456789012345
SEQUENCES = bits("0011100000111000")  # labelled sequences 2..4 and 10..12
FLAGS = bits("0001100010000110")  # flagged runs 3..4 (inside the first), 8, 13..14 (right after the second)


def test_far_and_mar_beside_point_scores() -> None:
    point = point_scores(FLAGS, SEQUENCES)
    assert (point.tp, point.fp, point.fn, point.tn) == (2, 3, 4, 7)
    assert point.false_alarm_rate == pytest.approx(3 / 10)  # false positives / actual negatives
    assert point.missed_alarm_rate == pytest.approx(4 / 6)  # false negatives / actual positives
    quiet = point_scores(bits("000"), bits("000"))
    assert quiet.false_alarm_rate == 0.0 and quiet.missed_alarm_rate is None


def test_event_sequence_metric_two_sequences_three_flagged_runs() -> None:
    report = evaluate_device(SEQUENCES, FLAGS)
    seq = report.event_sequence
    # One sequence detected, one missed; runs 8 and 13..14 touch no sequence: two false positives.
    assert (seq.events, seq.detected, seq.false_positive_runs) == (2, 1, 2)
    assert seq.precision == pytest.approx(1 / 3)
    assert seq.recall == pytest.approx(1 / 2)
    assert seq.f1 == pytest.approx(0.4)


def test_event_sequence_ignores_event_ids_and_the_event_metric_follows_them() -> None:
    labels = bits("0111100")
    ids = np.array([-1, 1, 1, 2, 2, -1, -1])  # two injected events back to back: one sequence
    alarms = bits("0001000")
    report = evaluate_device(labels, alarms, event_ids=ids)
    assert (report.event.events, report.event.detected) == (2, 1)
    assert (report.event_sequence.events, report.event_sequence.detected) == (1, 1)
    assert report.event_sequence.f1 == 1.0


def test_pooled_event_sequence_counts_are_sums_over_devices() -> None:
    frame = pl.DataFrame(
        {
            "device_id": ["a"] * 16 + ["b"] * 6,
            "label": np.r_[SEQUENCES, bits("000110")].astype(np.int8),
            "alarm": np.r_[FLAGS, bits("110110")],
        }
    )
    result = evaluate_frame(frame, score=None, ts=None)
    a, b, pooled = result.devices["a"], result.devices["b"], result.pooled
    assert (b.event_sequence.events, b.event_sequence.detected, b.event_sequence.false_positive_runs) == (
        1,
        1,
        1,
    )
    for field in ("events", "detected", "false_positive_runs"):
        total = getattr(a.event_sequence, field) + getattr(b.event_sequence, field)
        assert getattr(pooled.event_sequence, field) == total
    assert pooled.event_sequence.precision == pytest.approx(2 / 5)  # not the mean of 1/3 and 1/2
    assert pooled.point.false_alarm_rate == pytest.approx(5 / 14)
    assert result.macro["event_sequence_f1"] == pytest.approx((0.4 + 2 / 3) / 2)


def test_unjudged_readings_are_counted_by_reason_and_may_not_alarm() -> None:
    frame = pl.DataFrame(
        {
            "device_id": ["a"] * 4,
            "label": [0, 1, 1, 0],
            "alarm": [False, False, True, False],
            "why": ["no threshold yet", "no threshold yet", None, None],
        }
    )
    report = evaluate_frame(frame, score=None, ts=None, unjudged="why").pooled
    assert report.judged == 2 and report.unjudged == {"no threshold yet": 2}
    assert report.point.fn == 1  # an unjudged labelled reading is missed, as in service
    with pytest.raises(ValueError, match="1 unjudged readings have an alarm"):
        evaluate_frame(frame.with_columns(alarm=pl.lit(True)).head(1), score=None, ts=None, unjudged="why")
    assert evaluate_device(bits("01"), bits("01")).unjudged == {}
