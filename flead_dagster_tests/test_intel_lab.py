"""The Intel Lab parser (every quirk of the real format) and the downloader (against a local HTTP server)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flead.datasets.intel_lab import (
    REJECT_SCHEMA,
    DownloadError,
    _split_lines,
    checksum_path,
    download_file,
    download_intel_lab,
    parse_files,
    read_mote_locations,
    resolve_source,
)
from flead.schema import LAKE_SCHEMA

SHARED = Path(__file__).resolve().parents[2] / "shared/data/intel_lab"

GOOD = "2004-02-28 00:59:16.02785 3 1 19.9884 37.0933 45.08 2.69964"


def write(path: Path, *lines: str, newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def rejects_of(result) -> list[tuple[int, str]]:
    return [(line, reason) for line, reason in result.rejects.select("line", "reason").iter_rows()]


# ------------------------------------------------------------------------------------------- parsing


def test_good_line_becomes_a_typed_row(tmp_path: Path) -> None:
    result = parse_files([write(tmp_path / "d.txt", GOOD)])
    assert result.rows.schema == pl.Schema(LAKE_SCHEMA)
    assert result.rejects.schema == pl.Schema(REJECT_SCHEMA)
    assert result.rows.row(0, named=True) == {
        "device_id": "mote-01",
        "ts": datetime(2004, 2, 28, 0, 59, 16, 27850, tzinfo=UTC),
        "epoch": 3,
        "temperature": 19.9884,
        "humidity": 37.0933,
        "light": 45.08,
        "voltage": 2.69964,
        "out_of_range": False,
        "low_battery": False,
        "missing_fields": False,
    }
    assert (result.lines, result.rejects.height) == (1, 0)


def test_fractional_seconds_of_any_length_or_none(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.txt",
        "2004-03-01 10:00:00 1 2 20 40 100 2.6",
        "2004-03-01 10:00:00.5 2 2 20 40 100 2.6",
        "2004-03-01 10:00:00.02785 3 2 20 40 100 2.6",
        "2004-03-01 10:00:00.123456 4 2 20 40 100 2.6",
        "2004-03-01 10:00:00.1234567 5 2 20 40 100 2.6",  # beyond microseconds: truncated
        "2004-03-01 10:00:00. 6 2 20 40 100 2.6",
    )
    result = parse_files([path])
    base = datetime(2004, 3, 1, 10, tzinfo=UTC)
    assert result.rows["ts"].to_list() == [
        base,
        base.replace(microsecond=500000),
        base.replace(microsecond=27850),
        base.replace(microsecond=123456),
        base.replace(microsecond=123456),
    ]
    assert rejects_of(result) == [(6, "bad timestamp")]


def test_missing_trailing_fields_keep_the_row_with_nulls(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.txt",
        "2004-03-01 10:00:00 100 7 20.5 40.1",
        "2004-03-01 10:00:31 101 7",
        "2004-03-01 10:01:02 102 7 20.6   ",  # trailing blanks are not fields
        "2004-03-01 10:01:33 103",
        "2004-03-01 10:02:04",
    )
    result = parse_files([path])
    assert result.rows.select(
        "epoch", "temperature", "humidity", "light", "voltage", "missing_fields"
    ).rows() == [
        (100, 20.5, 40.1, None, None, True),
        (101, None, None, None, None, True),
        (102, 20.6, None, None, None, True),
    ]
    assert not result.rows["out_of_range"].any() and not result.rows["low_battery"].any()
    assert rejects_of(result) == [(4, "fewer than 4 fields"), (5, "fewer than 4 fields")]


def test_mote_ids_outside_1_to_54_are_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.txt",
        "2004-03-01 10:00:00 1 0 20 40 100 2.6",
        "2004-03-01 10:00:00 1 55 20 40 100 2.6",
        "2004-03-01 10:00:00 1 -3 20 40 100 2.6",
        "2004-03-01 10:00:00 1 54 20 40 100 2.6",
        "2004-03-01 10:00:00 1 7b 20 40 100 2.6",
        "2004-03-01 10:00:00 1 09 20 40 100 2.6",
    )
    result = parse_files([path])
    assert result.rows["device_id"].to_list() == ["mote-54", "mote-09"]
    assert rejects_of(result) == [
        (1, "mote id outside 1..54"),
        (2, "mote id outside 1..54"),
        (3, "mote id outside 1..54"),
        (5, "non-numeric moteid"),
    ]


def test_duplicates_keep_the_first_copy(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a.txt",
        "2004-03-01 10:00:00.1 500 4 20 40 100 2.6 junk",  # rejected: must not shadow line 2
        "2004-03-01 10:00:00.1 500 4 20 40 100 2.6",
        "2004-03-01 10:00:00.1 500 4 20 40 100 2.6",  # the same line again
        "2004-03-01 10:00:00.2 500 4 20 40 100 2.6",  # the packet logged twice, ms apart
        "2004-03-13 02:00:00.0 500 4 18 45 3 2.5",  # epoch counter restarted: a new reading
        "2004-03-01 10:00:00.1 500 5 20 40 100 2.6",  # another mote
        "2004-03-01 10:00:00.1 501 4",
        "2004-03-01 10:00:00.1 501 4",  # missing fields, still a copy
    )
    second = write(tmp_path / "b.txt", "2004-03-01 10:00:00.1 500 4 20 40 100 2.6")
    result = parse_files([first, second])
    assert result.rows.select("device_id", "epoch", "temperature").rows() == [
        ("mote-04", 500, 20.0),
        ("mote-04", 500, 18.0),
        ("mote-05", 500, 20.0),
        ("mote-04", 501, None),
    ]
    assert result.rejects.select("source", "line", "reason").rows() == [
        (str(first), 1, "more than 8 fields"),
        (str(first), 3, "duplicate"),
        (str(first), 4, "duplicate"),
        (str(first), 8, "duplicate"),
        (str(second), 1, "duplicate"),
    ]


def test_blank_and_garbage_lines_are_rejected_with_their_text(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(
        b"\n"
        b"   \t \n" + GOOD.encode() + b"\r\n"  # a CRLF line is fine
        b"hello world\n"
        b"# a comment\n"
        b"\xff\xfe\x00garbage\n"
        b"2004-03-01 10:00:00 1 2 20 40 100 2.6 \xff\n"
        b"2004-03-01,10:00:00,1,2,20,40,100,2.6\n"
        b"2004-03-01  10:00:00 1 2 20 40 100 2.6\n"
    )
    result = parse_files([path])
    assert result.rows.height == 1
    assert rejects_of(result) == [
        (1, "blank line"),
        (2, "blank line"),
        (4, "fewer than 4 fields"),
        (5, "fewer than 4 fields"),
        (6, "fewer than 4 fields"),
        (7, "more than 8 fields"),
        (8, "fewer than 4 fields"),
        (9, "more than 8 fields"),  # split on single spaces, the doubled one makes an empty field
    ]
    assert result.rejects["raw"].to_list()[:5] == [
        "",
        "   \t ",
        "hello world",
        "# a comment",
        "\ufffd\ufffd\x00garbage",
    ]


def test_non_numeric_fields_are_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.txt",
        "2004-03-01 10:00:00 x1 2 20 40 100 2.6",
        "2004-03-01 10:00:00 1.5 2 20 40 100 2.6",
        "2004-03-01 10:00:00 -4 2 20 40 100 2.6",
        "2004-03-01 10:00:00 1 2 warm 40 100 2.6",
        "2004-03-01 10:00:00 1 2 20 nan 100 2.6",
        "2004-03-01 10:00:00 1 2 20 40 inf 2.6",
        "2004-03-01 10:00:00 1 2 20 40 100 2,6",
        "2004-02-30 10:00:00 1 2 20 40 100 2.6",
        "2004-03-01 25:00:00 1 2 20 40 100 2.6",
        "2004-03-01 10:00:00 1 2 -2.5e1 1e1 0 2.6",
    )
    result = parse_files([path])
    assert result.rows.select("temperature", "humidity", "light").rows() == [(-25.0, 10.0, 0.0)]
    assert rejects_of(result) == [
        (1, "non-numeric epoch"),
        (2, "non-numeric epoch"),
        (3, "negative epoch"),
        (4, "non-numeric temperature"),
        (5, "non-numeric humidity"),
        (6, "non-numeric light"),
        (7, "non-numeric voltage"),
        (8, "bad timestamp"),
        (9, "bad timestamp"),
    ]


def test_impossible_readings_are_flagged_not_dropped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.txt",
        "2004-03-01 10:00:00 1 1 60 100 0 3.5",  # every bound inclusive
        "2004-03-01 10:00:01 2 1 -10 0 100000 1.5",
        "2004-03-01 10:00:02 3 1 121.997 14.9461 8.28 2.00649",  # mote 1's last words
        "2004-03-01 10:00:03 4 1 -38.4 -4 0.46 2.1",  # the sensors' raw-zero values
        "2004-03-01 10:00:04 5 1 22 100.01 5 2.6",
        "2004-03-01 10:00:05 6 1 22 40 -0.5 2.6",
        "2004-03-01 10:00:06 7 1 22 40 5 3.6",
        "2004-03-01 10:00:07 8 1 22 40 5 2.4",
        "2004-03-01 10:00:08 9 1 22 40 5 2.39",
        "2004-03-01 10:00:09 10 1 150",  # out of range and missing fields at once
    )
    result = parse_files([path])
    assert result.rows.height == result.lines == 10
    assert result.rows.select("epoch", "out_of_range", "low_battery", "missing_fields").rows() == [
        (1, False, False, False),
        (2, False, True, False),
        (3, True, True, False),
        (4, True, True, False),
        (5, True, False, False),
        (6, True, False, False),
        (7, True, False, False),
        (8, False, False, False),
        (9, False, True, False),
        (10, True, False, True),
    ]


def test_line_numbers_and_counts_without_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", GOOD, "", "junk", GOOD.replace(" 3 1 ", " 4 1 "), newline_at_end=False)
    result = parse_files([path])
    assert (result.lines, result.rows.height) == (4, 2)
    assert rejects_of(result) == [(2, "blank line"), (3, "fewer than 4 fields")]
    assert result.rejects_by_reason() == {"blank line": 1, "fewer than 4 fields": 1}
    empty = parse_files([write(tmp_path / "empty.txt", newline_at_end=False)])
    assert (empty.lines, empty.rows.height, empty.rejects.height) == (0, 0, 0)
    assert parse_files([]).lines == 0


@pytest.mark.parametrize("block_chars", [1, 2, 3, 7, 1 << 16])
def test_lines_split_exactly_across_blocks(block_chars: int) -> None:
    for text in ["", "\n", "a", "a\n", "a\n\nbc\n", "ab\n\n\ncd", "\n\nxyz\n\n", "line\r\nnext"]:
        expected = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []
        assert _split_lines(text, block_chars).to_list() == expected, repr(text)


def test_gzip_source_parses_like_plain_text(tmp_path: Path) -> None:
    lines = [GOOD, "2004-03-01 10:00:00 9 3 21 41", "bad"]
    plain = write(tmp_path / "data.txt", *lines)
    zipped = tmp_path / "data.txt.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    from_plain, from_gzip = parse_files([plain]), parse_files([zipped])
    assert from_gzip.rows.equals(from_plain.rows)
    assert from_gzip.rows.height == 2
    assert from_gzip.rejects.select("source", "line", "reason").rows() == [
        (str(zipped), 3, "fewer than 4 fields")
    ]


def test_resolve_source(tmp_path: Path) -> None:
    single = write(tmp_path / "whatever.txt", GOOD)
    assert resolve_source(single) == [single]

    motes = tmp_path / "motes"
    motes.mkdir()
    for name in ("Node10.txt", "Node2.txt", "Node01.txt", "README.md", "mote_locs.txt"):
        write(motes / name, GOOD)
    assert [p.name for p in resolve_source(motes)] == ["Node01.txt", "Node2.txt", "Node10.txt"]

    write(motes / "data.txt.gz", GOOD)
    assert resolve_source(motes) == [motes / "data.txt.gz"]

    with pytest.raises(FileNotFoundError, match="Node"):
        resolve_source(tmp_path)  # holds whatever.txt and motes/ only
    with pytest.raises(FileNotFoundError):
        resolve_source(tmp_path / "absent")


def test_mote_locations_with_or_without_header(tmp_path: Path) -> None:
    expected = [("mote-01", 21.5, 23.0), ("mote-02", 24.5, 20.0)]
    headed = read_mote_locations(
        write(tmp_path / "a.txt", "moteid x_location y_location", "1 21.5 23", "2 24.5 20")
    )
    bare = read_mote_locations(write(tmp_path / "b.txt", "1 21.5 23", "2 24.5 20", ""))
    assert headed.rows() == bare.rows() == expected
    with pytest.raises(ValueError, match="moteid x y"):
        read_mote_locations(write(tmp_path / "c.txt", "1 21.5 23", "2 oops 20"))


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")
def test_shared_nine_mote_subset() -> None:
    sources = resolve_source(SHARED)
    assert len(sources) == 9
    result = parse_files(sources)
    assert result.lines == 422_292
    # The only rejects: the gateway logged two packets twice (same mote, epoch and values, ms apart).
    assert result.rejects.select(
        pl.col("source").str.extract(r"(Node\d+\.txt)$"), "line", "reason"
    ).rows() == [
        ("Node06.txt", 675, "duplicate"),
        ("Node34.txt", 462, "duplicate"),
    ]
    assert result.rows.height == 422_290
    assert result.rows["missing_fields"].sum() == 0
    last = result.rows.filter(pl.col("device_id") == "mote-01").sort("ts").tail(1).row(0, named=True)
    assert (last["temperature"], last["out_of_range"], last["low_battery"]) == (121.997, True, True)
    assert result.rows["device_id"].n_unique() == 9


# ------------------------------------------------------------------------------------------ download


@dataclass
class Served:
    """What the local server serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    unavailable: int = 0  # answer this many requests with 503 first
    drop_after: int | None = None  # cut the next response's body after this many bytes
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        served = self.served
        served.requests.append((self.path, self.headers.get("Range")))
        if served.unavailable:
            served.unavailable -= 1
            self.send_error(503)
            return
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and not served.ignore_range:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if served.drop_after is not None:
            payload, served.drop_after = payload[: served.drop_after], None
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # listening once constructed
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def payload() -> bytes:
    lines = [
        f"2004-03-01 10:{i // 60 % 60:02d}:{i % 60:02d}.5 {i} {i % 54 + 1} 20 40 100 2.6"
        for i in range(20000)
    ]
    return gzip.compress("\n".join(lines).encode() + b"\n")


def test_download_streams_verifies_and_records_checksum(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    calls: list[tuple[int, int | None]] = []
    dest = download_file(
        f"{url}/data.txt.gz", tmp_path / "data.txt.gz", progress=lambda d, t: calls.append((d, t))
    )
    assert dest.read_bytes() == payload
    digest = hashlib.sha256(payload).hexdigest()
    assert checksum_path(dest).read_text() == f"{digest}  data.txt.gz\n"
    assert calls[0] == (0, len(payload)) and calls[-1] == (len(payload), len(payload))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt.gz", "data.txt.gz.sha256"]

    # A later call trusts the recorded checksum: no request, works offline.
    assert download_file("http://127.0.0.1:1/data.txt.gz", dest, attempts=1) == dest
    assert len(served.requests) == 1


def test_download_resumes_a_truncated_part_file(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    (tmp_path / "data.txt.gz.part").write_bytes(payload[:1000])
    calls: list[tuple[int, int | None]] = []
    dest = download_file(
        f"{url}/data.txt.gz", tmp_path / "data.txt.gz", progress=lambda d, t: calls.append((d, t))
    )
    assert dest.read_bytes() == payload
    assert served.requests == [("/data.txt.gz", "bytes=1000-")]
    assert calls[0] == (1000, len(payload))


def test_download_resumes_after_the_connection_drops(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    served.drop_after = 4096
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz", backoff_s=0)
    assert dest.read_bytes() == payload
    assert served.requests == [("/data.txt.gz", None), ("/data.txt.gz", "bytes=4096-")]


def test_download_restarts_when_the_server_ignores_range(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    served.ignore_range = True
    (tmp_path / "data.txt.gz.part").write_bytes(b"stale bytes from somewhere else")
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz")
    assert dest.read_bytes() == payload


def test_download_finishes_a_complete_part_file(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    (tmp_path / "data.txt.gz.part").write_bytes(payload)
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz")
    assert dest.read_bytes() == payload
    assert served.requests == [("/data.txt.gz", f"bytes={len(payload)}-")]


def test_download_retries_server_errors_with_backoff(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    served.unavailable = 2
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz", attempts=3, backoff_s=0)
    assert dest.read_bytes() == payload
    assert len(served.requests) == 3

    served.unavailable = 3
    with pytest.raises(DownloadError, match=r"after 3 attempts: HTTP 503"):
        download_file(f"{url}/data.txt.gz", tmp_path / "again.txt.gz", attempts=3, backoff_s=0)


def test_download_missing_file_fails_at_once(tmp_path, server) -> None:
    url, served = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{url}/nope.txt.gz", tmp_path / "nope.txt.gz", attempts=5, backoff_s=0)
    assert len(served.requests) == 1


def test_download_unreachable_network_raises_a_readable_error(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/data.txt.gz"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "data.txt.gz", attempts=2, backoff_s=0)
    message = str(info.value)
    assert url in message and "after 2 attempts" in message and "is the network reachable?" in message
    assert not (tmp_path / "data.txt.gz").exists()


def test_download_rejects_a_corrupt_gzip(tmp_path, server, payload) -> None:
    url, served = server
    broken = bytearray(payload)
    broken[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    served.files["/data.txt.gz"] = bytes(broken)
    with pytest.raises(DownloadError, match="corrupt gzip"):
        download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz", attempts=2, backoff_s=0)
    assert list(tmp_path.iterdir()) == []
    assert len(served.requests) == 2  # the .part was dropped, so the retry starts from scratch


def test_download_refetches_a_damaged_local_copy(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz")
    dest.write_bytes(gzip.compress(b"tampered\n"))
    assert download_file(f"{url}/data.txt.gz", dest).read_bytes() == payload
    assert len(served.requests) == 2


def test_download_refuses_content_that_changed_upstream(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/data.txt.gz"] = payload
    dest = download_file(f"{url}/data.txt.gz", tmp_path / "data.txt.gz")
    dest.unlink()
    served.files["/data.txt.gz"] = gzip.compress(b"something else\n")
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(f"{url}/data.txt.gz", dest)
    assert not dest.exists()


def test_download_intel_lab_fetches_data_and_locations(tmp_path, server, payload) -> None:
    url, served = server
    served.files["/labdata/data.txt.gz"] = payload
    served.files["/labdata/mote_locs.txt"] = b"1 21.5 23\n2 24.5 20\n"
    files = download_intel_lab(
        tmp_path / "data", data_url=f"{url}/labdata/data.txt.gz", locs_url=f"{url}/labdata/mote_locs.txt"
    )
    assert read_mote_locations(files.locations)["device_id"].to_list() == ["mote-01", "mote-02"]
    result = parse_files(resolve_source(files.data.parent))
    assert (result.lines, result.rows.height, result.rejects.height) == (20000, 20000, 0)
    assert checksum_path(files.locations).is_file()


def test_download_adopts_an_intact_file_already_in_place(tmp_path, payload) -> None:
    dest = tmp_path / "data.txt.gz"
    dest.write_bytes(payload)  # e.g. copied by hand from another machine
    assert download_file("http://127.0.0.1:1/data.txt.gz", dest, attempts=1) == dest
    assert checksum_path(dest).read_text().split()[0] == hashlib.sha256(payload).hexdigest()
