"""From normalised readings in time order to the network's inputs and targets, vectorised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from flead.model.config import ModelConfig

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def hour_of_day(ts_us: np.ndarray) -> np.ndarray:
    """Hours since midnight (float) of epoch microseconds."""
    return (np.asarray(ts_us, dtype=np.int64) % DAY_US) / HOUR_US


def time_encoding(hours: np.ndarray) -> np.ndarray:
    """(n, 2) float32: sin and cos of the hour of day, so 23:59 sits next to 00:00."""
    angle = np.asarray(hours, dtype=np.float64) * (2.0 * np.pi / 24.0)
    return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def row_windows(rows: np.ndarray, window: int) -> np.ndarray:
    """Read-only view (len(rows) - window + 1, window * values per row): row i holds rows i .. i + window - 1
    of `rows`, flattened (numpy's sliding_window_view without its per-call cost)."""
    rows = np.ascontiguousarray(rows)
    width = int(np.prod(rows.shape[1:], dtype=np.int64))
    shape = (max(len(rows) - window + 1, 0), window * width)
    return as_strided(rows, shape, (width * rows.itemsize, rows.itemsize), writeable=False)


def forward_fill(seq: np.ndarray) -> np.ndarray:
    """NaN replaced by the last finite value above it in the same column; leading NaN by 0 (the mean)."""
    finite = np.isfinite(seq)
    if finite.all():
        return seq
    index = np.where(finite, np.arange(seq.shape[0])[:, None], 0)
    np.maximum.accumulate(index, axis=0, out=index)
    filled = np.take_along_axis(seq, index, axis=0)
    filled[~np.isfinite(filled)] = 0.0
    return filled


@dataclass
class Inputs:
    """Network inputs for n readings."""

    x: np.ndarray  # (n, input_size) float32
    base: np.ndarray | None  # (n, output_size): added to the network output (forecaster: last reading)


def build_inputs(config: ModelConfig, seq: np.ndarray, hours: np.ndarray | None) -> Inputs:
    """Inputs for the last n rows of `seq`, whose first ``config.context_length`` rows are context.

    `seq` is (context_length + n, C) float32 in normalised units (the config's columns: features,
    then inputs) with NaN for missing (or masked) values, which are forward-filled; inputs are
    clipped to +-input_clip.
    """
    w, c, f = config.window, config.n_columns, config.n_features
    filled = np.clip(forward_fill(seq), -config.input_clip, config.input_clip)
    source = filled[:-1] if config.kind == "forecaster" else filled
    windows = row_windows(source, w)
    if config.time_features:
        if hours is None:
            raise ValueError("this model uses the time of day: the batch needs timestamps")
        x = np.concatenate([windows, time_encoding(hours)], axis=1)
    else:
        x = np.ascontiguousarray(windows)
    base = x[:, (w - 1) * c : (w - 1) * c + f] if config.kind == "forecaster" else None
    return Inputs(x=x, base=base)


def autoencoder_targets(config: ModelConfig, seq: np.ndarray) -> np.ndarray:
    """(n, window * F) windows of `seq`'s features (NaN kept, unclipped): what an autoencoder must
    reconstruct (the inputs are not)."""
    return row_windows(np.ascontiguousarray(seq[:, : config.n_features]), config.window)
