"""Any labelled sensor data, from CSV or Parquet files, as one long frame for evaluation.

The frame has a row per reading: ``device_id``, then ``ts`` (Datetime us UTC) when a time column is
given or else ``row`` (each device's 0-based position: row order is time order), the features as
Float64, ``label`` (Int8, 1 = anomaly), when an event column is given ``event_id`` (Int64, null
outside events) and, when the data carries its own train/test split, ``is_train`` (Boolean). Rows
are sorted by device, then time; readings with equal times keep file order.

The split comes from a split column (`split`: ``train`` / ``test`` in any case, or 0 = train and
1 = test, booleans as 0/1; anything else is refused) or from separate train and test files
(`load_train_test`: within a device the train file's rows come first, then the test file's).

Files are found and read by `flead.datasets.files` (CSV of any separator, quotes unwrapped, or Parquet).

Without a device column every file is one device, named by its path below the files' common folder
without the extension, so ``site-a/0.csv`` and ``site-b/0.csv`` stay two devices. With one, the
files' rows are pooled and the column names the device (files split by day are one series). A file
read without a device column that has a column looking like one (named device, device_id, sensor,
mote, node, id, ... holding a few distinct values, `device_like_columns`) is refused: its devices
would silently become one series. `one_device_per_file=True` reads such files as one device each.
Every problem is a ValueError naming the file.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from flead.datasets.files import QUOTES, extension_of, find_files, parse_separator, read_table

DEVICE = "device_id"
TS = "ts"
ROW = "row"
LABEL = "label"
EVENT = "event_id"
IS_TRAIN = "is_train"
OUTPUT_COLUMNS = (DEVICE, TS, ROW, LABEL, EVENT, IS_TRAIN)

# Column names (lower case, letters and digits only) that name a device: device, device_id, sensor,
# mote_id, node, machine, unit, station, meter, asset, channel, chan_id, host, id, serial, ...
_DEVICE_NAME = re.compile(
    r"(?:device|dev|sensor|mote|node|machine|unit|station|meter|asset|channel|chan|equipment|entity|host)"
    r"(?:id|name|no|nr|number)?|id|uid|serial|serialnumber"
)
_SPLIT_WORDS = {"train": True, "test": False}
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

    @property
    def has_split(self) -> bool:
        """Whether the data says which readings train (``is_train``)."""
        return IS_TRAIN in self.frame.columns


def device_like_columns(table: pl.DataFrame, exclude: Iterable[str] = ()) -> dict[str, list]:
    """The columns of `table` that look like a device id: named like one (device, device_id, sensor,
    mote, node, id, ...; case, ``_`` and ``-`` ignored) and holding between 2 and half as many distinct
    values as the table has rows (a row number is not a device). Column -> its first distinct values."""
    found: dict[str, list] = {}
    skip = set(exclude)
    for name in table.columns:
        if name in skip or not _DEVICE_NAME.fullmatch(re.sub(r"[^a-z0-9]", "", name.lower())):
            continue
        values = table[name].drop_nulls().unique(maintain_order=True)
        if 2 <= values.len() <= table.height // 2:
            found[name] = values.to_list()
    return found


def device_names(files: Sequence[Path]) -> dict[Path, str]:
    """Each file's path below the files' common folder, without extension, with '/' separators."""
    root = Path(os.path.commonpath([f.parent for f in files]))
    files_by_name: dict[str, Path] = {}
    for file in files:
        relative = file.relative_to(root).as_posix()
        name = relative[: len(relative) - len(extension_of(file))]
        if (twin := files_by_name.setdefault(name, file)) != file:
            raise ValueError(f"{file}: names the same device {name!r} as {twin}; pass a device column")
    return {file: name for name, file in files_by_name.items()}


def load_labelled(
    paths: Iterable[Path | str],
    *,
    label: str = LABEL,
    separator: str | None = None,
    time: str | None = None,
    time_format: str | None = None,
    device: str | None = None,
    features: Sequence[str] | None = None,
    event: str | None = None,
    split: str | None = None,
    one_device_per_file: bool = False,
) -> LabelledSeries:
    """Read labelled readings from CSV / Parquet files or folders.

    `separator`: the CSV field separator (default ","; see `parse_separator`).
    `label`: non-zero, true, "true"/"yes"/"t"/"y" (any case) or a non-zero number as text mean an
    anomaly. `time`: parsed to datetimes (text with `time_format` or an inferred ISO-like format,
    numbers as Unix seconds; naive times are taken as UTC); without it row order is time order.
    `features`: default = every numeric column other than the time, device, label and event columns
    (and other than the output column names), in order of first appearance over the files.
    `features` may hold shell-style patterns (``cmd_*``), matched against those numeric columns.
    `event`: an integer event id column, null outside events. `split`: the train/test column.
    Without `device`, a file with a column that looks like a device id (`device_like_columns`) is
    refused unless `one_device_per_file`.
    """
    if device is not None and one_device_per_file:
        raise ValueError("give either a device column or one device per file, not both")
    separator = parse_separator(separator)
    files = find_files(paths, separator_given=separator is not None)
    roles = {c for c in (label, time, device, event, split) if c is not None}
    tables = {file: read_table(file, separator, roles) for file in files}
    if device is None and not one_device_per_file:
        _refuse_hidden_devices(tables, roles)
    numeric = _default_features(tables.values(), roles)
    if features is None:
        features = numeric
        if not features:
            raise ValueError(_no_features(tables, roles))
    else:
        features = _expand_features(features, numeric)
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
            split=split,
        )
        for file, table in tables.items()
    ]
    frame = pl.concat(frames, how="vertical")
    if time is None:
        frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(DEVICE).alias(ROW))
        extra = [*([EVENT] if event else []), *([IS_TRAIN] if split else [])]
        frame = frame.select(DEVICE, ROW, *features, LABEL, *extra)
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


def load_train_test(
    train: Iterable[Path | str], test: Iterable[Path | str], **options
) -> tuple[LabelledSeries, list[str]]:
    """Train and test readings from separate files, as one series with ``is_train``; and the test
    devices that have no train part.

    Devices are matched by the device column or, without one, by file name (the path below each
    side's common folder); one train file and one test file are one device, named by the test
    file. The features are the train part's (default: its numeric columns).
    """
    if options.get("split") is not None:
        raise ValueError("give either separate train and test files or a split column, not both")
    fit = load_labelled(train, **options)
    judge = load_labelled(test, **{**options, "features": list(fit.features)})
    if shared := set(fit.files) & set(judge.files):
        raise ValueError(f"files given as both train and test: {sorted(map(str, shared))}")
    fit_frame = fit.frame
    if options.get("device") is None and len(fit.files) == len(judge.files) == 1:
        fit_frame = fit_frame.with_columns(pl.lit(judge.frame[DEVICE][0]).alias(DEVICE))
    train_devices, test_devices = set(fit_frame[DEVICE]), set(judge.frame[DEVICE])
    if not train_devices & test_devices:
        raise ValueError(
            f"no test device has a train part: train devices {sorted(train_devices)[:5]}, test devices "
            f"{sorted(test_devices)[:5]}; name the files alike or pass the device column"
        )
    order = TS if TS in fit_frame.columns else ROW
    frame = pl.concat(
        [
            fit_frame.with_columns(pl.lit(True).alias(IS_TRAIN)),
            judge.frame.with_columns(pl.lit(False).alias(IS_TRAIN)),
        ]
    ).sort([DEVICE, IS_TRAIN, order], descending=[False, True, False], maintain_order=True)
    if order == ROW:
        frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(DEVICE).alias(ROW))
    series = LabelledSeries(frame=frame, features=fit.features, files=(*fit.files, *judge.files))
    return series, sorted(test_devices - train_devices)


def _refuse_hidden_devices(tables: dict[Path, pl.DataFrame], roles: set[str]) -> None:
    for file, table in tables.items():
        for name, values in device_like_columns(table, roles).items():
            shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
            raise ValueError(
                f"{file}: column {name!r} looks like a device id ({len(values)} distinct values: {shown}), "
                "but no device column is given, so they would be read as one device: pass --device "
                f"{name} to judge each device apart, or --one-device-per-file to read every file as one"
            )


def _no_features(tables: dict[Path, pl.DataFrame], roles: set[str]) -> str:
    """Why no column is a feature: the columns and their types, and a hint for decimal commas."""
    columns: dict[str, pl.DataType] = {}
    for table in tables.values():
        for name, dtype in table.schema.items():
            columns.setdefault(name, dtype)
    shown = ", ".join(f"{name} ({dtype})" for name, dtype in columns.items())
    message = f"no numeric feature columns in {[str(f) for f in tables]} (columns: {shown})"
    for table in tables.values():
        for name, dtype in table.schema.items():
            if dtype == pl.String and name not in roles:
                text = table[name].drop_nulls().str.strip_chars()
                comma = text.str.contains(",")
                if comma.any() and text.str.contains(r"^[-+]?\d*(,\d+)?$").all():
                    example = text.filter(comma)[0]
                    return (
                        f"{message}; {name!r} holds numbers with a decimal comma (e.g. {example!r}): "
                        "write them with a decimal point"
                    )
    return message


def _expand_features(requested: Sequence[str], numeric: Sequence[str]) -> list[str]:
    """Requested feature names with shell-style patterns replaced by the numeric columns they match."""
    expanded: dict[str, None] = {}
    for item in requested:
        if not any(c in item for c in "*?["):
            expanded.setdefault(item)
            continue
        matched = fnmatch.filter(numeric, item)
        if not matched:
            raise ValueError(
                f"the feature pattern {item!r} matches no numeric column (they are {list(numeric)})"
            )
        for name in matched:
            expanded.setdefault(name)
    return list(expanded)


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
    split: str | None,
) -> pl.DataFrame:
    wanted = [c for c in (label, time, device, event, split, *features) if c is not None]
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
    if split is not None:
        columns.append(_split_flags(table[split], path).alias(IS_TRAIN))
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
        column = column.str.strip_chars(" ").str.strip_chars(QUOTES)  # '2004-02-29T00:00:18'
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
        text = column.str.strip_chars().str.strip_chars(QUOTES).str.to_lowercase()
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


def _split_flags(column: pl.Series, path: Path) -> pl.Series:
    """True for the train part: ``train`` / ``test`` (any case), or 0 = train and 1 = test."""
    dtype = column.dtype
    if dtype == pl.String:
        text = column.str.strip_chars(" ").str.strip_chars(QUOTES).str.to_lowercase()
        words = {**_SPLIT_WORDS, "0": True, "1": False}
        flags = text.replace_strict(words, default=None, return_dtype=pl.Boolean)
    elif dtype == pl.Boolean or dtype.is_numeric():
        flags = column.cast(pl.Float64).replace_strict(
            {0.0: True, 1.0: False}, default=None, return_dtype=pl.Boolean
        )
    else:
        raise ValueError(f"{path}: split column {column.name!r} has unsupported type {dtype}")
    bad = column.filter(flags.is_null())
    if bad.len():
        raise ValueError(
            f"{path}: split column {column.name!r} has {bad.len()} values that are neither train / test "
            f"nor 0 (train) / 1 (test), e.g. {bad.unique(maintain_order=True).head(3).to_list()}"
        )
    return flags


def _event_ids(column: pl.Series, path: Path) -> pl.Series:
    if not column.dtype.is_integer():
        raise ValueError(f"{path}: event column {column.name!r} must hold integers, got {column.dtype}")
    return column.cast(pl.Int64)
