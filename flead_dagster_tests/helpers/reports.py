"""Lake and evaluation rows shared by the report, scoring and dashboard tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from flead.schema import LAKE_SCHEMA

DAY_1, DAY_2, DAY_3 = date(2004, 3, 1), date(2004, 3, 2), date(2004, 3, 3)
EVAL_DAYS = (DAY_1, DAY_2)
OLD, NEW = 9, 10  # numeric order differs from text order ("version=9" > "version=10")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_SCHEMA = {
    "device_id": pl.String(),
    "ts": pl.Datetime("us"),
    "date": pl.Date(),
    "score": pl.Float32(),
    "threshold": pl.Float32(),
    "is_anomaly": pl.Boolean(),
    "out_of_range": pl.Boolean(),
    "label": pl.Boolean(),
}


def lake_rows() -> pl.DataFrame:
    """4 motes x 3 days, a reading every 2 hours; mote-02 dies on day 2 (out of range, low battery)."""
    rows = []
    for device in ("mote-01", "mote-02", "mote-03", "mote-04"):
        for day in (DAY_1, DAY_2, DAY_3):
            hours = range(0, 12, 2) if (device, day) == ("mote-03", DAY_2) else range(0, 24, 2)
            for hour in hours:
                dying = device == "mote-02" and day == DAY_2 and hour >= 14
                rows.append(
                    {
                        "device_id": device,
                        "ts": datetime(day.year, day.month, day.day, hour, 7, tzinfo=UTC),
                        "epoch": len(rows),
                        "temperature": 122.15 if dying else 20.0 + hour / 10,
                        "humidity": 40.0,
                        "light": 100.0,
                        "voltage": 2.1 if dying else 2.6,
                        "out_of_range": dying,
                        "low_battery": dying,
                        "missing_fields": False,
                    }
                )
    return pl.DataFrame(rows, schema=LAKE_SCHEMA)


def evaluation_rows(lake: pl.DataFrame, version: int) -> pl.DataFrame:
    """Scores of days 1-2 for motes 01-03 (mote-04 unscored) plus mote-05, which the lake lacks.

    Two warm-up readings per device (threshold NaN, no alarm, one NaN score); random alarms; every
    out-of-range reading alarms in the NEW version. NEW carries labels (a few null), OLD none.
    """
    rng = np.random.default_rng(version)
    scored = lake.filter(pl.col("ts").dt.date().is_in(EVAL_DAYS) & (pl.col("device_id") != "mote-04"))
    extra = pl.DataFrame(
        {
            "device_id": ["mote-05"] * 3,
            "ts": [datetime(2004, 3, 1, h, 30, tzinfo=UTC) for h in (1, 2, 3)],
            "out_of_range": [False] * 3,
        }
    )
    frame = pl.concat([scored.select("device_id", "ts", "out_of_range"), extra]).sort("device_id", "ts")
    n = frame.height
    warmup = frame.select(pl.int_range(pl.len()).over("device_id") < 2).to_series().to_numpy()
    score = rng.random(n).astype(np.float32)
    score[np.flatnonzero(warmup)[0]] = np.nan
    out_of_range = frame["out_of_range"].to_numpy()
    if version == NEW:
        score[out_of_range] = 5.0
    threshold = np.where(warmup, np.nan, 0.7).astype(np.float32)
    alarm = ~warmup & (score > 0.7)
    if version == NEW:
        labels = [bool(v) for v in out_of_range | (rng.random(n) < 0.15)]
        for i in rng.choice(n, 4, replace=False):
            labels[i] = None
    else:
        labels = [None] * n
    return pl.DataFrame(
        {
            "device_id": frame["device_id"],
            "ts": frame["ts"].dt.replace_time_zone(None),
            "date": frame["ts"].dt.date(),
            "score": score,
            "threshold": threshold,
            "is_anomaly": alarm,
            "out_of_range": out_of_range,
            "label": labels,
        },
        schema=EVAL_SCHEMA,
    )


def write_evaluation(frame: pl.DataFrame, root: Path, version: int) -> None:
    """NEW as `flead.evaluation.batch_scoring` writes (tz-aware ts, the day only in the path); others
    with a naive UTC ts and the day also in the file."""
    for (day,), rows in frame.partition_by("date", as_dict=True).items():
        path = root / f"version={version}" / f"date={day.isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        if version == NEW:
            rows = rows.drop("date").with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
        rows.write_parquet(path)


DAYS = [date(2004, 2, 28), date(2004, 2, 29)]
