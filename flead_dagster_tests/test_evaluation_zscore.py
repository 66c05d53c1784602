"""The rolling z-score baseline: previous-window statistics, per device, NaN-safe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flead.evaluation.loader import load_labelled, split_series
from flead.evaluation.metrics import evaluate_frame
from flead.evaluation.zscore import rolling_zscore


def one_device(**columns: list[float] | np.ndarray) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"device_id": ["d"] * n, **columns})


def test_score_uses_the_previous_window_only() -> None:
    frame = one_device(x=[1.0, 2.0, 3.0, 10.0, 3.0])
    score = rolling_zscore(frame, ["x"], window=3, min_samples=2)
    assert score.name == "score"
    assert score[:2].to_list() == [None, None]  # fewer than two previous values
    assert score[2] == pytest.approx(1.5 / math.sqrt(0.5))  # previous [1, 2]
    assert score[3] == pytest.approx(8.0)  # previous [1, 2, 3]: mean 2, std 1
    assert score[4] == pytest.approx(2.0 / math.sqrt(19.0))  # previous [2, 3, 10]: mean 5, std sqrt(19)


def test_flags_a_spike_and_not_the_reading_after_it() -> None:
    rng = np.random.default_rng(11)
    values = rng.normal(20.0, 1.0, 300)
    values[200] += 12.0
    score = rolling_zscore(one_device(temperature=values), ["temperature"], window=100).fill_null(0.0)
    assert score[200] > 8.0
    assert score[201] < 3.0  # the spike in its window widens the std instead of raising an alarm
    assert np.flatnonzero(score.to_numpy() > 5.0).tolist() == [200]


def test_max_over_features() -> None:
    quiet = [0.0, 1.0] * 10
    loud = [*quiet[:-1], 7.0]
    both = rolling_zscore(one_device(a=quiet, b=loud), ["a", "b"], window=10)
    alone = rolling_zscore(one_device(b=loud), ["b"], window=10)
    assert both[-1] == pytest.approx(alone[-1])
    assert both[-1] > 10


def test_missing_values_are_skipped_not_spread() -> None:
    values = [float(v % 3) for v in range(30)]
    values[10] = float("nan")
    with_gap = one_device(x=values, y=[None if i == 20 else 1.0 + i % 2 for i in range(30)])
    score = rolling_zscore(with_gap, ["x"], window=8, min_samples=4)
    assert score[10] is None  # the reading's only feature is missing
    assert not score.is_nan().any()
    assert score[11:].null_count() == 0  # one missing value in a window leaves enough to score
    two = rolling_zscore(with_gap, ["x", "y"], window=8, min_samples=4)
    assert two[10] is not None  # y still scores the reading
    assert two[20] == pytest.approx(score[20])  # y missing: x alone


def test_devices_are_scored_separately_even_when_interleaved() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 50), rng.normal(100, 5, 50)
    interleaved = pl.DataFrame({"device_id": ["a", "b"] * 50, "x": np.ravel(np.column_stack([a, b]))})
    score = rolling_zscore(interleaved, ["x"], window=10)
    alone_a = rolling_zscore(one_device(x=a), ["x"], window=10)
    alone_b = rolling_zscore(one_device(x=b), ["x"], window=10)
    assert score.gather_every(2).to_list() == pytest.approx(alone_a.to_list(), nan_ok=True)
    assert score.gather_every(2, offset=1).to_list() == pytest.approx(alone_b.to_list(), nan_ok=True)


def test_a_stuck_window_scores_changes_high_but_finite() -> None:
    score = rolling_zscore(one_device(x=[5.0] * 10 + [6.0, 5.0]), ["x"], window=10)
    assert 1e6 < score[10] < math.inf
    assert score[9] == 0.0


def test_arguments_are_checked() -> None:
    frame = one_device(x=[1.0, 2.0])
    with pytest.raises(ValueError, match="window"):
        rolling_zscore(frame, ["x"], window=1)
    with pytest.raises(ValueError, match="min_samples"):
        rolling_zscore(frame, ["x"], window=5, min_samples=6)
    with pytest.raises(ValueError, match=r"lacks columns \['y'\]"):
        rolling_zscore(frame, ["y"])


def test_baseline_pipeline_from_files_to_metrics(tmp_path: Path) -> None:
    """Load two devices from CSV, train on the first half, score the rest, evaluate the spikes."""
    rng = np.random.default_rng(3)
    for name, spike_at in (("north", 150), ("south", 170)):
        values = rng.normal(20.0, 0.5, 200)
        labels = np.zeros(200, dtype=int)
        values[spike_at] += 10.0
        labels[spike_at] = 1
        pl.DataFrame({"temperature": values, "label": labels}).write_csv(tmp_path / f"{name}.csv")
    loaded = load_labelled([tmp_path])
    scored = loaded.frame.with_columns(
        score=rolling_zscore(loaded.frame, loaded.features, window=50).fill_null(0.0)
    )
    _, evaluated = split_series(scored, train_fraction=0.5)
    result = evaluate_frame(evaluated.with_columns(alarm=pl.col("score") > 5.0), ts=None)
    assert result.pooled.event.events == 2
    assert result.pooled.event.recall == 1.0
    assert result.pooled.pr_auc == 1.0
    assert set(result.devices) == {"north", "south"}
