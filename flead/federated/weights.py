"""Model weights as plain ``name -> array`` dicts, and the arithmetic the strategies share."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

Weights = dict[str, np.ndarray]


def frozen_float32(arrays: Mapping[str, np.ndarray]) -> Weights:
    """Read-only float32 copies: a model that updates its parameters in place cannot corrupt a
    global state (or its history) it was handed, it fails loudly instead."""
    frozen = {}
    for name, array in arrays.items():
        copy = np.array(array, dtype=np.float32, copy=True)
        copy.flags.writeable = False
        frozen[name] = copy
    return frozen


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """The L2 norm over all arrays together, as if they were one flat vector (computed in float64)."""
    total = 0.0
    for array in arrays.values():
        total += float(np.sum(np.square(np.asarray(array, dtype=np.float64))))
    return math.sqrt(total)


def all_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(bool(np.isfinite(array).all()) for array in arrays.values())
