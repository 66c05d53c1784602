"""The per-device view: the core assembly (`flead.reporting.device_view`) over a tiny lake, hand-made
batch evaluations and the stream trainer's anomaly and event documents in the real MongoDB server;
the page ``/devices/{id}`` in real headless Chromium (a trace per feature, events shaded as Plotly
shapes, rule alarms marked apart; screenshot artifacts/device.png); its 404 / 422; and ``flead plot``
writing a valid PNG (exit 0), a device without data (exit 1) and bad dates (exit 2)."""

from __future__ import annotations

from datetime import UTC, datetime

import matplotlib.image
import polars as pl
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import CliRunner

from flead.datasets.lake import write_days
from flead.reporting.device_view import (
    DeviceViewError,
    NoDeviceData,
    build_device_view,
    parse_range,
)
from flead.schema import EPOCH
from flead_cli import app
from flead_dagster_tests.helpers.api import api_harness
from flead_dagster_tests.helpers.browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM, browser  # noqa: F401
from flead_dagster_tests.helpers.events import event
from flead_dagster_tests.helpers.reports import (
    NEW,
    OLD,
    PNG_MAGIC,
    evaluation_rows,
    lake_rows,
    write_evaluation,
)

WIDE = {"COLUMNS": "200"}
FEATURES = ["temperature", "humidity", "light", "voltage"]
DYING = [datetime(2004, 3, 2, h, 7, tzinfo=UTC) for h in range(14, 24, 2)]  # mote-02's rule alarms
MODEL_ALARMS = [datetime(2004, 3, 1, h, 7, tzinfo=UTC) for h in (4, 6, 8)] + [
    datetime(2004, 3, 2, 2, 7, tzinfo=UTC)
]


def anomaly(device: str, ts: datetime, *, rule: bool, version: int) -> dict:
    us = int((ts - EPOCH).total_seconds() * 1_000_000)
    return {
        "_id": f"{device}:{ts:%Y-%m-%dT%H:%M:%S.%f}Z",
        "device_id": device,
        "ts": ts,
        "ts_us": us,
        "score": 1.5 if rule else 4.0,
        "threshold": 2.0,
        "reason": "out_of_range" if rule else "model",
        "values": {"temperature": 122.15 if rule else 21.0},
        "model_version": version,
    }


def event_doc(device: str, start: datetime, end: datetime, *, rule: int, version: int) -> dict:
    """A full event document (as `test_api_events.event` makes) moved to start..end."""
    doc = event(device, 0, rule=rule)
    text = f"{start:%Y-%m-%dT%H:%M:%S.%f}Z"
    doc.update(
        _id=f"{device}:{text}",
        start=start,
        end=end,
        start_text=text,
        start_us=int((start - EPOCH).total_seconds() * 1_000_000),
        end_us=int((end - EPOCH).total_seconds() * 1_000_000),
        duration_s=(end - start).total_seconds(),
        peak_ts=start,
        model_version=version,
    )
    return doc


@pytest.fixture(scope="module")
def fleet(services_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("device-view")
    lake, evaluations = root / "lake", root / "evaluations"
    rows = lake_rows()
    write_days(rows, lake)
    for version in (OLD, NEW):
        write_evaluation(evaluation_rows(rows, version), evaluations, version)
    with api_harness(lake_dir=lake, evaluations_dir=evaluations) as harness:
        docs = [anomaly("mote-02", ts, rule=False, version=1 if ts.day == 1 else 2) for ts in MODEL_ALARMS]
        docs += [anomaly("mote-02", ts, rule=True, version=2) for ts in DYING]
        docs += [anomaly("mote-01", datetime(2004, 3, 1, 10, 7, tzinfo=UTC), rule=False, version=1)]
        harness.db[harness.settings.collection_anomalies].insert_many(docs)
        harness.db[harness.settings.collection_events].insert_many(
            [
                event_doc("mote-02", MODEL_ALARMS[0], MODEL_ALARMS[2], rule=0, version=1),
                event_doc("mote-02", DYING[0], DYING[-1], rule=5, version=2),
            ]
        )
        harness.db[harness.settings.collection_devices].insert_many(
            [
                {"_id": d, "device_id": d, "readings": 36, "updated_at": datetime.now(UTC)}
                for d in ("mote-01", "mote-02")
            ]
        )
        yield {"lake": lake, "evaluations": evaluations, "api": harness, "root": root}


def view(fleet, device: str, **kwargs):
    api = fleet["api"]
    return build_device_view(
        device,
        lake_dir=fleet["lake"],
        evaluations_dir=fleet["evaluations"],
        db=api.db,
        anomalies_collection=api.settings.collection_anomalies,
        events_collection=api.settings.collection_events,
        **kwargs,
    )


# ------------------------------------------------------------------------------------ the core


def test_view_joins_the_lake_the_newest_evaluation_and_the_trainer_documents(fleet):
    v = view(fleet, "mote-02")
    assert v.features == tuple(FEATURES)
    assert v.readings_total == 36 and v.stride == 1  # 3 days x 12
    assert v.evaluation_version == NEW  # 10 beats 9 by number
    scored = v.readings.filter(pl.col("score").is_not_null())
    assert scored.height == 24  # days 1-2 evaluated, day 3 not
    assert v.readings["ts"].dtype == pl.Datetime("us", "UTC")
    assert v.alarms.height == 9 and int(v.alarms["rule"].sum()) == 5
    assert set(v.alarms.filter(pl.col("rule"))["reason"]) == {"out_of_range"}
    assert [e["rule"] for e in v.events] == [False, True]
    assert v.adoptions == [(MODEL_ALARMS[0], 1), (MODEL_ALARMS[3], 2)]


def test_view_is_cut_to_the_range_and_thinned(fleet):
    day2 = view(
        fleet, "mote-02", start=datetime(2004, 3, 2, tzinfo=UTC), end=datetime(2004, 3, 3, tzinfo=UTC)
    )
    assert day2.readings_total == 12 and day2.alarms.height == 6 and len(day2.events) == 1
    assert day2.readings["ts"].dt.date().unique().to_list() == [datetime(2004, 3, 2).date()]
    thin = view(fleet, "mote-02", max_points=10)
    assert thin.stride == 4 and thin.readings.height == 9 and thin.readings_total == 36
    assert any("every 4th of 36 readings" in note for note in thin.notes)


def test_a_device_without_evaluation_says_scores_come_from_alarms_only(fleet):
    v = view(fleet, "mote-04")
    assert v.evaluation_version is None and v.readings_total == 36 and "score" not in v.readings.columns
    assert any("no batch evaluation" in note for note in v.notes)
    assert v.score_source == "none"


def test_unknown_device_and_bad_ranges_are_errors(fleet):
    with pytest.raises(NoDeviceData, match="mote-77"):
        view(fleet, "mote-77")
    with pytest.raises(NoDeviceData):  # known device, nothing in the range
        view(fleet, "mote-02", start=datetime(2005, 1, 1, tzinfo=UTC))
    assert parse_range("2004-03-01", "2004-03-01") == (
        datetime(2004, 3, 1, tzinfo=UTC),
        datetime(2004, 3, 2, tzinfo=UTC),  # a date as the end: the whole day
    )
    assert parse_range("2004-03-01T12:00:00Z", None)[0] == datetime(2004, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(DeviceViewError, match="not an ISO 8601"):
        parse_range("yesterday", None)
    with pytest.raises(DeviceViewError, match="not before"):
        parse_range("2004-03-03", "2004-03-01")


# ------------------------------------------------------------------------------------ the page


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs chromium and chromium-driver")
def test_device_page_renders_features_events_and_rule_alarms_in_chromium(fleet, browser):  # noqa: F811
    api = fleet["api"]
    browser.get(f"{api.server.url}/")
    link = WebDriverWait(browser, 30).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, '#devices-table a[href="/devices/mote-02"]')
    )[0]
    link.click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#device-chart .main-svg"))
    assert browser.current_url.endswith("/devices/mote-02")
    traces = browser.execute_script(
        "return document.getElementById('device-chart').data.map(t => ({name: t.name, points: t.x.length}))"
    )
    assert traces == [
        *({"name": f, "points": 36} for f in FEATURES),
        {"name": "score", "points": 36},
        {"name": "threshold", "points": 36},
        {"name": "model alarms", "points": 4},
        {"name": "rule alarms", "points": 5},
    ]
    shapes = browser.execute_script("return document.getElementById('device-chart').layout.shapes")
    rects = [s for s in shapes if s["type"] == "rect"]
    assert [s["name"] for s in rects] == ["event model", "event model+rule"]
    assert rects[0]["fillcolor"] != rects[1]["fillcolor"]
    assert [s["name"] for s in shapes if s["type"] == "line"] == ["model version 1", "model version 2"]
    # Plotly drew them: the event rectangles and the rule alarms' markers are in the SVG
    assert len(browser.find_elements(By.CSS_SELECTOR, "#device-chart .shapelayer path")) >= 4
    rule_points = browser.execute_script(
        "var gd = document.getElementById('device-chart');"
        "var i = gd.data.findIndex(t => t.name === 'rule alarms');"
        "return gd.querySelectorAll('.scatterlayer .trace')[i].querySelectorAll('.point').length"
    )
    assert rule_points == 5
    notes = browser.find_element(By.ID, "notes").text
    assert f"batch evaluation of global model version {NEW}" in notes
    rows = browser.find_elements(By.CSS_SELECTOR, "#device-alarms-table tbody tr.anomaly-rule")
    assert len(rows) == 5 and "out_of_range" in rows[0].text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#device-events-table tbody tr")) == 2
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "device.png"))


def test_device_page_errors(fleet):
    http = fleet["api"].http
    ok = http.get("/devices/mote-02", params={"start": "2004-03-02", "end": "2004-03-02"})
    assert ok.status_code == 200 and "12 readings between 2004-03-02 00:00:00 and 2004-03-03" in ok.text
    missing = http.get("/devices/mote-77")
    assert missing.status_code == 404 and "mote-77" in missing.json()["error"]
    assert http.get("/devices/-bad").status_code == 422
    bad = http.get("/devices/mote-02", params={"start": "soon"})
    assert bad.status_code == 422 and "ISO 8601" in bad.json()["error"]
    backwards = http.get("/devices/mote-02", params={"start": "2004-03-03", "end": "2004-03-01"})
    assert backwards.status_code == 422 and "not before" in backwards.json()["error"]


# ------------------------------------------------------------------------------------ flead plot


def test_flead_plot_writes_a_png_and_refuses_bad_input(fleet, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FLEAD_LAKE_DIR", str(fleet["lake"]))
    monkeypatch.setenv("FLEAD_EVALUATIONS_DIR", str(fleet["evaluations"]))
    monkeypatch.setenv("FLEAD_MONGO_DB", fleet["api"].settings.mongo_db)
    monkeypatch.setenv("FLEAD_REPORTS_DIR", str(tmp_path / "reports"))
    runner, env = CliRunner(), WIDE

    out = tmp_path / "plots" / "mote-02.png"
    result = runner.invoke(app, ["plot", "--device", "mote-02", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "36 readings, 9 alarms (5 rule), 2 events, 2 model versions" in result.output
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and 20_000 < len(data) < 5_000_000
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 600 and image.shape[1] == 1200
    assert image.std() > 0.05  # not a blank canvas

    result = runner.invoke(
        app, ["plot", "--device", "mote-02", "--start", "2004-03-02", "--end", "2004-03-02"], env=env
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "device-mote-02.png").read_bytes().startswith(PNG_MAGIC)

    result = runner.invoke(app, ["plot", "--device", "mote-77", "--out", str(tmp_path / "x.png")], env=env)
    assert result.exit_code == 1 and "no readings, alarms or events for device 'mote-77'" in result.output
    assert not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["plot", "--device", "mote-02", "--start", "03/02/2004"], env=env)
    assert result.exit_code == 2 and "not an ISO 8601" in result.output
    result = runner.invoke(
        app, ["plot", "--device", "mote-02", "--start", "2004-03-03", "--end", "2004-03-01"], env=env
    )
    assert result.exit_code == 2 and "not before" in result.output
    result = runner.invoke(app, ["plot", "--device", "bad id"], env=env)
    assert result.exit_code == 2


def test_flead_plot_without_mongodb_draws_the_lake_and_evaluation(fleet, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEAD_LAKE_DIR", str(fleet["lake"]))
    monkeypatch.setenv("FLEAD_EVALUATIONS_DIR", str(fleet["evaluations"]))
    monkeypatch.setenv("FLEAD_MONGO_URI", "mongodb://127.0.0.1:1/")  # nothing listens there
    out = tmp_path / "mote-01.png"
    result = CliRunner().invoke(
        app, ["plot", "--device", "mote-01", "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "MongoDB unreachable" in result.output and out.read_bytes().startswith(PNG_MAGIC)
