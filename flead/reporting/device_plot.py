"""``flead plot``'s PNG of a `DeviceView` (matplotlib, no display): a panel per feature and one of the
score and threshold, the device's events shaded (rule events red, the model's orange), model alarms
and rule alarms marked apart, and the global model version adoptions as dashed lines."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flead.reporting.device_view import DeviceView

RULE_COLOR, MODEL_COLOR, ADOPTION_COLOR = "#c62828", "#ef6c00", "#5e35b1"


def device_figure(view: DeviceView) -> Figure:
    panels = len(view.features) + 1
    figure = Figure(figsize=(12, 1.9 * panels + 1.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    readings = view.readings
    ts = readings["ts"].dt.replace_time_zone(None).to_list() if readings.height else []
    for ax, name in zip(axes, view.features, strict=False):
        if ts:
            ax.plot(ts, readings[name].to_list(), lw=0.8, color="#1f77b4")
        ax.set_ylabel(name)
    score_ax = axes[-1]
    if view.evaluation_version is not None and ts:
        score_ax.plot(ts, readings["score"].to_list(), lw=0.8, color="#2e7d32", label="score")
        score_ax.plot(
            ts, readings["threshold"].to_list(), lw=1.0, ls="--", color="#455a64", label="threshold"
        )
    alarms = view.alarms
    for rule, color, marker, label in (
        (False, MODEL_COLOR, "o", "model alarms"),
        (True, RULE_COLOR, "x", "rule alarms"),
    ):
        part = alarms.filter(alarms["rule"] == rule)
        if part.height:
            y = [s if s is not None else t for s, t in zip(part["score"], part["threshold"], strict=True)]
            score_ax.scatter(
                part["ts"].dt.replace_time_zone(None).to_list(),
                y,
                s=18,
                color=color,
                marker=marker,
                label=label,
            )
    score_ax.set_ylabel("score")
    for event in view.events:
        for ax in axes:
            ax.axvspan(
                event["start"].replace(tzinfo=None),
                event["end"].replace(tzinfo=None),
                color=RULE_COLOR if event["rule"] else MODEL_COLOR,
                alpha=0.15,
                lw=0,
            )
    for when, version in view.adoptions:
        for ax in axes:
            ax.axvline(when.replace(tzinfo=None), color=ADOPTION_COLOR, ls=":", lw=1)
        axes[0].annotate(
            f"v{version}",
            (when.replace(tzinfo=None), 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color=ADOPTION_COLOR,
            va="bottom",
        )
    if score_ax.get_legend_handles_labels()[0]:
        score_ax.legend(loc="upper left", fontsize=8, ncols=4)
    score_ax.set_xlabel("time (UTC)")
    title = f"{view.device_id}: {view.readings_total:,} readings; scores from {view.score_source}"
    figure.suptitle(title, fontsize=11)
    if view.notes:
        figure.text(0.01, 0.0, "; ".join(view.notes), fontsize=7, color="#52606d", va="bottom")
    return figure


def write_device_png(view: DeviceView, path: Path) -> Path:
    """Write the PNG atomically (a temporary sibling, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        device_figure(view).savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
