"""Reading a user's files: CSV (any separator, quotes unwrapped) or Parquet, found among paths.

Files: ``.csv``, ``.tsv`` (tab-separated by default) and ``.parquet`` / ``.pq`` are recognised by
name (folders yield those); once a separator is given, a file named explicitly is read as CSV whatever
its extension (``.txt``, ``.dat``, ...). ``\\t`` (backslash-t, as typed in a shell) or ``tab`` means tab.
Values wrapped in quotes (``'2004-02-29T00:00:18'`` or ``"..."``) are unwrapped: a column quoted
throughout that holds numbers is read as numbers. A header that lacks the separator in use but holds
another common one is refused with the ``--sep`` to pass. Every problem is a ValueError naming the file.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

CSV_SUFFIXES = (".csv.gz", ".csv", ".tsv.gz", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_SEPARATOR = ","
QUOTES = "'\""  # what may wrap a value
# Separators a header is checked for, and how to type them after --sep.
_SEPARATORS = {";": ";", "\t": "\\t", "|": "|", ",": ","}
NULL_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]


def parse_separator(separator: str | None) -> str | None:
    """One character; ``\\t`` (backslash-t as typed in a shell) or ``tab`` (any case) is a tab;
    None = not given."""
    if separator is None:
        return None
    if separator == "\\t" or separator.lower() == "tab":
        return "\t"
    if len(separator.encode()) != 1:
        raise ValueError(f"the separator must be one character (or \\t or tab for a tab), got {separator!r}")
    if separator in ('"', "\n", "\r"):
        raise ValueError(f"{separator!r} cannot separate fields (a quote or a line end)")
    return separator


def find_files(paths: Iterable[Path | str], *, separator_given: bool = False) -> list[Path]:
    """The CSV / Parquet files among `paths`, folders searched recursively (hidden entries skipped).

    With `separator_given`, a file named explicitly is a CSV whatever its extension (a folder still
    yields only CSV / Parquet files: it may hold notes).
    """
    found: dict[Path, None] = {}
    known = CSV_SUFFIXES + PARQUET_SUFFIXES
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path).parts
                listed = suffix_of(file, known) is not None
                if file.is_file() and listed and not any(p.startswith(".") for p in relative):
                    found.setdefault(file.resolve())
        elif path.is_file():
            if not separator_given and not suffix_of(path, known):
                raise ValueError(
                    f"{path}: not a CSV or Parquet file (want {CSV_SUFFIXES + PARQUET_SUFFIXES}; "
                    "a CSV with another extension is read as one once a separator is given, e.g. --sep ',')"
                )
            found.setdefault(path.resolve())
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no CSV or Parquet files in {[str(p) for p in paths]}")
    return list(found)


def _header(path: Path) -> str:
    """The first line of a (gzipped) text file, without the line end and a byte-order mark."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            line = handle.readline(1 << 16)
    except (OSError, EOFError):
        return ""  # unreadable here: the CSV reader says why
    return line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _check_header(path: Path, separator: str) -> None:
    """Refuse a CSV whose header lacks `separator` but holds another common one (``;``, tab, ``|``, ``,``)."""
    header = _header(path)
    if not header or separator in header:
        return
    others = {s: header.count(s) for s in _SEPARATORS if s != separator and s in header}
    if others:
        likely = max(others, key=others.get)
        flag = _SEPARATORS[likely]
        raise ValueError(
            f"{path}: the header {header[:60]!r} holds no {separator!r} but {others[likely]} {likely!r}; "
            f"it looks '{flag}'-separated: pass --sep '{flag}'"
        )


def suffix_of(path: Path, known: Sequence[str] = CSV_SUFFIXES + PARQUET_SUFFIXES) -> str | None:
    name = path.name.lower()
    return next((s for s in known if name.endswith(s) and len(name) > len(s)), None)


def extension_of(path: Path) -> str:
    """What a device name leaves out: a known suffix, else the last one (with a trailing .gz)."""
    if known := suffix_of(path):
        return known
    return "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix


def read_table(path: Path, separator: str | None, roles: set[str]) -> pl.DataFrame:
    """A CSV or Parquet file (by its name; CSV when a separator is given), quotes unwrapped outside
    `roles`; a ValueError naming the file when it cannot be read, is empty or has the wrong separator."""
    is_csv = suffix_of(path, PARQUET_SUFFIXES) is None
    if separator is None:
        separator = "\t" if suffix_of(path, (".tsv", ".tsv.gz")) else DEFAULT_SEPARATOR
    if is_csv:
        _check_header(path, separator)
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
    if is_csv:
        _check_separator(table, path, separator)
    if table.height == 0:
        raise ValueError(f"{path}: the file has a header but no rows")
    return _unquote(table, roles) if is_csv else table


def _check_separator(table: pl.DataFrame, path: Path, separator: str) -> None:
    """One column whose name holds another common separator: the file was read with the wrong one."""
    if table.width != 1:
        return
    header = table.columns[0]
    for other, flag in ((";", ";"), ("\t", "\\t"), ("|", "|"), (",", ","), (" ", " ")):
        if other != separator and other in header.strip():
            raise ValueError(
                f"{path}: read with the separator {separator!r} the file has one column {header[:60]!r}; "
                f"it looks '{flag}'-separated: pass --sep '{flag}'"
            )


def _unquote(table: pl.DataFrame, roles: set[str]) -> pl.DataFrame:
    """Strip quotes wrapping every value of a text column (an export quirk); such a column holding
    numbers becomes a number column, unless it plays a role (device ids stay text)."""
    columns = []
    for name, dtype in table.schema.items():
        column = table[name]
        if dtype == pl.String:
            text = column.str.strip_chars(" ")
            values = text.drop_nulls()
            wrapped = values.len() > 0 and any(
                (values.str.starts_with(q) & values.str.ends_with(q) & (values.str.len_chars() >= 2)).all()
                for q in QUOTES
            )
            if wrapped:
                column = text.str.slice(1, text.str.len_chars() - 2)
                as_number = column.cast(pl.Float64, strict=False)
                if name not in roles and as_number.null_count() == column.null_count():
                    column = as_number
        columns.append(column)
    return pl.DataFrame(columns)
