"""Rolling z-score: the baseline detector the neural model must beat.

Per device and feature, a reading's z-score is |x - mean| / std of the feature over the device's
previous `window` readings, excluding the reading itself so that a spike cannot mask itself by
inflating its own std. The score of a reading is the largest z-score over its features.

Missing values (null or NaN) are skipped: they neither get a z-score nor count towards the
`min_samples` valid values a window needs. A reading gets a null score when no feature has one
(the first readings of a device, or all its features missing); evaluation refuses nulls, so fill
them (0.0 = "no evidence") or drop those readings. A constant window has std 0; it is floored at
`min_std`, so any change from a stuck value scores very high but finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

SCORE = "score"


def zscore_expr(
    feature: str, *, window: int, min_samples: int, device: str | None, min_std: float
) -> pl.Expr:
    value = pl.col(feature).cast(pl.Float64).fill_nan(None)
    previous = value.shift(1)
    mean = previous.rolling_mean(window, min_samples=min_samples)
    std = previous.rolling_std(window, min_samples=min_samples)
    z = (value - mean).abs() / pl.max_horizontal(std, pl.lit(min_std))
    return z.over(device) if device is not None else z


def rolling_zscore(
    frame: pl.DataFrame,
    features: Sequence[str],
    *,
    window: int = 100,
    min_samples: int | None = None,
    device: str | None = "device_id",
    min_std: float = 1e-9,
) -> pl.Series:
    """A Float64 score per row of `frame`, named ``score``, in the frame's row order.

    Rows must be in time order within each device (devices may be interleaved). `min_samples`
    (default: half the window, at least 2) is the number of valid previous values a z-score needs.
    `device=None` treats the frame as one series.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    min_samples = max(2, window // 2) if min_samples is None else min_samples
    if not 2 <= min_samples <= window:
        raise ValueError(f"min_samples must be within 2..window ({window}), got {min_samples}")
    if not features:
        raise ValueError("give at least one feature")
    missing = [c for c in (*features, *([device] if device else [])) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    scores = [
        zscore_expr(f, window=window, min_samples=min_samples, device=device, min_std=min_std)
        for f in features
    ]
    return frame.select(pl.max_horizontal(scores).alias(SCORE)).to_series()
