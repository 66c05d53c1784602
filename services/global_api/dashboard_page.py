"""The dashboard at ``/``: server-rendered HTML with two Plotly charts (global versions over time with
their metrics and their privacy epsilon; an anomaly timeline per device) and three tables (devices, with
how many of their readings were judged and against whose calibration, and the privacy each one spent;
the latest events, rule alarms marked apart from the model's; the latest anomalous readings). With
differential privacy off, every epsilon reads "no DP".

Chart data is embedded as JSON in the page and drawn by ``/static/dashboard.js`` with the
``plotly.min.js`` of the installed plotly package: the page needs no network beyond this API.
"""

from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

from services.global_api.event_pages import AnomalyEvent, EventFilter
from services.global_api.monitoring import Anomaly, AnomalyFilter
from services.global_api.service import GlobalModelService

MAX_VERSIONS = 500
MAX_ANOMALIES = 1000  # the newest, for the timeline (one bounded page: see anomaly_pages)
LATEST_ANOMALIES = 20
LATEST_EVENTS = 20
REFRESH_SECONDS = 30


def render_dashboard(service: GlobalModelService) -> str:
    versions = [v.summary() for v in reversed(service.registry.history(limit=MAX_VERSIONS))]
    anomalies = service.monitoring.anomalies(AnomalyFilter(), limit=MAX_ANOMALIES).items
    devices, anomalies_as_of = service.monitoring.devices()
    pending = service.updates.pending_count()
    events = service.events.page(EventFilter(), limit=LATEST_EVENTS).items
    latest = versions[-1] if versions else None
    subtitle = (
        f"global model version {latest['version']} ({latest['strategy'] or 'initial'}, "
        f"{privacy_text(latest['privacy'])}), "
        f"{pending} pending updates, {len(devices)} devices, "
        f"anomaly counts as of {anomalies_as_of:%Y-%m-%d %H:%M:%S} UTC"
        if latest
        else "no global model version yet"
    )
    return PAGE.format(
        refresh=REFRESH_SECONDS,
        subtitle=escape(subtitle),
        versions_json=_script_json(versions_figure(versions)),
        anomalies_json=_script_json(anomaly_timeline_figure(anomalies)),
        devices_table=devices_table(devices),
        events_table=events_table(events),
        anomalies_table=anomalies_table(anomalies[:LATEST_ANOMALIES]),
    )


def versions_figure(versions: list[dict]) -> dict:
    times = [v["created_at"] for v in versions]
    hover = [
        f"version {v['version']}<br>{v['strategy'] or 'initial'}, {v['n_updates']} updates "
        f"from {v['n_devices']} devices<br>{privacy_text(v['privacy'])}"
        for v in versions
    ]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "version",
            "x": times,
            "y": [v["version"] for v in versions],
            "text": hover,
            "hovertemplate": "%{text}<extra></extra>",
            "line": {"shape": "hv"},
        }
    ]
    losses = _series(versions, lambda v: v["metrics"].get("mean_loss"))
    if losses:
        data.append(_trace("mean training loss", losses, "y2", mode="markers"))
    layout = {
        "margin": {"t": 10, "r": 60, "b": 40, "l": 50},
        "xaxis": {"title": {"text": "created at (UTC)"}},
        "yaxis": {"title": {"text": "version"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "mean loss"}, "overlaying": "y", "side": "right", "showgrid": False},
        "legend": {"orientation": "h", "y": 1.12},
    }
    epsilons = _series(versions, lambda v: v["privacy"].get("epsilon"))
    if epsilons:  # a third axis, on the left of the loss's
        dotted = {"shape": "hv", "dash": "dot"}
        data.append(_trace("privacy epsilon", epsilons, "y3", mode="lines+markers", line=dotted))
        layout["xaxis"]["domain"] = [0.0, 0.88]
        layout["yaxis3"] = {
            "title": {"text": "epsilon"},
            "overlaying": "y",
            "side": "right",
            "anchor": "free",
            "position": 1.0,
            "showgrid": False,
            "rangemode": "tozero",
        }
    return {"data": data, "layout": layout}


def _series(versions: list[dict], value) -> list[tuple]:
    """(created_at, value) of the versions that have the value."""
    points = [(v["created_at"], value(v)) for v in versions]
    return [(t, y) for t, y in points if y is not None]


def _trace(name: str, points: list[tuple], yaxis: str, **style) -> dict:
    return {
        "type": "scatter",
        "name": name,
        "x": [t for t, _ in points],
        "y": [y for _, y in points],
        "yaxis": yaxis,
        **style,
    }


def privacy_text(privacy: dict) -> str:
    """A version's privacy in words: ``local DP, epsilon 3.21 (delta 1e-05)`` or ``no DP``."""
    mode = privacy.get("mode", "off")
    if mode == "off":
        return "no DP"
    if privacy.get("epsilon") is None:
        return f"{mode} DP, no epsilon bound ({privacy.get('note') or 'an ancestor was made without DP'})"
    return f"{mode} DP, epsilon {privacy['epsilon']:.3g} (delta {privacy.get('delta'):g})"


def anomaly_timeline_figure(anomalies: list[Anomaly]) -> dict:
    by_device: dict[str, list[Anomaly]] = {}
    for event in anomalies:
        by_device.setdefault(event.device_id, []).append(event)
    data = []
    for device_id in sorted(by_device):
        events = sorted(by_device[device_id], key=lambda e: e.ts)
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": device_id,
                "x": [e.ts.isoformat() for e in events],
                "y": [device_id] * len(events),
                "customdata": [[e.score, e.threshold] for e in events],
                "hovertemplate": "%{y} at %{x}<br>score %{customdata[0]:.3g} "
                "(threshold %{customdata[1]:.3g})<extra></extra>",
                "marker": {"size": 9, "opacity": 0.8},
            }
        )
    layout = {
        "margin": {"t": 10, "r": 20, "b": 40, "l": 90},
        "xaxis": {"title": {"text": "event time (UTC)"}},
        "yaxis": {"type": "category", "title": {"text": "device"}},
        "showlegend": False,
    }
    if not data:
        layout["annotations"] = [
            {"text": "no anomalies recorded yet", "showarrow": False, "xref": "paper", "yref": "paper"}
        ]
    return {"data": data, "layout": layout}


def devices_table(devices: list[dict]) -> str:
    if not devices:
        return '<p class="empty">no devices have reported yet</p>'
    columns = (
        "device",
        "status",
        "last reading (UTC)",
        "last contact (UTC)",
        "readings",
        "updates",
        "samples federated",
        "judged",
        "unjudged",
        "threshold",
        "anomalies",
        "last anomaly (UTC)",
        "privacy epsilon",
    )
    rows = "".join(
        "<tr>"
        f'<td><a href="/devices/{quote(d["device_id"], safe="")}">{escape(d["device_id"])}</a></td>'
        f'<td><span class="status status-{escape(d["status"])}">{escape(d["status"])}</span></td>'
        f"<td>{_when(d['last_seen'])}</td>"
        f"<td>{_when(d['last_contact'])}</td>"
        f'<td class="num">{_number(d["readings"])}</td>'
        f'<td class="num">{_number(d["n_updates"])}</td>'
        f'<td class="num">{_number(d["n_samples"])}</td>'
        f'<td class="num">{_number(d["stats"].get("judged"))}</td>'
        f"{_unjudged_cell(d['stats'])}"
        f"<td>{escape(str(d['stats'].get('threshold_source') or '-'))}</td>"
        f'<td class="num">{_number(d["anomalies"]["count"])}</td>'
        f"<td>{_when(d['anomalies']['last_ts'])}</td>"
        f"{_epsilon_cell(d['privacy'])}"
        "</tr>"
        for d in devices
    )
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f'<table id="devices-table"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _epsilon_cell(privacy: dict) -> str:
    """The device's epsilon ("no DP" when DP is off), its releases and delta in the cell's title."""
    if privacy["mode"] == "off" or privacy["epsilon"] is None:
        return '<td class="epsilon">no DP</td>'
    title = f"{privacy['releases']} releases, delta {privacy['delta']:g}"
    if privacy["budget"] is not None:
        title += f", budget {privacy['budget']:g}"
    exhausted = ' <span class="status status-idle">budget spent</span>' if privacy["budget_exhausted"] else ""
    return f'<td class="num epsilon" title="{escape(title)}">{privacy["epsilon"]:.3g}{exhausted}</td>'


def _unjudged_cell(stats: dict) -> str:
    """Unjudged readings, with why in the cell's title (e.g. "no calibration yet")."""
    reasons = stats.get("unjudged_reasons") or {}
    why = ", ".join(f"{reason}: {n}" for reason, n in reasons.items() if n)
    return f'<td class="num" title="{escape(why)}">{_number(stats.get("unjudged"))}</td>'


def events_table(events: list[AnomalyEvent]) -> str:
    if not events:
        return '<p class="empty">no anomaly events recorded yet</p>'
    rows = []
    for e in events:
        kind = "rule" if e.rule_alarms else "model"
        features = ", ".join(f"{f.feature} {f.share:.0%}" for f in e.top_features) or "-"
        state = " (open)" if e.open else ""
        rows.append(
            f'<tr class="event-{kind}">'
            f"<td>{escape(e.device_id)}</td>"
            f"<td>{_when(e.start.isoformat())}</td>"
            f"<td>{_when(e.end.isoformat())}{state}</td>"
            f'<td class="num">{_duration(e.duration_s)}</td>'
            f'<td class="num">{_number(e.peak_severity)}</td>'
            f'<td><span class="reason reason-{kind}">{escape(e.reason)}</span> '
            f"{escape(e.severity_class)}</td>"
            f"<td>{escape(features)}</td>"
            "</tr>"
        )
    columns = ("device", "start (UTC)", "end (UTC)", "duration", "peak severity", "reason", "top features")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f'<table id="events-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def anomalies_table(anomalies: list[Anomaly]) -> str:
    if not anomalies:
        return '<p class="empty">no anomalies recorded yet</p>'
    rows = "".join(
        f'<tr class="anomaly-{_kind(a.reason)}">'
        f"<td>{_when(a.ts.isoformat())}</td>"
        f"<td>{escape(a.device_id)}</td>"
        f'<td><span class="reason reason-{_kind(a.reason)}">{escape(a.reason or "model")}</span></td>'
        f'<td class="num">{_number(a.score)}</td>'
        f'<td class="num">{_number(a.threshold)}</td>'
        f"<td>{escape(_values(a.values))}</td>"
        "</tr>"
        for a in anomalies
    )
    columns = ("time (UTC)", "device", "reason", "score", "threshold", "values")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f'<table id="anomalies-table"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _when(value: object) -> str:
    """An ISO 8601 UTC time as ``2004-03-01 12:30:15`` (the columns say UTC)."""
    if not isinstance(value, str) or len(value) < 19:
        return "-"
    return escape(value[:19].replace("T", " "))


def _kind(reason: str | None) -> str:
    """A rule alarm (a physical limit broken) or the model's, for the reason badge."""
    return "model" if reason in (None, "model") else "rule"


def _values(values: dict[str, float | None] | None) -> str:
    return ", ".join(f"{name} {_number(v)}" for name, v in (values or {}).items())


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>FLEAD global model</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/plotly.min.js"></script>
</head>
<body>
<header><h1>FLEAD: federated anomaly detection</h1><p id="subtitle">{subtitle}</p></header>
<main>
<section><h2>Global model versions</h2>
<div id="versions-chart" class="chart" data-figure="versions-data"></div></section>
<section><h2>Anomalies per device</h2>
<div id="anomalies-chart" class="chart" data-figure="anomalies-data"></div></section>
<section class="wide"><h2>Devices</h2>{devices_table}</section>
<section class="wide"><h2>Latest events</h2>{events_table}</section>
<section class="wide"><h2>Latest anomalies</h2>{anomalies_table}</section>
</main>
<script type="application/json" id="versions-data">{versions_json}</script>
<script type="application/json" id="anomalies-data">{anomalies_json}</script>
<script src="/static/dashboard.js"></script>
</body>
</html>
"""
