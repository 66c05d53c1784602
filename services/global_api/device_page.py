"""The device page at ``/devices/{device_id}``: server-rendered HTML with one Plotly chart (a panel per
feature and one of the score and threshold; the device's events shaded as rectangle shapes, rule
alarms marked apart from the model's, global model version adoptions as dotted lines) and the tables
of its events and latest alarms. The data is `flead.reporting.device_view.DeviceView`; the page says
where its scores come from and what it thinned or capped.
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape

import polars as pl

from flead.reporting.device_view import DeviceView, range_text
from services.global_api.dashboard_page import _number, _script_json

LATEST_ALARMS = 50
RULE_COLOR, MODEL_COLOR, ADOPTION_COLOR = "#c62828", "#ef6c00", "#5e35b1"
PANEL_GAP = 0.03


def _t(moment: datetime) -> str:
    """A UTC time as Plotly reads it (no offset: the axes say UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _values(series: pl.Series) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else v for v in series.cast(pl.Float64).to_list()]


def device_figure(view: DeviceView) -> dict:
    panels = len(view.features) + 1
    height = (1.0 - PANEL_GAP * (panels - 1)) / panels
    layout: dict = {
        "margin": {"t": 30, "r": 20, "b": 40, "l": 70},
        "height": 170 * panels + 80,
        "legend": {"orientation": "h", "y": 1.04},
        "xaxis": {"type": "date", "anchor": f"y{panels}", "title": {"text": "time (UTC)"}},
        "hovermode": "closest",
    }
    axis_names = ["y" if i == 0 else f"y{i + 1}" for i in range(panels)]
    for i in range(panels):
        top = 1.0 - i * (height + PANEL_GAP)
        title = view.features[i] if i < len(view.features) else "score"
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = {
            "domain": [max(0.0, top - height), top],
            "title": {"text": title},
            "anchor": "x",
        }
    readings = view.readings
    ts = [_t(t) for t in readings["ts"].to_list()] if readings.height else []
    data = [
        {
            "type": "scatter",  # SVG: one path per trace, no WebGL needed
            "mode": "lines",
            "name": name,
            "x": ts,
            "y": _values(readings[name]) if ts else [],
            "yaxis": axis_names[i],
            "line": {"width": 1},
        }
        for i, name in enumerate(view.features)
    ]
    score_axis = axis_names[-1]
    if view.evaluation_version is not None and ts:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "score",
                "x": ts,
                "y": _values(readings["score"]),
                "yaxis": score_axis,
                "line": {"width": 1, "color": "#2e7d32"},
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "threshold",
                "x": ts,
                "y": _values(readings["threshold"]),
                "yaxis": score_axis,
                "line": {"width": 1, "dash": "dash", "color": "#455a64"},
            }
        )
    for rule, name, color, symbol in (
        (False, "model alarms", MODEL_COLOR, "circle"),
        (True, "rule alarms", RULE_COLOR, "x"),
    ):
        part = view.alarms.filter(pl.col("rule") == rule)
        y = [
            s if s is not None else t
            for s, t in zip(_values(part["score"]), _values(part["threshold"]), strict=True)
        ]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": name,
                "x": [_t(t) for t in part["ts"].to_list()],
                "y": y,
                "yaxis": score_axis,
                "text": part["reason"].to_list(),
                "customdata": _values(part["threshold"]),
                "hovertemplate": "%{text} at %{x}<br>score %{y:.3g} "
                "(threshold %{customdata:.3g})<extra></extra>",
                "marker": {"color": color, "symbol": symbol, "size": 8 if rule else 7},
            }
        )
    shapes = [
        {
            "type": "rect",
            "name": f"event {e['reason']}",
            "xref": "x",
            "yref": "paper",
            "x0": _t(e["start"]),
            "x1": _t(e["end"]),
            "y0": 0,
            "y1": 1,
            "layer": "below",
            "line": {"width": 0},
            "fillcolor": RULE_COLOR if e["rule"] else MODEL_COLOR,
            "opacity": 0.15,
        }
        for e in view.events
    ]
    shapes += [
        {
            "type": "line",
            "name": f"model version {v}",
            "xref": "x",
            "yref": "paper",
            "x0": _t(t),
            "x1": _t(t),
            "y0": 0,
            "y1": 1,
            "line": {"color": ADOPTION_COLOR, "width": 1, "dash": "dot"},
        }
        for t, v in view.adoptions
    ]
    layout["shapes"] = shapes
    layout["annotations"] = [
        {
            "x": _t(t),
            "y": 1.0,
            "xref": "x",
            "yref": "paper",
            "text": f"v{v}",
            "showarrow": False,
            "yanchor": "bottom",
            "font": {"size": 10, "color": ADOPTION_COLOR},
        }
        for t, v in view.adoptions
    ]
    return {"data": data, "layout": layout}


def render_device_page(view: DeviceView) -> str:
    rule = int(view.alarms["rule"].sum()) if view.alarms.height else 0
    subtitle = (
        f"{view.readings_total:,} readings {range_text(view.start, view.end)}, {view.alarms.height:,} alarms "
        f"({rule:,} rule, {view.alarms.height - rule:,} model), {len(view.events):,} events, "
        f"{len(view.adoptions)} model versions seen"
    )
    notes = [f"Scores and thresholds: {view.score_source}."]
    if view.evaluation_version is not None:
        notes.append(
            "The batch evaluation's threshold is its per-device quantile over the evaluated days, not the "
            "stream trainer's live threshold; alarms, events and model versions are the stream trainer's."
        )
    notes += [n[0].upper() + n[1:] + "." for n in view.notes]
    notes_html = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return PAGE.format(
        device=escape(view.device_id),
        subtitle=escape(subtitle),
        notes=notes_html,
        figure_json=_script_json(device_figure(view)),
        events_table=_events_table(view),
        alarms_table=_alarms_table(view),
    )


def _events_table(view: DeviceView) -> str:
    if not view.events:
        return '<p class="empty">no events in this range</p>'
    rows = "".join(
        f'<tr class="event-{"rule" if e["rule"] else "model"}">'
        f"<td>{_t(e['start'])[:19]}</td><td>{_t(e['end'])[:19]}{' (open)' if e['open'] else ''}</td>"
        f'<td><span class="reason reason-{"rule" if e["rule"] else "model"}">{escape(e["reason"])}</span> '
        f"{escape(e['severity_class'])}</td>"
        f'<td class="num">{_number(e["peak_severity"])}</td></tr>'
        for e in reversed(view.events)
    )
    head = "".join(f"<th>{c}</th>" for c in ("start (UTC)", "end (UTC)", "reason", "peak severity"))
    return f'<table id="device-events-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _alarms_table(view: DeviceView) -> str:
    if not view.alarms.height:
        return '<p class="empty">no alarms in this range</p>'
    latest = view.alarms.reverse().head(LATEST_ALARMS)
    rows = "".join(
        f'<tr class="anomaly-{_kind(a)}"><td>{_t(a["ts"])[:19]}</td>'
        f'<td><span class="reason reason-{_kind(a)}">{escape(a["reason"])}</span></td>'
        f'<td class="num">{_number(a["score"])}</td><td class="num">{_number(a["threshold"])}</td>'
        f'<td class="num">{_number(a["model_version"])}</td></tr>'
        for a in latest.iter_rows(named=True)
    )
    head = "".join(f"<th>{c}</th>" for c in ("time (UTC)", "reason", "score", "threshold", "model version"))
    more = (
        f'<p class="empty">the newest {LATEST_ALARMS} of {view.alarms.height:,}</p>'
        if view.alarms.height > LATEST_ALARMS
        else ""
    )
    return (
        f'<table id="device-alarms-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}'
    )


def _kind(item: dict) -> str:
    return "rule" if item["rule"] else "model"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FLEAD device {device}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/plotly.min.js"></script>
</head>
<body>
<header><h1>Device {device}</h1><p id="subtitle">{subtitle}</p><p><a href="/">dashboard</a></p></header>
<main>
<section class="wide"><h2>Readings, score and alarms</h2><ul id="notes">{notes}</ul>
<div id="device-chart" class="chart device-chart" data-figure="device-data"></div></section>
<section class="wide"><h2>Events</h2>{events_table}</section>
<section class="wide"><h2>Latest alarms</h2>{alarms_table}</section>
</main>
<script type="application/json" id="device-data">{figure_json}</script>
<script src="/static/dashboard.js"></script>
</body>
</html>
"""
