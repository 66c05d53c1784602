"""Batch evaluations in MongoDB: one document per (global model version, day), upserted.

A document (``_id`` = ``"v<version>:<YYYY-MM-DD>"``) holds the day's pooled metrics (``overall``,
`batch_scoring.overall_metrics`) and one entry per device (``devices``, `batch_scoring.device_metrics`
rows). Saving the same evaluation again replaces the document, so re-runs and backfills are safe.
The pooled counts (tp, fp, fn) let the F1 of several days be pooled exactly (`previous_f1`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
from pymongo.database import Database

from flead.config import Settings


def evaluation_id(version: int, day: date) -> str:
    return f"v{version}:{day.isoformat()}"


def save_evaluation(
    db: Database,
    settings: Settings,
    *,
    version: int,
    day: date,
    overall: Mapping[str, Any],
    per_device: pl.DataFrame | Iterable[Mapping[str, Any]],
) -> str:
    """Upsert the evaluation of `version` on `day`; returns its ``_id``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an integer >= 0, got {version!r}")
    rows = per_device.to_dicts() if isinstance(per_device, pl.DataFrame) else list(per_device)
    doc_id = evaluation_id(version, day)
    document = {
        "_id": doc_id,
        "version": version,
        "day": day.isoformat(),
        "overall": _plain(overall),
        "devices": [_plain(row) for row in rows],
        "updated_at": datetime.now(UTC),
    }
    db[settings.collection_evaluations].replace_one({"_id": doc_id}, document, upsert=True)
    return doc_id


def previous_f1(db: Database, settings: Settings, *, version: int, days: Iterable[date]) -> float | None:
    """The pooled point F1 of the newest version below `version` that was evaluated on every one of
    `days`; None when there is no such version or it had no labels on those days."""
    wanted = sorted({d.isoformat() for d in days})
    if not wanted:
        return None
    found: dict[int, dict[str, Mapping[str, Any]]] = {}
    cursor = db[settings.collection_evaluations].find(
        {"version": {"$lt": version}, "day": {"$in": wanted}}, {"version": 1, "day": 1, "overall": 1}
    )
    for doc in cursor:
        found.setdefault(int(doc["version"]), {})[doc["day"]] = doc.get("overall") or {}
    for older in sorted(found, reverse=True):
        if len(found[older]) == len(wanted):
            return pooled_f1(found[older].values())
    return None


def pooled_f1(overalls: Iterable[Mapping[str, Any]]) -> float | None:
    """F1 = 2 TP / (2 TP + FP + FN) over the counts of several evaluations; None without labels."""
    tp = fp = fn = 0
    labelled = False
    for overall in overalls:
        if overall.get("tp") is None:
            continue
        labelled = True
        tp, fp, fn = tp + overall["tp"], fp + overall["fp"], fn + overall["fn"]
    if not labelled or not tp + fp + fn:
        return None
    return 2 * tp / (2 * tp + fp + fn)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """BSON-friendly: dates as ISO strings, NaN as None, NumPy scalars as Python numbers."""
    out = {}
    for key, value in values.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif isinstance(value, date) and not isinstance(value, datetime):
            value = value.isoformat()
        out[str(key)] = value
    return out
