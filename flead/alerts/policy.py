"""What to do with a delivery's outcome (retry or not), when to retry, and the per-device rate limit."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from enum import StrEnum

RETRYABLE_4XX = (408, 429)


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # a transient failure: try again later
    FAIL = "fail"  # a permanent failure: dead-letter at once


def classify(status_code: int | None) -> Verdict:
    """2xx delivered; 5xx, 408, 429 and no answer (``None``: timeout, connection error) retried; any
    other answer (3xx, 4xx) is permanent: the receiver refused the notification itself."""
    if status_code is None:
        return Verdict.RETRY
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code >= 500 or status_code in RETRYABLE_4XX:
        return Verdict.RETRY
    return Verdict.FAIL


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff: the n-th failed attempt (1-based) waits ``base_s * 2**(n-1)``, at most
    ``max_delay_s``; after ``max_attempts`` attempts the notification is dead-lettered."""

    max_attempts: int = 6
    base_s: float = 1.0
    max_delay_s: float = 300.0

    def delay(self, attempts: int) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts; None: give up (dead-letter)."""
        if attempts >= self.max_attempts:
            return None
        return min(self.base_s * 2 ** (attempts - 1), self.max_delay_s)


class RateLimiter:
    """At most ``limit`` notifications per key (a device) in any ``window_s`` sliding window
    (``limit`` 0: no limit). Times are the caller's clock (seconds), so it is deterministic to test and
    can be seeded with what was sent before a restart (``record``)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def _trim(self, key: str, now: float) -> collections.deque[float]:
        sent = self._sent[key]
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        return sent

    def allow(self, key: str, now: float) -> bool:
        """Whether one more notification for ``key`` fits at ``now``; if so it is counted."""
        if self.limit <= 0:
            return True
        sent = self._trim(key, now)
        if len(sent) >= self.limit:
            return False
        sent.append(now)
        return True

    def record(self, key: str, when: float) -> None:
        """Count a notification sent at ``when`` (seeding after a restart), in time order."""
        if self.limit > 0:
            self._sent[key].append(when)
