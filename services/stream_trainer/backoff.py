"""Exponential backoff with jitter, for retrying MongoDB and the global model API."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 0.2, maximum_s: float = 10.0, factor: float = 2.0) -> None:
        self.initial_s, self.maximum_s, self.factor = initial_s, maximum_s, factor
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next try: doubling up to the maximum, with up to 50 % jitter off."""
        delay = min(self.maximum_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0
