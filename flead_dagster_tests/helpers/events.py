"""Event helpers shared by test modules: one pipeline event document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2004, 3, 1, tzinfo=UTC)


def event(device: str, hour: int, *, minutes: int = 30, peak: float = 3.0, rule: int = 0, open_=False):
    start = START + timedelta(hours=hour)
    end = start + timedelta(minutes=minutes)
    text = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "_id": f"{device}:{text}",
        "device_id": device,
        "partition": 0,
        "start": start,
        "end": end,
        "start_us": int((start - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6),
        "end_us": int((end - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6),
        "start_text": text,
        "duration_s": minutes * 60.0,
        "readings": minutes * 2,
        "flagged": minutes,
        "model_alarms": minutes - rule,
        "rule_alarms": rule,
        "peak_score": 10.0 * peak,
        "peak_severity": peak,
        "peak_ts": start,
        "severity_class": "critical" if rule else "minor",
        "reason": "model+rule" if rule else "model",
        "top_features": [{"feature": "temperature", "share": 0.8}, {"feature": "humidity", "share": 0.2}],
        "open": open_,
        "model_version": 0,
        "trainer": "t:1",
        "updated_at": datetime.now(UTC),
    }
