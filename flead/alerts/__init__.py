"""Webhook notifications of anomaly events: payloads, signing, retry schedule, rate limiting.

Framework-free; the service that follows the events collection and delivers is `services/notifier`.
"""

from flead.alerts.payload import ALERTNAME, event_snapshot, event_status, render_payload
from flead.alerts.policy import RateLimiter, RetrySchedule, Verdict, classify
from flead.alerts.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, verify

__all__ = [
    "ALERTNAME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RateLimiter",
    "RetrySchedule",
    "SignatureError",
    "Verdict",
    "classify",
    "event_snapshot",
    "event_status",
    "render_payload",
    "sign",
    "verify",
]
