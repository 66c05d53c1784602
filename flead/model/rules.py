"""Hard physical limits: a reading outside what its sensor can physically report is an anomaly,
whatever a model has learned to expect (a slowly dying battery walks a mote's temperature up to 122 °C
gradually enough for an online model to follow it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flead.fleet import INTEL_LAB


def out_of_range(
    values: np.ndarray,
    features: Sequence[str],
    ranges: Mapping[str, tuple[float, float]] = INTEL_LAB.valid_ranges,
) -> np.ndarray:
    """Per reading (row of `values`, columns = `features`), whether a feature with known limits lies
    outside them. Missing values and features without limits never trip it."""
    values = np.asarray(values, dtype=np.float64)
    tripped = np.zeros(len(values), bool)
    for column, feature in enumerate(features):
        if feature in ranges:
            low, high = ranges[feature]
            v = values[:, column]
            tripped |= (v < low) | (v > high)
    return tripped
