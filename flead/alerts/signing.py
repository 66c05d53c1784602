"""HMAC-SHA256 signatures of webhook bodies, with a timestamp against replays.

The sender puts the Unix time (whole seconds) in ``X-FLEAD-Timestamp`` and
``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + raw body)>`` in ``X-FLEAD-Signature``:
the timestamp is signed with the body, so a captured request cannot be replayed later with a fresh
timestamp, and a receiver refuses one older than its tolerance (``verify``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-FLEAD-Signature"
TIMESTAMP_HEADER = "X-FLEAD-Timestamp"
DELIVERY_HEADER = "X-FLEAD-Delivery"  # the notification's id: the same on every retry (deduplication)
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    pass


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def sign(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers that sign ``body`` at ``now`` (default: the current time)."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str,
    body: bytes,
    *,
    timestamp: str | None,
    signature_header: str | None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise ``SignatureError`` unless ``signature_header`` signs ``body`` at ``timestamp``, and that
    timestamp is within ``tolerance_s`` of ``now`` (what a receiver runs)."""
    if not timestamp or not signature_header:
        raise SignatureError("missing signature or timestamp header")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError(f"timestamp {timestamp[:20]!r} is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(f"timestamp {ts} is {current - ts:.0f} s away from now (replayed or skewed)")
    if not hmac.compare_digest(signature(secret, ts, body), signature_header.strip()):
        raise SignatureError("signature does not match the body")
