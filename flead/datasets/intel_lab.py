"""The Intel Berkeley Research Lab data: download the official files and parse the real format.

`data.txt` is space separated with no header, one reading per line::

    date time epoch moteid temperature humidity light voltage

Every line read either becomes a typed row (columns and dtypes of `flead.schema.LAKE_SCHEMA`) or a
reject carrying its source file, 1-based line number, raw text and reason: rows + rejects == lines.
The timestamps carry no time zone; they are read as UTC.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import polars.selectors as cs

from flead.fleet import INTEL_LAB
from flead.schema import LAKE_SCHEMA, MEASUREMENTS, lake_flags

DATA_FILE = "data.txt.gz"
LOCS_FILE = "mote_locs.txt"
MOTE_IDS = range(1, 55)  # the deployment's motes; synthetic fleets pass their own range

FIELDS = ("date", "time", "epoch", "moteid", *MEASUREMENTS)

REJECT_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "line": pl.Int64(),  # 1-based
    "raw": pl.String(),
    "reason": pl.String(),
}

_GZIP_MAGIC = b"\x1f\x8b"


def device_id(mote: int) -> str:
    """The lake's device id of a mote: ``mote-01`` .. ``mote-54``."""
    return f"mote-{mote:02d}"


# --------------------------------------------------------------------------------------- local sources


def resolve_source(path: Path) -> list[Path]:
    """The data files behind `path`: itself if a file, else the folder's data.txt(.gz) or Node*.txt."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no Intel Lab data at {path}")
    for name in (DATA_FILE, "data.txt"):
        if (path / name).is_file():
            return [path / name]
    per_mote = [p for p in path.iterdir() if p.is_file() and re.fullmatch(r"Node\d+\.txt(\.gz)?", p.name)]
    if not per_mote:
        raise FileNotFoundError(f"{path} holds neither {DATA_FILE}, data.txt nor per-mote Node*.txt files")
    return sorted(per_mote, key=lambda p: int(re.sub(r"\D", "", p.name)))


def read_lines(path: Path) -> pl.DataFrame:
    """Every line of a (possibly gzipped) text file: source, line (1-based), raw (without the newline)."""
    # Undecodable bytes become U+FFFD, so such a line fails to parse and is rejected with its text.
    text = _read_bytes(Path(path)).decode("utf-8", errors="replace")
    return pl.DataFrame(_split_lines(text)).select(
        pl.lit(str(path)).alias("source"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("line"),
        pl.col("raw"),
    )


def _split_lines(text: str, block_chars: int = 1 << 16) -> pl.Series:
    # Splitting one 150 MB string is slow in polars (~1.5 s); cut it at line ends into blocks first.
    blocks, start = [], 0
    while start < len(text):
        end = text.find("\n", min(start + block_chars, len(text)))
        end = len(text) if end < 0 else end + 1
        blocks.append(text[start:end])
        start = end
    return pl.Series("raw", blocks, pl.String).str.strip_suffix("\n").str.split("\n").explode()


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data.startswith(_GZIP_MAGIC) else data


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParseResult:
    rows: pl.DataFrame  # the lake's schema, in the order the lines were read
    rejects: pl.DataFrame  # REJECT_SCHEMA
    lines: int
    unused_columns: tuple[str, ...] = ()  # a table's columns that its fleet schema does not declare

    def rejects_by_reason(self) -> dict[str, int]:
        counts = self.rejects.group_by("reason").len().sort("len", "reason", descending=[True, False])
        return dict(counts.iter_rows())


def parse_files(paths: Iterable[Path], mote_ids: range = MOTE_IDS) -> ParseResult:
    """Parse the given files as one data set (duplicates are found across all of them)."""
    frames = [read_lines(path) for path in paths]
    lines = pl.concat(frames) if frames else pl.DataFrame(schema=REJECT_SCHEMA).drop("reason")
    return parse_lines(lines, mote_ids)


def parse_lines(lines: pl.DataFrame, mote_ids: range = MOTE_IDS) -> ParseResult:
    """Parse a frame of (source, line, raw) into typed rows and rejects, vectorised."""
    fields = pl.col("raw").str.strip_chars().str.split_exact(" ", len(FIELDS))
    names = [f"_{name}" for name in FIELDS]
    parsed = (
        lines.lazy()
        .with_columns(
            pl.col("raw").str.strip_chars().str.len_bytes().eq(0).alias("_blank"),
            fields.struct.rename_fields([*names, "_extra"]).alias("_fields"),
        )
        .unnest("_fields")
        .with_columns(
            (
                pl.col("_date").str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us", "UTC"))
                + pl.col("_time").str.to_time("%H:%M:%S%.f", strict=False).cast(pl.Duration("us"))
            ).alias("ts"),
            pl.col("_epoch").cast(pl.Int64, strict=False).alias("epoch"),
            pl.col("_moteid").cast(pl.Int64, strict=False).alias("moteid"),
            *(pl.col(f"_{m}").cast(pl.Float64, strict=False).alias(m) for m in MEASUREMENTS),
        )
        .with_columns(
            _reason_without_duplicates(mote_ids).alias("reason"),
            pl.any_horizontal(pl.col(f"_{m}").is_null() for m in MEASUREMENTS).alias("missing_fields"),
        )
        .drop(cs.starts_with("_"))  # the field strings are no longer needed: spare the memory
        .with_columns(
            pl.when(pl.col("reason").is_null() & ~_first_copy())
            .then(pl.lit("duplicate"))
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
        .collect()
    )
    rows = (
        parsed.filter(pl.col("reason").is_null())
        .select(_typed_row())
        .select(pl.col(name).cast(dtype) for name, dtype in LAKE_SCHEMA.items())
    )
    rejects = parsed.filter(pl.col("reason").is_not_null()).select(
        pl.col(name).cast(dtype) for name, dtype in REJECT_SCHEMA.items()
    )
    if rows.height + rejects.height != lines.height:
        raise RuntimeError(f"lost lines: {rows.height} rows + {rejects.height} rejects != {lines.height}")
    return ParseResult(rows=rows, rejects=rejects, lines=lines.height)


def _reason_without_duplicates(mote_ids: range) -> pl.Expr:
    """Why a line is rejected (the first problem found), null if it is a good reading."""
    lo, hi = mote_ids.start, mote_ids.stop - 1
    reason = (
        pl.when(pl.col("_blank"))
        .then(pl.lit("blank line"))
        .when(pl.col("_moteid").is_null())  # date time epoch moteid are required, measurements not
        .then(pl.lit("fewer than 4 fields"))
        .when(pl.col("_extra").is_not_null())
        .then(pl.lit(f"more than {len(FIELDS)} fields"))
        .when(pl.col("ts").is_null())
        .then(pl.lit("bad timestamp"))
        .when(pl.col("epoch").is_null())
        .then(pl.lit("non-numeric epoch"))
        .when(pl.col("epoch") < 0)
        .then(pl.lit("negative epoch"))
        .when(pl.col("moteid").is_null())
        .then(pl.lit("non-numeric moteid"))
        .when(~pl.col("moteid").is_between(lo, hi))
        .then(pl.lit(f"mote id outside {lo}..{hi}"))
    )
    for m in MEASUREMENTS:
        # NaN and inf parse as floats but are no measurement.
        bad = pl.col(f"_{m}").is_not_null() & ~pl.col(m).is_finite().fill_null(False)
        reason = reason.when(bad).then(pl.lit(f"non-numeric {m}"))
    return reason.otherwise(pl.lit(None, pl.String))


def _first_copy() -> pl.Expr:
    """False for a later copy of a reading already seen.

    A copy is the same mote, epoch and measurements. (moteid, epoch) alone is no key: motes restart
    their epoch counter, so the 9-mote subset repeats 22,135 such pairs with different readings
    days apart; the gateway logging one packet twice repeats the measurements too. Rejected lines
    (non-null reason) are keyed apart so they never shadow a good reading.
    """
    return pl.struct("reason", "moteid", "epoch", *MEASUREMENTS).is_first_distinct()


def _typed_row() -> list[pl.Expr]:
    return [
        _device_id_expr(),
        pl.col("ts"),
        pl.col("epoch"),
        *(pl.col(m) for m in MEASUREMENTS),
        *lake_flags(INTEL_LAB),
        pl.col("missing_fields"),
    ]


def _device_id_expr() -> pl.Expr:
    """`device_id` of the `moteid` column, vectorised (same as `device_id`)."""
    return pl.format("mote-{}", pl.col("moteid").cast(pl.String).str.zfill(2)).alias("device_id")


def read_mote_locations(path: Path) -> pl.DataFrame:
    """`mote_locs.txt` (``moteid x y`` in metres, header line optional) as device_id, x, y."""
    lines = read_lines(path).filter(pl.col("raw").str.strip_chars() != "")
    parts = pl.col("raw").str.strip_chars().str.split_exact(" ", 2).struct
    frame = lines.select(
        parts.field("field_0").cast(pl.Int64, strict=False).alias("moteid"),
        parts.field("field_1").cast(pl.Float64, strict=False).alias("x"),
        parts.field("field_2").cast(pl.Float64, strict=False).alias("y"),
    )
    if frame.head(1)["moteid"].is_null().all():
        frame = frame.slice(1)  # the header
    if frame.null_count().sum_horizontal().item():
        raise ValueError(f"{path}: every line must be `moteid x y`")
    return frame.select(_device_id_expr(), "x", "y")


# -------------------------------------------------------------------------------------------- download

ProgressCallback = Callable[[int, int | None], None]  # (bytes done, total bytes if known)

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be downloaded or does not match what was downloaded before."""


class _Retryable(Exception):
    """A failed attempt worth repeating (network trouble, truncated or corrupt transfer)."""


@dataclass(frozen=True)
class IntelLabFiles:
    data: Path
    locations: Path


def download_intel_lab(
    data_dir: Path,
    *,
    data_url: str,
    locs_url: str,
    progress: ProgressCallback | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> IntelLabFiles:
    """Download data.txt.gz and mote_locs.txt into `data_dir` (no-op when already there and intact)."""
    options = {"progress": progress, "attempts": attempts, "backoff_s": backoff_s, "timeout_s": timeout_s}
    return IntelLabFiles(
        data=download_file(data_url, Path(data_dir) / DATA_FILE, **options),
        locations=download_file(locs_url, Path(data_dir) / LOCS_FILE, **options),
    )


def checksum_path(dest: Path) -> Path:
    """The sidecar holding the SHA-256 of the first good download of `dest`."""
    return dest.with_name(dest.name + ".sha256")


def download_file(
    url: str,
    dest: Path,
    *,
    progress: ProgressCallback | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> Path:
    """Download `url` to `dest`: resumable, retried, verified, checksum-pinned.

    The transfer goes to ``<dest>.part`` and resumes there with an HTTP Range request. A finished
    transfer is checked against Content-Length and, for gzip files, decompressed through to verify
    its CRC. The first good download's SHA-256 is recorded in ``<dest>.sha256``; later calls return
    at once if `dest` still matches it, refetch it if not, and refuse a refetch whose content changed.
    """
    dest = Path(dest)
    sidecar = checksum_path(dest)
    recorded = next(iter(sidecar.read_text().split()), None) if sidecar.is_file() else None
    if dest.is_file():
        try:
            digest = _verify(dest)
        except _Retryable:
            digest = None
        if digest is not None and recorded in (None, digest):
            if recorded is None:
                _write_checksum(sidecar, digest, dest.name)
            return dest
        dest.unlink()  # damaged since it was downloaded: fetch it again

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problem = "no attempt made"
    with httpx.Client(
        timeout=timeout_s, follow_redirects=True, headers={"Accept-Encoding": "identity"}
    ) as client:
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                _fetch(client, url, part, progress)
            except _Retryable as exc:
                problem = str(exc)  # keep the .part: the next attempt resumes it
                continue
            try:
                digest = _verify(part)
            except _Retryable as exc:
                part.unlink()
                problem = f"{exc}; partial file dropped"
                continue
            if recorded is not None and digest != recorded:
                raise DownloadError(
                    f"{url}: SHA-256 {digest} differs from {recorded} recorded in {sidecar} by an earlier "
                    f"download; the file changed upstream (delete {sidecar} to accept the new one)"
                )
            os.replace(part, dest)
            _write_checksum(sidecar, digest, dest.name)
            return dest
    raise DownloadError(f"could not download {url} after {attempts} attempts: {problem}")


def _fetch(client: httpx.Client, url: str, part: Path, progress: ProgressCallback | None) -> None:
    """One attempt: append the rest of `url` to `part`; raises _Retryable or DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            content_range = response.headers.get("Content-Range", "")
            if status == 416 and offset:
                if _content_range(content_range)[1] == offset:
                    return  # the .part already holds the whole file
                part.unlink()
                raise _Retryable(f"HTTP 416 for bytes {offset}- (stale partial file dropped)")
            if status in _RETRY_STATUSES:
                raise _Retryable(f"HTTP {status} {response.reason_phrase}")
            if status >= 400:
                raise DownloadError(f"could not download {url}: HTTP {status} {response.reason_phrase}")
            if status == 206:
                start, total = _content_range(content_range)
                if start != offset:
                    part.unlink()
                    raise _Retryable(f"server resumed at {content_range!r}, asked for byte {offset}")
                mode = "ab"
            else:  # the whole file (the server ignored or was not sent a Range)
                offset = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
                mode = "wb"
            done = offset
            if progress:
                progress(done, total)
            with part.open(mode) as fh:
                # Raw: a Content-Encoding must never unzip the .gz. Unbuffered: a dropped connection
                # loses nothing already received.
                for chunk in response.iter_raw():
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise DownloadError(f"could not download {url}: {exc}") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _Retryable(f"cannot connect (is the network reachable?): {exc}") from exc
    except (httpx.TransportError, OSError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    if total is not None and done != total:
        raise _Retryable(f"transfer ended at {done} of {total} bytes")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``bytes a-b/total`` or ``bytes */total`` Content-Range header."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", header.strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)


def _verify(path: Path) -> str:
    """SHA-256 of `path`, after decompressing it through if it is gzip (raises _Retryable if corrupt)."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            sha.update(block)
        fh.seek(0)
        if fh.read(2) == _GZIP_MAGIC:
            fh.seek(0)
            try:
                with gzip.GzipFile(fileobj=fh) as unzipped:
                    while unzipped.read(_CHUNK):
                        pass
            except (OSError, EOFError, zlib.error) as exc:
                raise _Retryable(f"corrupt gzip ({exc})") from exc
    return sha.hexdigest()


def _write_checksum(sidecar: Path, digest: str, name: str) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {name}\n")  # the format `sha256sum -c` reads
    os.replace(tmp, sidecar)
