"""Anomalous readings as table rows: the columns of CSV and Parquet exports (``flead anomalies export``,
``GET /api/anomalies.csv``).

A row is an item of ``/api/anomalies`` flattened: the reading's fields, then one ``value_<name>``
column per value the fleet schema names (``FleetSchema.columns``), so every page and every export of
one fleet has the same columns whatever the readings hold. Times are ISO 8601 UTC to the microsecond.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

BASE_COLUMNS = (
    "id",
    "device_id",
    "ts",
    "score",
    "threshold",
    "reason",
    "model_version",
    "model_lineage",
    "partition",
    "offset",
    "trainer",
    "detected_at",
)
FORMATS = ("csv", "parquet")


def anomaly_columns(value_names: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *(f"value_{name}" for name in value_names)]


def anomaly_row(item: dict, value_names: Sequence[str]) -> dict:
    """One ``/api/anomalies`` item (JSON) as a row of ``anomaly_columns(value_names)``."""
    row = {column: item.get(column) for column in BASE_COLUMNS}
    values = item.get("values") or {}
    row.update({f"value_{name}": values.get(name) for name in value_names})
    return row


def csv_text(rows: Iterable[dict], columns: Sequence[str], *, header: bool = True) -> str:
    """RFC 4180 CSV (quoted where needed, CRLF line ends); None is an empty field."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_rows(rows: Iterable[dict], columns: Sequence[str], path: Path, fmt: str) -> int:
    """Write ``rows`` to ``path`` as CSV or Parquet (typed columns; an empty export keeps its columns);
    the number of rows written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        count = 0
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                count += 1
        return count
    import polars as pl

    data = list(rows)
    schema = {column: _parquet_type(pl, column) for column in columns}
    frame = pl.DataFrame(data, schema=schema, orient="row") if data else pl.DataFrame(schema=schema)
    for column in ("ts", "detected_at"):
        if column in frame.columns:
            frame = frame.with_columns(
                pl.col(column).str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", strict=False)
            )
    frame.write_parquet(path)
    return frame.height


def _parquet_type(pl, column: str):
    if column in ("score", "threshold") or column.startswith("value_"):
        return pl.Float64
    if column in ("model_version", "partition", "offset"):
        return pl.Int64
    return pl.String
