"""Notification bodies of anomaly events (documents of ``collection_events``).

Two formats, both JSON:

* ``flead``: ``{"type": "flead.anomaly_event", "status": "firing" | "resolved", "delivery_id", "event":
  {...}, "suppressed": {"count", "since"} | null}``.
* ``alertmanager``: the Prometheus Alertmanager webhook format (``version`` "4", ``status``,
  ``alerts[]`` with ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``fingerprint``), so any
  receiver of Alertmanager's webhooks takes FLEAD's events as they are.

An event is ``firing`` while open, ``resolved`` once closed. Bodies are built from a JSON snapshot of
the event taken when the notification was queued (``event_snapshot``), so every retry sends the same
body; only the signature's timestamp changes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from flead.schema import EPOCH

ALERTNAME = "FleadAnomalyEvent"
FORMATS = ("flead", "alertmanager")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end" (a firing alert)
SNAPSHOT_FIELDS = (
    "device_id",
    "duration_s",
    "readings",
    "flagged",
    "model_alarms",
    "rule_alarms",
    "reason",
    "peak_score",
    "peak_severity",
    "severity_class",
    "top_features",
    "open",
    "model_version",
    "model_lineage",
    "partition",
    "trainer",
)


def event_status(event: dict) -> str:
    return "firing" if event.get("open", False) else "resolved"


def _iso(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _exact(event: dict, name: str) -> str | None:
    micros = event.get(f"{name}_us")
    if isinstance(micros, int) and not isinstance(micros, bool):
        return _iso(EPOCH + timedelta(microseconds=micros))
    return _iso(event.get(name))


def event_snapshot(event: dict) -> dict:
    """The event as plain JSON values: ``id``, times as ISO 8601 UTC to the microsecond."""
    snapshot = {"id": str(event["_id"])}
    snapshot.update({k: event.get(k) for k in SNAPSHOT_FIELDS if k in event})
    snapshot["start"] = _exact(event, "start")
    snapshot["end"] = _exact(event, "end")
    snapshot["peak_ts"] = _iso(event.get("peak_ts"))
    return json.loads(json.dumps(snapshot, default=str))  # anything else BSON might hold, as text


def render_payload(
    fmt: str,
    snapshot: dict,
    status: str,
    *,
    delivery_id: str,
    suppressed: int = 0,
    suppressed_since: str | None = None,
    external_url: str = "",
) -> bytes:
    """The raw body of one notification (compact JSON, UTF-8)."""
    summary = {"count": suppressed, "since": suppressed_since} if suppressed else None
    if fmt == "flead":
        body: dict = {
            "type": "flead.anomaly_event",
            "status": status,
            "delivery_id": delivery_id,
            "event": snapshot,
            "suppressed": summary,
        }
    elif fmt == "alertmanager":
        body = alertmanager_payload(snapshot, status, suppressed=summary, external_url=external_url)
    else:
        raise ValueError(f"unknown alert format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def alertmanager_payload(
    snapshot: dict, status: str, *, suppressed: dict | None = None, external_url: str = ""
) -> dict:
    device = str(snapshot.get("device_id"))
    labels = {
        "alertname": ALERTNAME,
        "device_id": device,
        "severity": str(snapshot.get("severity_class", "minor")),
        "reason": str(snapshot.get("reason", "model")),
        "event_id": snapshot["id"],
    }
    features = ", ".join(f"{f['feature']} ({f['share']:.0%})" for f in snapshot.get("top_features") or [])
    annotations = {
        "summary": f"Anomaly event on {device}: {snapshot.get('flagged', 0)} readings flagged, "
        f"peak {float(snapshot.get('peak_severity') or 0):.1f}x the threshold",
        "description": f"reason {labels['reason']}; top features: {features or 'n/a'}",
        "peak_severity": str(snapshot.get("peak_severity")),
        "top_features": features,
    }
    if suppressed:
        annotations["suppressed_notifications"] = str(suppressed["count"])
    base = external_url.rstrip("/")
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": snapshot.get("start") or ZERO_TIME,
        "endsAt": (snapshot.get("end") or ZERO_TIME) if status == "resolved" else ZERO_TIME,
        "generatorURL": f"{base}/api/events?device={device}" if base else "",
        "fingerprint": hashlib.sha256(snapshot["id"].encode()).hexdigest()[:16],
    }
    group_labels = {"alertname": ALERTNAME, "device_id": device}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="%s",device_id="%s"}' % (ALERTNAME, device),  # noqa: UP031
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "flead",
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": base,
        "alerts": [alert],
    }
