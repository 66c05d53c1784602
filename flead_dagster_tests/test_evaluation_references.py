"""The references (z-score, PCA T²+Q, flag everything, flag nothing): calibrated on the train part,
judged on the same split as the detector, with every unjudged reading counted and explained."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flead.evaluation.loader import LabelledSeries
from flead.evaluation.references import (
    NO_CALIBRATION,
    NO_PCA,
    NO_ZSCORE,
    REFERENCES,
    ReferenceConfig,
    score_reference,
)
from flead.evaluation.runner import EvaluationPlan, evaluate
from flead.model.pca import PCADetector
from flead.model.thresholds import calibrated_threshold


def shifted_device(name: str, n_train: int, n_test: int, seed: int, shift_at: int) -> pl.DataFrame:
    """Two correlated features; from `shift_at` of the test part on, the correlation breaks."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    base = rng.normal(size=n)
    a, b = base + 0.1 * rng.normal(size=n), 2 * base + 0.1 * rng.normal(size=n)
    label = np.zeros(n, np.int8)
    label[n_train + shift_at :] = 1
    b[label == 1] -= 3.0
    return pl.DataFrame(
        {
            "device_id": name,
            "row": np.arange(n),
            "a": a,
            "b": b,
            "label": label,
            "is_train": np.arange(n) < n_train,
        }
    )


def test_the_scorers_threshold_is_calibrated_on_the_train_part() -> None:
    frame = shifted_device("d", 4000, 6000, seed=1, shift_at=5000)
    normal = frame["is_train"].to_numpy()
    config = ReferenceConfig(false_alarm_rate=1e-3)
    out = score_reference("pca", frame, ("a", "b"), normal, config)
    x = frame.select("a", "b").to_numpy()
    model = PCADetector(config.pca_variance).learn_many(x[normal])
    threshold = calibrated_threshold(model.score_many(x[normal]), 1e-3)
    np.testing.assert_allclose(out["score"].to_numpy(), model.score_many(x))
    expected = ~normal & (model.score_many(x) > threshold)
    assert (out["is_anomaly"].to_numpy() == expected).all()
    assert out["unjudged"].null_count() == frame.height
    labels = frame["label"].to_numpy() == 1
    for name in ("pca", "zscore"):
        flags = score_reference(name, frame, ("a", "b"), normal, config)["is_anomaly"].to_numpy()
        assert not flags[normal].any(), name  # the train part only calibrates
        far = flags[~normal & ~labels].mean()
        assert far < 0.01, (name, far)  # near the 1e-3 target on normal test readings
    pca_flags = out["is_anomaly"].to_numpy()
    assert pca_flags[labels].mean() > 0.9  # the broken correlation is off the PCA's subspace


def test_flag_everything_and_flag_nothing_judge_every_scored_reading() -> None:
    frame = shifted_device("d", 10, 20, seed=2, shift_at=5)
    normal = frame["is_train"].to_numpy()
    everything = score_reference("flag_everything", frame, ("a",), normal)
    nothing = score_reference("flag_nothing", frame, ("a",), normal)
    assert everything["is_anomaly"].to_list() == (~normal).tolist()
    assert not nothing["is_anomaly"].any()
    assert everything["unjudged"].null_count() == nothing["unjudged"].null_count() == frame.height


def test_devices_that_cannot_be_judged_say_why() -> None:
    frame = pl.concat(
        [
            shifted_device("no-train", 0, 50, seed=3, shift_at=40),
            shifted_device("one-row", 1, 50, seed=4, shift_at=40),
        ]
    ).with_columns(pl.int_range(pl.len()).over("device_id").alias("row"))
    normal = frame["is_train"].to_numpy()
    scored = ~normal
    pca = score_reference("pca", frame, ("a", "b"), normal)
    by_device = pca.with_columns(frame["device_id"]).filter(pl.Series(scored))
    reasons = dict(by_device.group_by("device_id").agg(pl.col("unjudged").unique()).iter_rows())
    assert reasons == {"no-train": [NO_PCA], "one-row": [NO_PCA]}
    assert not pca["is_anomaly"].any() and pca["score"].is_finite().all()
    zscore = score_reference("zscore", frame, ("a", "b"), normal, ReferenceConfig(zscore_window=10))
    z_reasons = zscore.filter(pl.Series(scored))["unjudged"].unique().to_list()
    assert set(z_reasons) == {NO_ZSCORE, NO_CALIBRATION}  # scores exist after 5 readings, no calibration


def test_online_references_are_prequential_by_micro_batch() -> None:
    frame = shifted_device("d", 0, 3000, seed=5, shift_at=2500).drop("is_train")
    out = score_reference("pca", frame, ("a", "b"), None, ReferenceConfig(batch_size=500))
    reasons = out["unjudged"].to_list()
    # The first batch has no PCA yet, the second no earlier scores to calibrate on.
    assert set(reasons[:500]) == {NO_PCA} and set(reasons[500:1000]) == {NO_CALIBRATION}
    assert set(reasons[1000:]) == {None}
    flags, labels = out["is_anomaly"].to_numpy(), frame["label"].to_numpy() == 1
    assert flags[labels].mean() > 0.9 and flags[~labels].mean() < 0.01
    z = score_reference("zscore", frame, ("a", "b"), None, ReferenceConfig(batch_size=500))
    assert z["unjudged"][:500].to_list() == [NO_ZSCORE] * 50 + [NO_CALIBRATION] * 450


def test_every_reference_runs_on_the_same_split_as_the_detector() -> None:
    frame = pl.concat(
        [shifted_device(f"d{i}", 500, 700, seed=10 + i, shift_at=400) for i in range(3)]
    ).with_columns(pl.col("row").cast(pl.Int64))
    series = LabelledSeries(frame=frame, features=("a", "b"), files=())
    outcomes = {m: evaluate(series, EvaluationPlan(mode=m, given_split=True)) for m in REFERENCES}
    for name, outcome in outcomes.items():
        assert outcome.readings_trained == 1500 and outcome.readings_scored == 2100, name
        assert outcome.evaluation.pooled.judged == 2100, name
    pooled = {m: o.evaluation.pooled for m, o in outcomes.items()}
    assert (
        pooled["flag_everything"].point.recall == 1.0
        and pooled["flag_everything"].point.false_alarm_rate == 1.0
    )
    assert pooled["flag_nothing"].alarms == 0 and pooled["flag_nothing"].point.missed_alarm_rate == 1.0
    share = 900 / 2100
    assert pooled["flag_everything"].pr_auc == pytest.approx(share)  # chance level
    assert pooled["pca"].point.f1 > 0.9 and pooled["pca"].point.false_alarm_rate < 0.01
    with pytest.raises(ValueError, match="own train/test split"):
        evaluate(series, EvaluationPlan(mode="pca", train_fraction=0.5))
    with pytest.raises(ValueError, match="no train/test split of its own"):
        evaluate(
            LabelledSeries(frame.drop("is_train"), ("a", "b"), ()),
            EvaluationPlan(mode="pca", given_split=True),
        )


def test_unknown_reference_and_bad_target() -> None:
    frame = shifted_device("d", 5, 5, seed=6, shift_at=2)
    with pytest.raises(ValueError, match="reference must be one of"):
        score_reference("median", frame, ("a",), None)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        ReferenceConfig(false_alarm_rate=0.0)
