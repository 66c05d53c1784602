"""``GET /api/events`` over real HTTP against the real MongoDB server: typed items, newest start first,
cursor pages that neither skip nor repeat (ties on start included), the filters, and clear 4xx."""

from __future__ import annotations

import pytest

from flead_dagster_tests.helpers.api import api_harness
from flead_dagster_tests.helpers.events import event


@pytest.fixture(scope="module")
def api(services_env):
    with api_harness() as harness:
        docs = [event(f"mote-{d}", hour, peak=1.5 + hour % 5) for d in range(3) for hour in range(0, 40, 2)]
        docs += [event("mote-0", 100, rule=3, open_=True, peak=2.0)]
        harness.db[harness.settings.collection_events].insert_many(docs)
        yield harness


def pages(api, **params) -> list[dict]:
    items, after = [], None
    while True:
        response = api.http.get("/api/events", params={**params, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        after = body["next"]
        if after is None:
            return items


def test_events_come_newest_first_in_cursor_pages_without_gaps_or_repeats(api):
    first = api.http.get("/api/events", params={"limit": 5}).json()
    newest = first["items"][0]
    assert newest["id"] == "mote-0:2004-03-05T04:00:00.000000Z" and newest["open"] is True
    assert newest["reason"] == "model+rule" and newest["rule_alarms"] == 3
    assert newest["top_features"][0] == {"feature": "temperature", "share": 0.8}
    assert set(newest) >= {"start", "end", "duration_s", "peak_score", "peak_severity", "severity_class"}
    everything = pages(api, limit=7)  # three devices share every start: ties split across pages
    assert len(everything) == 61 and len({e["id"] for e in everything}) == 61
    order = [(e["start"], e["id"]) for e in everything]
    assert order == sorted(order, reverse=True)


def test_events_are_filtered_by_device_time_severity_and_state(api):
    assert {e["device_id"] for e in pages(api, device="mote-2")} == {"mote-2"}
    assert len(pages(api, device="mote-2")) == 20
    window = pages(api, since="2004-03-01T10:10:00Z", until="2004-03-01T14:00:00Z")
    # still going at 10:10 (the 10:00 events end at 10:30) and started before 14:00
    assert sorted({e["start"][:16] for e in window}) == ["2004-03-01T10:00", "2004-03-01T12:00"]
    assert all(e["peak_severity"] >= 5.0 for e in pages(api, min_severity=5))
    assert len(pages(api, min_severity=5)) == 12
    assert [e["id"] for e in pages(api, open="true")] == ["mote-0:2004-03-05T04:00:00.000000Z"]
    assert len(pages(api, open="false")) == 60


@pytest.mark.parametrize(
    "params",
    [
        {"after": "not-a-cursor"},
        {"limit": 0},
        {"min_severity": "inf"},
        {"device": "x" * 300},
        {"open": "maybe"},
    ],
)
def test_bad_event_queries_get_a_clear_4xx(api, params):
    response = api.http.get("/api/events", params=params)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json() or "detail" in response.json()
