"""One device's readings waiting to be scored: a growable NumPy structured buffer.

A row holds what scoring and the outputs need: the event time, the Kafka offset and the model's
feature values (NaN where missing). The buffer is part of the device's checkpointed state, so
readings that wait for a full chunk are never lost and never scored twice.
"""

from __future__ import annotations

import time

import numpy as np

MIN_CAPACITY = 64


def reading_dtype(n_features: int) -> np.dtype:
    return np.dtype([("ts", "M8[us]"), ("offset", "<i8"), ("values", "<f8", (n_features,))])


class PendingReadings:
    __slots__ = ("_rows", "_size", "since")

    def __init__(self, dtype: np.dtype, rows: np.ndarray | None = None) -> None:
        self._rows = np.empty(0, dtype) if rows is None else rows
        self._size = 0 if rows is None else len(rows)
        # monotonic time the oldest waiting reading arrived (not persisted: a restart restarts the wait)
        self.since: float | None = time.monotonic() if self._size else None

    def __len__(self) -> int:
        return self._size

    @property
    def dtype(self) -> np.dtype:
        return self._rows.dtype

    def rows(self) -> np.ndarray:
        """The waiting rows (a view: copy before keeping it)."""
        return self._rows[: self._size]

    def extend(self, rows: np.ndarray) -> None:
        needed = self._size + len(rows)
        if needed > len(self._rows):
            grown = np.empty(max(needed, 2 * len(self._rows), MIN_CAPACITY), self._rows.dtype)
            grown[: self._size] = self._rows[: self._size]
            self._rows = grown
        self._rows[self._size : needed] = rows
        if not self._size and len(rows):
            self.since = time.monotonic()
        self._size = needed

    def take(self, n: int) -> np.ndarray:
        """Remove and return the first `n` rows (a copy), in arrival order."""
        if not 0 <= n <= self._size:
            raise ValueError(f"cannot take {n} of {self._size} waiting readings")
        taken = self._rows[:n].copy()
        rest = self._size - n
        self._rows[:rest] = self._rows[n : self._size]
        self._size = rest
        if not rest:
            self.since = None
            if len(self._rows) > 4 * MIN_CAPACITY:  # give back what a burst needed
                self._rows = np.empty(MIN_CAPACITY, self._rows.dtype)
        return taken

    def to_bytes(self) -> bytes:
        return self._rows[: self._size].tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dtype: np.dtype) -> PendingReadings:
        if len(data) % dtype.itemsize:
            raise ValueError(f"{len(data)} bytes is not a whole number of {dtype.itemsize}-byte readings")
        return cls(dtype, np.frombuffer(data, dtype).copy() if data else None)
