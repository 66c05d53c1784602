"""Exports of anomalous readings: ``GET /api/anomalies.csv`` (the filters and cursor of
``/api/anomalies``, the next cursor in ``X-Next-Cursor`` and ``Link``) and ``flead anomalies export``
(CSV and Parquet through the API), over real HTTP against the real MongoDB server: rows and columns
round-trip, filters apply, awkward text is quoted, an empty range is a header alone."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from flead.exports import BASE_COLUMNS, anomaly_columns
from flead.schema import EPOCH
from flead_cli import app
from flead_dagster_tests.helpers.api import ApiHarness, all_items, api_harness

START = datetime(2004, 3, 1, tzinfo=UTC)
FEATURES = ("temperature", "humidity", "light", "voltage")
AWKWARD = 'trainer, "quoted"\nsecond line'


def anomaly(i: int) -> dict:
    device = f"mote-{i % 3}"
    ts = START + timedelta(minutes=i, microseconds=i)
    return {
        "_id": f"{device}:{ts.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
        "device_id": device,
        "ts": ts,
        "ts_us": (ts - EPOCH) // timedelta(microseconds=1),
        "score": 1.5 + i,
        "threshold": 1.0,
        "reason": "out_of_range" if i % 5 == 0 else "model",
        "values": {"temperature": 20.0 + i / 8, "humidity": 40.0, "light": None, "voltage": 2.5},
        "model_version": i % 2,
        "model_lineage": "v0",
        "partition": i % 3,
        "offset": 100 + i,
        "trainer": AWKWARD if i == 7 else "t:1",
        "detected_at": START + timedelta(days=1),
    }


@pytest.fixture(scope="module")
def api(services_env) -> Iterator[ApiHarness]:
    with api_harness() as harness:
        harness.db[harness.settings.collection_anomalies].insert_many([anomaly(i) for i in range(25)])
        yield harness


def csv_pages(api: ApiHarness, **params) -> tuple[list[dict], list[list[str]], int]:
    """Every row of /api/anomalies.csv, following X-Next-Cursor (and checking Link names the same
    page); every page's header row; the number of pages."""
    rows, headers, pages, after = [], [], 0, None
    while True:
        query = {**params, **({"after": after} if after else {})}
        response = api.http.get("/api/anomalies.csv", params=query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        pages += 1
        reader = csv.DictReader(io.StringIO(response.text, newline=""))
        rows += list(reader)
        headers.append(reader.fieldnames)
        after = response.headers.get("X-Next-Cursor")
        if after is None:
            assert "Link" not in response.headers
            return rows, headers, pages
        link = response.headers["Link"]
        assert link.endswith('>; rel="next"') and f"after={after}" in link


def expected_rows(items: list[dict]) -> list[dict]:
    """The JSON items as CSV text: what a CSV row of each must read."""
    rows = []
    for item in items:
        row = {c: "" if item.get(c) is None else str(item[c]) for c in BASE_COLUMNS}
        values = item["values"]
        row.update({f"value_{f}": "" if values[f] is None else str(values[f]) for f in FEATURES})
        rows.append(row)
    return rows


def test_csv_pages_hold_what_the_json_pages_hold(api):
    items = all_items(api.http, "/api/anomalies", limit=7)
    rows, headers, pages = csv_pages(api, limit=7)
    assert pages == 4 and len(rows) == 25
    assert all(h == anomaly_columns(FEATURES) for h in headers)  # every page has the header row
    assert rows == expected_rows(items)  # same order, same values, as text
    assert rows[0]["ts"] == "2004-03-01T00:24:00.000024Z"  # newest first, to the microsecond
    quoted = next(r for r in rows if r["id"].endswith("00:07:00.000007Z"))
    assert quoted["trainer"] == AWKWARD  # commas, quotes and a newline survive the quoting
    assert quoted["value_light"] == ""  # None is an empty field


def test_csv_filters_and_an_empty_range(api):
    since, until = "2004-03-01T00:05:00Z", "2004-03-01T00:15:00Z"
    rows, _, _ = csv_pages(api, device="mote-1", since=since, until=until, limit=2)
    items = all_items(api.http, "/api/anomalies", device="mote-1", since=since, until=until)
    assert rows == expected_rows(items) and {r["device_id"] for r in rows} == {"mote-1"}
    assert [r["offset"] for r in rows] == ["113", "110", "107"]
    response = api.http.get("/api/anomalies.csv", params={"since": "2010-01-01T00:00:00Z"})
    assert response.status_code == 200 and "X-Next-Cursor" not in response.headers
    assert response.text == ",".join(anomaly_columns(FEATURES)) + "\r\n"  # the header alone
    for bad in ({"after": "garbage"}, {"limit": 0}, {"device": "no spaces"}):
        assert api.http.get("/api/anomalies.csv", params=bad).status_code in (400, 422)


def run_export(api: ApiHarness, *args: str):
    return CliRunner().invoke(app, ["anomalies", "export", *args], env={"FLEAD_API_URL": api.server.url})


def test_cli_exports_csv_and_parquet(api, tmp_path):
    items = all_items(api.http, "/api/anomalies")
    out = tmp_path / "all.csv"
    result = run_export(api, "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 25 anomalous readings" in result.output
    with out.open(newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == expected_rows(items)

    parquet = tmp_path / "sub" / "mote-2.parquet"
    result = run_export(
        api, "--format", "parquet", "--out", str(parquet), "--device", "mote-2",
        "--start", "2004-03-01T00:10:00+00:00", "--end", "2004-03-01T00:20:00",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(parquet)
    assert frame.columns == anomaly_columns(FEATURES)
    assert frame["offset"].to_list() == [117, 114, 111]
    assert frame["device_id"].unique().to_list() == ["mote-2"]
    assert frame.schema["ts"] == pl.Datetime("us", "UTC") and frame.schema["score"] == pl.Float64
    assert frame["ts"][0] == START + timedelta(minutes=17, microseconds=17)
    assert frame["value_temperature"][0] == 20.0 + 17 / 8 and frame["value_light"][0] is None

    empty = tmp_path / "empty.parquet"
    result = run_export(api, "--format", "parquet", "--out", str(empty), "--start", "2010-01-01")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(empty).shape == (0, len(anomaly_columns(FEATURES)))
    empty_csv = tmp_path / "empty.csv"
    assert run_export(api, "--out", str(empty_csv), "--start", "2010-01-01").exit_code == 0
    assert empty_csv.read_bytes() == (",".join(anomaly_columns(FEATURES)) + "\r\n").encode()


def test_cli_export_errors(api, tmp_path):
    result = run_export(api, "--out", str(tmp_path / "x.csv"), "--start", "yesterday")
    assert result.exit_code == 2 and "not an ISO 8601 time" in result.output
    result = run_export(api, "--out", str(tmp_path / "x.csv"), "--device", "no spaces")
    assert result.exit_code == 1 and "HTTP 422" in result.output
    assert not (tmp_path / "x.csv").exists()  # nothing partial left behind
