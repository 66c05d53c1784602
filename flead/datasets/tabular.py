"""A fleet's own readings from CSV or Parquet files, into the lake's typed rows, as its schema declares.

The fleet schema (`flead.fleet`) names the device column, the time column and the values (features
and inputs). Each file must hold those columns (a missing one is an error naming the file, what it
has and what the schema wants); other columns are ignored and reported. Every row then becomes a lake
row or a reject with its reason, as the Intel Lab parser does for its lines:

- ``bad device id`` (empty, or not a valid id: `flead.schema.DEVICE_ID_PATTERN`),
- ``bad time (...)`` (empty or not a time of the schema's kind, which it names),
- ``not a number: NAME`` (a value that is not a finite number; an empty value is missing, not bad),
- ``duplicate`` (a device's time seen before, in any file: the first copy is kept).

Kept rows are flagged as the lake flags them (`flead.schema.lake_flags`): ``out_of_range``,
``low_battery``, ``missing_fields``. ``epoch`` is an ``index`` time's step, null for clock times.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from flead.datasets.files import PARQUET_SUFFIXES, QUOTES, read_table
from flead.datasets.intel_lab import REJECT_SCHEMA, ParseResult
from flead.fleet import FleetSchema
from flead.schema import DEVICE_ID_PATTERN, lake_flags, lake_schema


def parse_table_files(paths: Iterable[Path], fleet: FleetSchema, separator: str | None = None) -> ParseResult:
    """Parse the given CSV / Parquet files as one data set of `fleet` (duplicates found across all)."""
    unused: dict[str, None] = {}
    frames = [_rows(Path(path), fleet, separator, unused) for path in paths]
    if not frames:
        raise ValueError("no files to parse")
    table = pl.concat(frames, how="vertical")
    reason = _reason(fleet)
    parsed = table.with_columns(reason.alias("reason"))
    first = pl.struct("reason", "device_id", "ts").is_first_distinct()
    parsed = parsed.with_columns(
        pl.when(pl.col("reason").is_null() & ~first)
        .then(pl.lit("duplicate"))
        .otherwise("reason")
        .alias("reason")
    )
    schema = lake_schema(fleet)
    good = parsed.filter(pl.col("reason").is_null())
    rows = good.with_columns(
        pl.any_horizontal(pl.col(f"_{c}").is_null() for c in fleet.columns).alias("missing_fields"),
        pl.col("_step").alias("epoch"),  # an index time's step; null for clock times
    ).with_columns(lake_flags(fleet))
    rows = rows.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    rejects = parsed.filter(pl.col("reason").is_not_null()).select(
        pl.col(name).cast(dtype) for name, dtype in REJECT_SCHEMA.items()
    )
    if rows.height + rejects.height != table.height:
        raise RuntimeError(f"lost rows: {rows.height} rows + {rejects.height} rejects != {table.height}")
    return ParseResult(rows=rows, rejects=rejects, lines=table.height, unused_columns=tuple(unused))


def _rows(path: Path, fleet: FleetSchema, separator: str | None, unused: dict[str, None]) -> pl.DataFrame:
    """The file's rows as source, line, raw and the roles' raw text / values (`_`-prefixed); the
    columns the schema does not declare are added to `unused`."""
    roles = {fleet.device_column, fleet.time.column}
    table = read_table(path, separator, roles)
    wanted = [fleet.device_column, fleet.time.column, *fleet.columns]
    unused.update((c, None) for c in table.columns if c not in wanted)
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing} that the fleet schema {fleet.ref} declares "
            f"(the file has {table.columns}); set FLEAD_FLEET_SCHEMA to a schema of this file's columns"
        )
    is_csv = not any(path.name.lower().endswith(s) for s in PARQUET_SUFFIXES)
    first_line = 2 if is_csv else 1  # a CSV's line 1 is its header
    columns = [
        pl.lit(str(path)).alias("source"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + first_line).alias("line"),
        _raw(table, table.columns, separator if is_csv and separator else ",", is_csv).alias("raw"),
        pl.col(fleet.device_column).cast(pl.String).str.strip_chars(" ").alias("device_id"),
        pl.col(fleet.time.column).alias("_time"),
    ]
    for name in fleet.columns:
        text = pl.col(name).cast(pl.String).str.strip_chars(" ")
        columns.append(text.alias(f"_{name}"))
        columns.append(text.cast(pl.Float64, strict=False).alias(name))
    out = table.select(columns)
    step = _number(out["_time"]).cast(pl.Int64, strict=False) if fleet.time.kind == "index" else None
    return out.with_columns(
        _times(out["_time"], fleet).alias("ts"),
        pl.lit(None, pl.Int64).alias("_step") if step is None else step.alias("_step"),
    ).drop("_time")


def _raw(table: pl.DataFrame, columns: list[str], separator: str, is_csv: bool) -> pl.Expr:
    """The row as it reads in the file (the schema's columns): for a reject, what the user looks up."""
    if is_csv:
        return pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in columns], separator=separator)
    return pl.struct(columns).map_elements(lambda row: json.dumps(row, default=str), return_dtype=pl.String)


def _times(column: pl.Series, fleet: FleetSchema) -> pl.Series:
    """The readings' times (Datetime us UTC), null where a value is not a time of the schema's kind."""
    time = fleet.time
    if time.kind == "index":
        steps = _number(column)
        offset = (steps * time.step_seconds * 1e6).round().cast(pl.Int64, strict=False)
        origin = int(time.origin.timestamp() * 1e6)
        return (offset + origin).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if time.kind == "epoch_seconds":
        seconds = _number(column)
        return (
            (seconds * 1e6)
            .round()
            .cast(pl.Int64, strict=False)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC")
        )
    if isinstance(column.dtype, pl.Datetime):
        parsed = column.dt.cast_time_unit("us")
    elif column.dtype == pl.Date:
        parsed = column.cast(pl.Datetime("us"))
    else:
        text = column.cast(pl.String).str.strip_chars(" ").str.strip_chars(QUOTES)
        try:
            parsed = text.str.to_datetime(time.format, time_unit="us", strict=False)
        except pl.exceptions.ComputeError:  # no value to infer an ISO-8601 format from: none is a time
            parsed = pl.Series(column.name, [None] * len(column), pl.Datetime("us"))
    if parsed.dtype.time_zone is None:
        return parsed.dt.replace_time_zone("UTC")
    return parsed.dt.convert_time_zone("UTC")


def _number(column: pl.Series) -> pl.Series:
    """A time column as numbers (text unquoted first); null where a value is none."""
    if column.dtype != pl.String:
        return column.cast(pl.Float64, strict=False)
    return column.str.strip_chars(" ").str.strip_chars(QUOTES).cast(pl.Float64, strict=False)


def _bad_time(fleet: FleetSchema) -> str:
    time = fleet.time
    if time.kind != "datetime":
        return f"bad time (not a number of {'steps' if time.kind == 'index' else 'seconds'})"
    if time.format:
        return f"bad time (not {time.format})"
    return "bad time (not ISO-8601: give the schema's time format)"


def _reason(fleet: FleetSchema) -> pl.Expr:
    """Why a row is rejected (the first problem found), null if it is a good reading."""
    device = pl.col("device_id")
    reason = (
        pl.when(device.is_null() | ~device.str.contains(DEVICE_ID_PATTERN).fill_null(False))
        .then(pl.lit("bad device id"))
        .when(pl.col("ts").is_null())
        .then(pl.lit(_bad_time(fleet)))
    )
    for name in fleet.columns:
        bad = pl.col(f"_{name}").is_not_null() & ~pl.col(name).is_finite().fill_null(False)
        reason = reason.when(bad).then(pl.lit(f"not a number: {name}"))
    return reason.otherwise(pl.lit(None, pl.String))
