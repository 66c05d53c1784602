"""Any labelled sensor data, from CSV or Parquet files, as one long frame for evaluation.

The frame has a row per reading: ``device_id``, then ``ts`` (Datetime us UTC) when a time column is
given or else ``row`` (each device's 0-based position: row order is time order), the features as
Float64, ``label`` (Int8, 1 = anomaly) and, when an event column is given, ``event_id`` (Int64, null
outside events). Rows are sorted by device, then time; readings with equal times keep file order.

Without a device column every file is one device, named by its path below the files' common folder
without the extension, so ``site-a/0.csv`` and ``site-b/0.csv`` stay two devices. With one, the
files' rows are pooled and the column names the device (files split by day are one series).
Every problem is a ValueError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

DEVICE = "device_id"
TS = "ts"
ROW = "row"
LABEL = "label"
EVENT = "event_id"
OUTPUT_COLUMNS = (DEVICE, TS, ROW, LABEL, EVENT)

CSV_SUFFIXES = (".csv.gz", ".csv")
PARQUET_SUFFIXES = (".parquet", ".pq")
NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
_BOOLEAN_WORDS = {
    "true": True,
    "t": True,
    "yes": True,
    "y": True,
    "false": False,
    "f": False,
    "no": False,
    "n": False,
}


@dataclass(frozen=True)
class LabelledSeries:
    frame: pl.DataFrame
    features: tuple[str, ...]
    files: tuple[Path, ...]

    @property
    def order_column(self) -> str:
        """``ts`` when the data has times, else ``row``."""
        return TS if TS in self.frame.columns else ROW


def find_files(paths: Iterable[Path | str]) -> list[Path]:
    """The CSV / Parquet files among `paths`, folders searched recursively (hidden entries skipped)."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path).parts
                if file.is_file() and _suffix(file) and not any(p.startswith(".") for p in relative):
                    found.setdefault(file.resolve())
        elif path.is_file():
            if not _suffix(path):
                raise ValueError(
                    f"{path}: not a CSV or Parquet file (want {CSV_SUFFIXES + PARQUET_SUFFIXES})"
                )
            found.setdefault(path.resolve())
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no CSV or Parquet files in {[str(p) for p in paths]}")
    return list(found)


def device_names(files: Sequence[Path]) -> dict[Path, str]:
    """Each file's path below the files' common folder, without extension, with '/' separators."""
    root = Path(os.path.commonpath([f.parent for f in files]))
    files_by_name: dict[str, Path] = {}
    for file in files:
        relative = file.relative_to(root).as_posix()
        name = relative[: -len(_suffix(file))]
        if (twin := files_by_name.setdefault(name, file)) != file:
            raise ValueError(f"{file}: names the same device {name!r} as {twin}; pass a device column")
    return {file: name for name, file in files_by_name.items()}


def load_labelled(
    paths: Iterable[Path | str],
    *,
    label: str = LABEL,
    separator: str = ",",
    time: str | None = None,
    time_format: str | None = None,
    device: str | None = None,
    features: Sequence[str] | None = None,
    event: str | None = None,
) -> LabelledSeries:
    """Read labelled readings from CSV / Parquet files or folders.

    `label`: non-zero, true, "true"/"yes"/"t"/"y" (any case) or a non-zero number as text mean an
    anomaly. `time`: parsed to datetimes (text with `time_format` or an inferred ISO-like format,
    numbers as Unix seconds; naive times are taken as UTC); without it row order is time order.
    `features`: default = every numeric column other than the time, device, label and event columns
    (and other than the output column names), in order of first appearance over the files.
    `event`: an integer event id column, null outside events.
    """
    files = find_files(paths)
    tables = {file: _read(file, separator) for file in files}
    roles = {c for c in (label, time, device, event) if c is not None}
    if features is None:
        features = _default_features(tables.values(), roles)
        if not features:
            raise ValueError(f"no numeric feature columns in {[str(f) for f in files]}")
    else:
        features = list(features)
        clash = [f for f in features if f in OUTPUT_COLUMNS or f in roles]
        if clash:
            raise ValueError(
                f"feature columns {clash} collide with the label/time/device/event or output columns"
            )
    names = device_names(files)
    frames = [
        _conform(
            table,
            file,
            names[file],
            label=label,
            time=time,
            time_format=time_format,
            device=device,
            features=features,
            event=event,
        )
        for file, table in tables.items()
    ]
    frame = pl.concat(frames, how="vertical")
    if time is None:
        frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(DEVICE).alias(ROW))
        frame = frame.select(DEVICE, ROW, *features, LABEL, *([EVENT] if event else []))
        frame = frame.sort(DEVICE, ROW)
    else:
        frame = frame.sort(DEVICE, TS, maintain_order=True)
    return LabelledSeries(frame=frame, features=tuple(features), files=tuple(files))


def split_series(
    frame: pl.DataFrame,
    *,
    train_fraction: float | None = None,
    train_rows: int | None = None,
    device: str = DEVICE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, score): per device, its first floor(F·n) rows or its first N rows train, the rest score.

    `frame` must be in time order within each device (as `load_labelled` returns it). A device with
    fewer than N rows is all train.
    """
    if (train_fraction is None) == (train_rows is None):
        raise ValueError("give exactly one of train_fraction and train_rows")
    if train_fraction is not None:
        if not 0.0 <= train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be within [0, 1], got {train_fraction}")
        # The epsilon keeps e.g. 100 * 0.29 = 28.999999999999996 at 29 rows.
        cutoff = (pl.len().over(device) * train_fraction + 1e-9).floor()
    else:
        if isinstance(train_rows, bool) or not isinstance(train_rows, int) or train_rows < 0:
            raise ValueError(f"train_rows must be an integer >= 0, got {train_rows!r}")
        cutoff = pl.lit(train_rows)
    is_train = pl.int_range(pl.len()).over(device) < cutoff
    marked = frame.with_columns(is_train.alias("_train"))
    return (
        marked.filter(pl.col("_train")).drop("_train"),
        marked.filter(~pl.col("_train")).drop("_train"),
    )


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in CSV_SUFFIXES + PARQUET_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def _read(path: Path, separator: str) -> pl.DataFrame:
    is_csv = _suffix(path) in CSV_SUFFIXES
    try:
        if is_csv:
            # A full-file schema scan, so a column that turns fractional late is not refused.
            table = pl.read_csv(path, separator=separator, infer_schema_length=None, null_values=NULL_VALUES)
        else:
            table = pl.read_parquet(path)
    except pl.exceptions.NoDataError as error:
        raise ValueError(f"{path}: the file is empty") from error
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ValueError(f"{path}: cannot read it as {'CSV' if is_csv else 'Parquet'}: {error}") from error
    if table.height == 0:
        raise ValueError(f"{path}: the file has a header but no rows")
    return table


def _default_features(tables: Iterable[pl.DataFrame], roles: set[str]) -> list[str]:
    features: dict[str, None] = {}
    for table in tables:
        for name, dtype in table.schema.items():
            if dtype.is_numeric() and name not in roles and name not in OUTPUT_COLUMNS:
                features.setdefault(name)
    return list(features)


def _conform(
    table: pl.DataFrame,
    path: Path,
    name: str,
    *,
    label: str,
    time: str | None,
    time_format: str | None,
    device: str | None,
    features: Sequence[str],
    event: str | None,
) -> pl.DataFrame:
    wanted = [c for c in (label, time, device, event, *features) if c is not None]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (the file has {table.columns})")
    not_numeric = [f"{f} ({table.schema[f]})" for f in features if not table.schema[f].is_numeric()]
    if not_numeric:
        raise ValueError(f"{path}: feature columns are not numeric: {', '.join(not_numeric)}")

    columns = [_device(table, path, name, device)]
    if time is not None:
        columns.append(_times(table[time], path, time_format).alias(TS))
    columns += [table[f].cast(pl.Float64) for f in features]
    columns.append(_labels(table[label], path).alias(LABEL))
    if event is not None:
        columns.append(_event_ids(table[event], path).alias(EVENT))
    return pl.DataFrame(columns)


def _device(table: pl.DataFrame, path: Path, name: str, device: str | None) -> pl.Series:
    if device is None:
        return pl.Series(DEVICE, [name] * table.height, dtype=pl.String)
    ids = table[device].cast(pl.String)
    if ids.null_count():
        raise ValueError(f"{path}: device column {device!r} has {ids.null_count()} empty values")
    return ids.alias(DEVICE)


def _times(column: pl.Series, path: Path, time_format: str | None) -> pl.Series:
    dtype = column.dtype
    problem = f"{path}: cannot parse time column {column.name!r}"
    if dtype == pl.String:
        try:
            parsed = column.str.to_datetime(time_format, time_unit="us", strict=False)
        except pl.exceptions.PolarsError as error:
            raise ValueError(f"{problem}: {error} (pass a time format, e.g. '%Y-%m-%d %H:%M:%S')") from error
        bad = column.filter(parsed.is_null() & column.is_not_null())
        if bad.len():
            examples = bad.head(3).to_list()
            raise ValueError(f"{problem}: {bad.len()} values are not times, e.g. {examples}")
    elif isinstance(dtype, pl.Datetime):
        parsed = column.dt.cast_time_unit("us")
    elif dtype == pl.Date:
        parsed = column.cast(pl.Datetime("us"))
    elif dtype.is_numeric():
        parsed = (column.cast(pl.Float64) * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us"))
    else:
        raise ValueError(f"{problem}: unsupported type {dtype}")
    if parsed.null_count():
        raise ValueError(f"{path}: time column {column.name!r} has {parsed.null_count()} empty values")
    if parsed.dtype.time_zone is None:
        return parsed.dt.replace_time_zone("UTC")
    return parsed.dt.convert_time_zone("UTC")


def _labels(column: pl.Series, path: Path) -> pl.Series:
    dtype = column.dtype
    problem = f"{path}: label column {column.name!r}"
    if dtype == pl.Boolean:
        flags = column
    elif dtype.is_numeric():
        if dtype.is_float() and column.is_nan().any():
            raise ValueError(f"{problem} has NaN labels")
        flags = column != 0
    elif dtype == pl.String:
        text = column.str.strip_chars().str.to_lowercase()
        as_number = text.cast(pl.Float64, strict=False).fill_nan(None)
        flags = text.replace_strict(_BOOLEAN_WORDS, default=None, return_dtype=pl.Boolean).fill_null(
            as_number != 0
        )
        bad = column.filter(flags.is_null() & column.is_not_null())
        if bad.len():
            raise ValueError(
                f"{problem} has values that are neither booleans nor numbers, e.g. {bad.head(3).to_list()}"
            )
    else:
        raise ValueError(f"{problem} has unsupported type {dtype}")
    if flags.null_count():
        raise ValueError(f"{problem} has {flags.null_count()} empty values")
    return flags.cast(pl.Int8)


def _event_ids(column: pl.Series, path: Path) -> pl.Series:
    if not column.dtype.is_integer():
        raise ValueError(f"{path}: event column {column.name!r} must hold integers, got {column.dtype}")
    return column.cast(pl.Int64)
