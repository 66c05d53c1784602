"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, through selenium):
both Plotly charts render with data, the tables list the devices (with their judged and unjudged
readings), the latest events (rule alarms told from the model's) and the latest anomalies, and a
screenshot is saved to artifacts/dashboard.png. The interactive API pages, Swagger UI at /docs and
ReDoc at /redoc, render every operation (screenshots artifacts/docs.png, artifacts/redoc.png).

The browser resolves no host name (``--host-resolver-rules``): only this API, at its IP address, can
be reached, so a page that needed a CDN would fail here even on a machine with internet access."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from flead_dagster_tests.helpers.api import api_harness
from flead_dagster_tests.helpers.browser import (
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    browser,  # noqa: F401 (fixture)
)
from flead_dagster_tests.helpers.events import event

DEVICES = ("mote-01", "mote-02", "mote-03")
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (`make test` installs them)",
)


@pytest.fixture(scope="module")
def api(services_env):
    with api_harness() as harness:
        harness.configure(auto_aggregate_threshold=1000)
        trainer = harness.token("trainer")
        for round_ in range(4):
            for i, device in enumerate(DEVICES):
                update = harness.update(
                    device, seed=round_ * 3 + i, n_samples=100 + i, loss=1.0 / (round_ + 1)
                )
                assert harness.submit(update, trainer).status_code == 202
            assert harness.aggregate()["created"]
        start = datetime(2004, 3, 1, tzinfo=UTC)
        harness.db[harness.settings.collection_anomalies].insert_many(
            [
                {
                    "_id": f"{device}:{i}",
                    "device_id": device,
                    "ts": start + timedelta(hours=7 * i + d),
                    "score": 3.0 + i + d,
                    "threshold": 2.5,
                    # one rule alarm (a physical limit broken) among the model's
                    "reason": "out_of_range" if (d, i) == (2, 5) else "model",
                    "values": {"temperature": 122.0 if (d, i) == (2, 5) else 20.5},
                }
                for d, device in enumerate(DEVICES)
                for i in range(6 + 2 * d)
            ]
        )
        now = datetime.now(UTC)
        harness.db[harness.settings.collection_devices].insert_many(
            [
                {
                    "_id": device,
                    "device_id": device,
                    "readings": 5000 + d,
                    "judged": 4000 + d,
                    "unjudged": 1000,
                    "unjudged_reasons": {"no calibration yet": 1000},
                    "threshold_source": "fleet",
                    "last_seen": start,
                    "updated_at": now,
                }
                for d, device in enumerate(DEVICES)
            ]
        )
        harness.db[harness.settings.collection_events].insert_many(
            [event("mote-01", 3, minutes=90, peak=6.5), event("mote-02", 5, minutes=20, peak=2.0, rule=4)]
        )
        yield harness


def test_dashboard_renders_charts_and_tables_in_chromium(api, browser):  # noqa: F811 (fixture)
    browser.get(f"{api.server.url}/")
    wait = WebDriverWait(browser, 30)
    for chart in ("versions-chart", "anomalies-chart"):
        wait.until(lambda b, chart=chart: b.find_elements(By.CSS_SELECTOR, f"#{chart} .main-svg"))

    traces = browser.execute_script(
        "return ['versions-chart', 'anomalies-chart'].map(id => document.getElementById(id).data.map("
        "t => ({name: t.name, points: t.x.length})))"
    )
    versions, anomalies = traces
    assert {"name": "version", "points": 5} in versions  # versions 0..4
    assert {"name": "mean training loss", "points": 4} in versions
    assert anomalies == [{"name": d, "points": 6 + 2 * i} for i, d in enumerate(DEVICES)]
    # Plotly drew the points, not only the axes.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#anomalies-chart .scatterlayer .point")) == 6 + 8 + 10

    rows = browser.find_elements(By.CSS_SELECTOR, "#devices-table tbody tr")
    assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == list(DEVICES)
    assert "active" in rows[0].text and "5000" in rows[0].text
    latest = browser.find_elements(By.CSS_SELECTOR, "#anomalies-table tbody tr")
    assert len(latest) == 20
    assert latest[0].text.startswith("2004-03-03 17:00:00 mote-03 model")
    rule = browser.find_elements(By.CSS_SELECTOR, "#anomalies-table tbody tr.anomaly-rule")
    assert [r.text for r in rule] == ["2004-03-02 13:00:00 mote-03 out_of_range 10 2.5 temperature 122"]
    assert "version 4" in browser.find_element(By.ID, "subtitle").text

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []  # e.g. plotly.min.js failed to load
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_dashboard_shows_the_latest_events_and_judged_counts(api, browser):  # noqa: F811 (fixture)
    browser.get(f"{api.server.url}/")
    rows = WebDriverWait(browser, 30).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#events-table tbody tr")
    )
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert cells == [
        [
            "mote-02",
            "2004-03-01 05:00:00",
            "2004-03-01 05:20:00",
            "20.0 min",
            "2",
            "model+rule critical",
            "temperature 80%, humidity 20%",
        ],
        [
            "mote-01",
            "2004-03-01 03:00:00",
            "2004-03-01 04:30:00",
            "1.5 h",
            "6.5",
            "model minor",
            "temperature 80%, humidity 20%",
        ],
    ]
    assert rows[0].get_attribute("class") == "event-rule" and rows[1].get_attribute("class") == "event-model"
    rule, model = (row.find_element(By.CSS_SELECTOR, ".reason") for row in rows)
    assert rule.value_of_css_property("background-color") != model.value_of_css_property("background-color")
    device = browser.find_elements(By.CSS_SELECTOR, "#devices-table tbody tr")[0]
    assert "4000 1000 fleet" in device.text
    unjudged = device.find_elements(By.TAG_NAME, "td")[8]
    assert unjudged.get_attribute("title") == "no calibration yet: 1000"


def operations(api) -> set[tuple[str, str]]:
    paths = api.http.get("/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, methods in paths.items() for method in methods}


def at_least(browser, selector: str, n: int) -> list:  # noqa: F811 (fixture)
    """The elements ``selector`` finds, once there are ``n`` of them (the page drew them)."""
    return WebDriverWait(browser, 60).until(
        lambda b: found if len(found := b.find_elements(By.CSS_SELECTOR, selector)) >= n else None
    )


def loaded_from_elsewhere(browser, url: str) -> list[str]:  # noqa: F811 (fixture)
    """Resources the page loaded (or tried to) from anywhere but this API."""
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [name for name in names if not name.startswith(url)]


def test_swagger_ui_renders_every_operation_with_no_cdn(api, browser):  # noqa: F811 (fixture)
    wanted = operations(api)
    browser.get(f"{api.server.url}/docs")
    blocks = at_least(browser, ".opblock", len(wanted))
    shown = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in blocks
    }
    assert shown == wanted
    assert "FLEAD global model API" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    # an operation opens with its typed response: the page schema of /api/anomalies
    anomalies = next(b for b in blocks if "/api/anomalies" in b.text)
    anomalies.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    example = WebDriverWait(browser, 30).until(
        lambda b: anomalies.find_elements(By.CSS_SELECTOR, ".responses-table .microlight")
    )[0]
    assert all(f'"{field}"' in example.text for field in ("items", "limit", "next", "ts", "score"))
    assert loaded_from_elsewhere(browser, api.server.url) == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "docs.png"))


def test_redoc_renders_every_operation_with_no_cdn(api, browser):  # noqa: F811 (fixture)
    wanted = operations(api)
    browser.get(f"{api.server.url}/redoc")
    sections = at_least(browser, '[data-section-id*="/operation/"]', len(wanted))
    assert len(sections) == len(wanted)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "FLEAD global model API" in text and "/api/anomalies" in text
    # The one thing ReDoc asks of the internet is the logo of its "API docs by Redocly" link, an image
    # it hides when it does not load (as here): nothing the page needs.
    assert set(loaded_from_elsewhere(browser, api.server.url)) <= {REDOC_LOGO}
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and REDOC_LOGO not in entry["message"]
    ]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "redoc.png"))
