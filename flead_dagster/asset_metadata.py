"""What every asset declares besides its code: its owners, and the column schemas of the tables it
writes (definition metadata ``dagster/column_schema``, shown in the asset's Columns tab).

Each asset also carries ``kinds`` (the systems it runs on or writes, shown as icons) and a
``code_version``: bump an asset's code version whenever the same inputs would now give a different
output, so the UI marks what was materialised by the older code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema, asset

from flead.datasets.inject import labelled_schema
from flead.evaluation.batch_scoring import DATE, SCORED_SCHEMA
from flead.fleet import FleetSchema
from flead.schema import lake_schema

OWNERS = ["team:flead"]
CODE_VERSION = "1"  # every asset's: raise it when what an asset computes changes


def flead_asset(**kwargs):
    """Dagster's ``@asset`` with FLEAD's owners and code version."""
    return asset(owners=OWNERS, code_version=CODE_VERSION, **kwargs)


COLUMN_SCHEMA = "dagster/column_schema"

COLUMN_DESCRIPTIONS = {
    "device_id": "the device, e.g. mote-01",
    "ts": "time of the reading (UTC)",
    "epoch": "the source's sequence number of the reading (the Intel Lab mote's epoch), if it has one",
    "out_of_range": "a value outside what the sensor can physically read",
    "low_battery": "below the level where the device's readings stay trustworthy (a battery's voltage)",
    "missing_fields": "the source row lacked one or more of the values",
    "label": "ground truth, part of an injected anomaly: 1 / 0 (evaluation: true / false, null unlabelled)",
    "anomaly_type": "the injected anomaly's type (spike, stuck_at, drift, ...); null when label is 0",
    "event_id": "the injected event the reading belongs to; null when label is 0",
    "score": "the frozen global model's anomaly score of the reading",
    "threshold": "the device's alarm threshold (its quantile of its own scores)",
    "is_anomaly": "alarm: score above the threshold, or out of range",
}


def _type_name(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return f"timestamp[{dtype.time_unit}, {dtype.time_zone}]" if dtype.time_zone else "timestamp"
    return {pl.String: "string", pl.Boolean: "bool"}.get(dtype.base_type(), str(dtype).lower())


def table_schema(schema: Mapping[str, pl.DataType], fleet: FleetSchema | None = None) -> TableSchema:
    """A polars schema as a Dagster table schema, each column with its description (a fleet schema's
    values described by their kind, unit and limits)."""
    described = dict(COLUMN_DESCRIPTIONS)
    if fleet is not None:
        for kind, values in (("feature", fleet.features), ("input, not scored", fleet.inputs)):
            for v in values:
                limits = "" if v.min is None and v.max is None else f", limits {v.min} .. {v.max}"
                described[v.name] = f"{kind} of {fleet.ref}" + (f", {v.unit}" if v.unit else "") + limits
    return TableSchema(
        columns=[
            TableColumn(name, _type_name(dtype), description=described[name])
            for name, dtype in schema.items()
        ]
    )


def column_schema(
    schema: Mapping[str, pl.DataType], fleet: FleetSchema | None = None
) -> dict[str, MetadataValue]:
    """Definition metadata declaring the columns of the Parquet files an asset writes."""
    return {COLUMN_SCHEMA: MetadataValue.table_schema(table_schema(schema, fleet))}


def lake_columns(fleet: FleetSchema) -> dict[str, MetadataValue]:
    """The columns of each day's lake file (the day itself is the folder, date=YYYY-MM-DD)."""
    return column_schema(lake_schema(fleet), fleet)


def labelled_columns(fleet: FleetSchema) -> dict[str, MetadataValue]:
    return column_schema(labelled_schema(fleet), fleet)


_SCORED = pl.from_arrow(SCORED_SCHEMA.empty_table()).schema
EVALUATION_COLUMNS = column_schema({name: dtype for name, dtype in _SCORED.items() if name != DATE})


# --- materialization metadata the UI shows inline ---------------------------------------------------
# Dagster 1.13's asset page shows a Markdown entry inline only below 1,000 characters (a chart embedded
# as a PNG never is: it hides behind "[Show Markdown]"), while a table entry is always drawn. So the
# charts' data goes out as tables, each with a column of text bars that draws the chart in place.

_EIGHTHS = " ▏▎▍▌▋▊▉"


def text_bar(value: float | None, top: float, width: int = 24) -> str:
    """`value` as a bar of block characters, `width` characters long at `top` (eighths of a block)."""
    if value is None or not math.isfinite(value) or value <= 0 or not top > 0:
        return ""
    eighths = max(1, round(min(value / top, 1.0) * width * 8))
    return "█" * (eighths // 8) + _EIGHTHS[eighths % 8].strip()


def _cell(value: object) -> str | int | float | bool | None:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None  # NaN is not JSON: the UI drops the row
    if value is None or isinstance(value, bool | int | str):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def frame_table(frame: pl.DataFrame, *, bar: str | None = None, width: int = 24) -> MetadataValue:
    """A small frame as a table entry, drawn inline on the asset page. With `bar`, a last column
    ``chart`` draws that column's values as text bars, the largest `width` characters long."""
    top = float(frame[bar].max() or 0.0) if bar is not None and frame.height else 0.0
    columns = [TableColumn(name, _type_name(dtype)) for name, dtype in frame.schema.items()]
    if bar is not None:
        columns.append(TableColumn("chart", "string", description=f"{bar}, as a bar"))
    records = []
    for row in frame.iter_rows(named=True):
        data = {name: _cell(value) for name, value in row.items()}
        if bar is not None:
            data["chart"] = text_bar(row[bar], top, width)
        records.append(TableRecord(data))
    return MetadataValue.table(records, schema=TableSchema(columns=columns))
