"""The anomaly report of one batch evaluation: DuckDB over the Parquet lake and the scored readings.

Inputs
------
- the lake, ``<lake_dir>/date=YYYY-MM-DD/part-0.parquet`` (`flead.datasets.lake`): every reading
  with its data-quality flags (``out_of_range``, ``low_battery``);
- a batch evaluation, ``<evaluations_dir>/version=<V>/date=YYYY-MM-DD/part-0.parquet``: one row per
  scored reading (device_id, ts, date, score, threshold — NaN while a device warms up —, is_anomaly,
  out_of_range, label — null without ground truth).

DuckDB aggregates both to one row per (device, day) in a single scan each — no reading ever reaches
Python — and joins the two (a full outer join: a device-day may have readings but no scores, or the
other way round). Everything else (per device, per day, the top device-days, the charts) is derived
from that small table. The lake is read only for the days the evaluation covers.

Definitions: *readings* and *out of range* come from the lake, *scored* and *alarms* (the model's
``is_anomaly``) from the evaluation; alarm rate = alarms / scored. Precision, recall and F1 pool the
in-range readings that carry a label (out-of-range ones are the rule's alarms, not the model's;
TP = alarm on a labelled anomaly, FP = alarm on a labelled normal reading, FN = labelled anomaly
without alarm); a ratio with a zero denominator, or without any label,
is ``None`` — the conventions of `flead.evaluation.metrics`.

Output: ``report.md`` plus three PNGs in ``out_dir``. The report is written into a hidden sibling
folder and swapped in with renames, so readers see the old report or the new one, never a mix or a
half-written file. ``out_dir`` must be absent, empty or an earlier report (it holds a ``.flead-report``
marker); any other folder is refused rather than replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flead.datasets.lake import PARTITION_FILE, list_partitions, partition_path

REPORT_FILE = "report.md"
MARKER_FILE = ".flead-report"
EVALUATION_FILE = PARTITION_FILE  # the evaluation is laid out like the lake
EVALUATION_COLUMNS = ("device_id", "ts", "date", "score", "threshold", "is_anomaly", "out_of_range")
CHARTS = {
    "alarms_per_day": "alarms_per_day.png",
    "alarm_rate_per_device": "alarm_rate_per_device.png",
    "alarm_rate_heatmap": "alarm_rate_heatmap.png",
}
CHART_DEVICES = 60  # devices drawn in the per-device charts (highest alarm rate first)
_VERSION_DIR = re.compile(r"version=(\d+)")
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


class ReportError(RuntimeError):
    """The report cannot be built (no evaluation, no lake, unknown version, unsafe output folder)."""


@dataclass(frozen=True)
class AnomalyReport:
    version: int
    markdown: str
    markdown_path: Path
    png: dict[str, Path]  # chart name -> PNG file in out_dir
    per_device: pl.DataFrame
    per_day: pl.DataFrame
    top_device_days: pl.DataFrame
    totals: dict[str, int | float | None]
    out_dir: Path
    generated_at: datetime


def evaluation_versions(evaluations_dir: Path) -> dict[int, dict[date, Path]]:
    """{version: {day: Parquet file}} of every evaluation with at least one day file, by version."""
    root = Path(evaluations_dir)
    if not root.is_dir():
        return {}
    versions: dict[int, dict[date, Path]] = {}
    for folder in root.iterdir():
        match = _VERSION_DIR.fullmatch(folder.name)
        if not match or not folder.is_dir():
            continue
        days = {}
        for day_dir in folder.iterdir():
            day = _DATE_DIR.fullmatch(day_dir.name)
            if day and (day_dir / EVALUATION_FILE).is_file():
                days[date.fromisoformat(day.group(1))] = day_dir / EVALUATION_FILE
        if days:
            versions[int(match.group(1))] = dict(sorted(days.items()))
    return dict(sorted(versions.items()))


def build_report(
    lake_dir: Path,
    evaluations_dir: Path,
    out_dir: Path,
    *,
    version: int | None = None,
    max_devices: int = 20,
    max_days: int = 60,
    top_device_days: int = 10,
) -> AnomalyReport:
    """Summarise evaluation `version` (None = the newest present) against the lake; write it to `out_dir`.

    `max_devices` / `max_days` limit the Markdown tables (the DataFrames are complete);
    `top_device_days` is how many device-days with the most alarms are listed.
    """
    versions = evaluation_versions(evaluations_dir)
    if not versions:
        raise ReportError(
            f"no evaluation in {evaluations_dir} (expected version=<V>/date=<YYYY-MM-DD>/{EVALUATION_FILE})"
        )
    if version is None:
        version = max(versions)
    elif version not in versions:
        raise ReportError(
            f"no evaluation of version {version} in {evaluations_dir}; present: "
            + ", ".join(str(v) for v in versions)
        )
    lake_days = list_partitions(lake_dir)
    if not lake_days:
        raise ReportError(f"no lake in {lake_dir} (expected date=<YYYY-MM-DD>/part-0.parquet)")
    eval_files = versions[version]
    lake_files = [partition_path(lake_dir, d) for d in lake_days if d in eval_files]

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        _create_device_day(con, list(eval_files.values()), lake_files)
        per_device = _utc(con.sql(_PER_DEVICE_SQL).pl())
        per_day = con.sql(_PER_DAY_SQL).pl()
        top = _utc(con.sql(_TOP_SQL, params=[top_device_days]).pl())
        device_day = con.sql('SELECT device_id, "date", scored, alarms FROM device_day').pl()
        totals = _totals(con)
    if totals["scored"] == 0:
        raise ReportError(f"evaluation version {version} in {evaluations_dir} has no scored readings")
    totals["lake_days_not_evaluated"] = sum(1 for d in lake_days if d not in eval_files)

    generated_at = datetime.now(UTC).replace(microsecond=0)
    out_dir = Path(out_dir).absolute()
    charts: dict[str, Callable[[], Figure]] = {
        "alarms_per_day": lambda: _alarms_per_day_chart(per_day, version),
        "alarm_rate_per_device": lambda: _alarm_rate_chart(per_device, version),
        "alarm_rate_heatmap": lambda: _heatmap_chart(per_device, device_day, version),
    }
    markdown = _markdown(
        version=version,
        generated_at=generated_at,
        per_device=per_device,
        per_day=per_day,
        top=top,
        totals=totals,
        max_devices=max_devices,
        max_days=max_days,
    )

    def write(folder: Path) -> None:
        for name, make in charts.items():
            _save(make(), folder / CHARTS[name])
        (folder / REPORT_FILE).write_text(markdown, encoding="utf-8")
        marker = {"version": version, "generated_at": generated_at.isoformat()}
        (folder / MARKER_FILE).write_text(json.dumps(marker), encoding="utf-8")

    _publish(out_dir, write)
    return AnomalyReport(
        version=version,
        markdown=markdown,
        markdown_path=out_dir / REPORT_FILE,
        png={name: out_dir / file for name, file in CHARTS.items()},
        per_device=per_device,
        per_day=per_day,
        top_device_days=top,
        totals=totals,
        out_dir=out_dir,
        generated_at=generated_at,
    )


# --- DuckDB ---------------------------------------------------------------------------------------


def _ratio(numerator: str, denominator: str, guard: str = "") -> str:
    zero = f"{guard} OR " if guard else ""
    return f"CASE WHEN {zero}({denominator}) = 0 THEN NULL ELSE ({numerator})::DOUBLE / ({denominator}) END"


def _quality() -> str:
    """Precision, recall and F1 from the columns labelled, tp, fp and fn."""
    no_labels = "labelled = 0"
    return ",\n    ".join(
        [
            f"{_ratio('tp', 'tp + fp', no_labels)} AS precision",
            f"{_ratio('tp', 'tp + fn', no_labels)} AS recall",
            f"{_ratio('2 * tp', '2 * tp + fp + fn', no_labels)} AS f1",
        ]
    )


def _create_device_day(
    con: duckdb.DuckDBPyConnection, eval_files: Sequence[Path], lake_files: Sequence[Path]
):
    """TEMP TABLE device_day: one row per (device, day) seen in the lake or the evaluation."""
    source = """read_parquet(
        $eval_files, hive_partitioning = true, union_by_name = true,
        hive_types = {'version': INTEGER, 'date': DATE}
    )"""
    files = {"eval_files": [str(p) for p in eval_files]}
    present = {row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}", params=files).fetchall()}
    missing = [c for c in EVALUATION_COLUMNS if c not in present]
    if missing:
        raise ReportError(
            f"evaluation files lack column(s) {', '.join(missing)}: {eval_files[0].parent.parent}"
        )
    # A writer may leave out the label column altogether when the data set has no labels.
    label = "label" if "label" in present else "NULL::BOOLEAN AS label"
    evaluation = f"""
        SELECT
            device_id,
            "date",
            count(*) AS scored,
            count(*) FILTER (WHERE threshold IS NULL OR isnan(threshold)) AS warmup,
            count(*) FILTER (WHERE is_anomaly) AS alarms,
            count(*) FILTER (WHERE is_anomaly AND out_of_range) AS alarms_out_of_range,
            min(ts) FILTER (WHERE is_anomaly) AS first_alarm,
            max(ts) FILTER (WHERE is_anomaly) AS last_alarm,
            max(score) FILTER (WHERE NOT isnan(score)) AS max_score,
            count(label) FILTER (WHERE NOT out_of_range) AS labelled,
            count(*) FILTER (WHERE label AND is_anomaly AND NOT out_of_range) AS tp,
            count(*) FILTER (WHERE NOT label AND is_anomaly AND NOT out_of_range) AS fp,
            count(*) FILTER (WHERE label AND NOT is_anomaly AND NOT out_of_range) AS fn
        FROM (SELECT device_id, "date", ts, score, threshold, is_anomaly, out_of_range, {label} FROM {source})
        GROUP BY device_id, "date"
    """
    if lake_files:
        lake = """
            SELECT
                device_id,
                "date",
                count(*) AS readings,
                count(*) FILTER (WHERE out_of_range) AS out_of_range,
                count(*) FILTER (WHERE low_battery) AS low_battery
            FROM read_parquet($lake_files, hive_partitioning = true, hive_types = {'date': DATE})
            GROUP BY device_id, "date"
        """
    else:  # the lake has none of the evaluated days
        lake = """
            SELECT NULL::VARCHAR AS device_id, NULL::DATE AS "date", 0::BIGINT AS readings,
                   0::BIGINT AS out_of_range, 0::BIGINT AS low_battery
            WHERE false
        """
    counts = ("scored", "warmup", "alarms", "alarms_out_of_range", "labelled", "tp", "fp", "fn")
    con.execute(
        f"""
        CREATE TEMP TABLE device_day AS
        WITH ev AS ({evaluation}), lk AS ({lake})
        SELECT
            coalesce(ev.device_id, lk.device_id) AS device_id,
            coalesce(ev."date", lk."date") AS "date",
            coalesce(lk.readings, 0) AS readings,
            coalesce(lk.out_of_range, 0) AS out_of_range,
            coalesce(lk.low_battery, 0) AS low_battery,
            {", ".join(f"coalesce(ev.{c}, 0) AS {c}" for c in counts)},
            ev.first_alarm, ev.last_alarm, ev.max_score
        FROM ev FULL OUTER JOIN lk ON ev.device_id = lk.device_id AND ev."date" = lk."date"
        """,
        {**files, **({"lake_files": [str(p) for p in lake_files]} if lake_files else {})},
    )


def _sums(*columns: str) -> str:
    return ", ".join(f"sum({c})::BIGINT AS {c}" for c in columns)


_PER_DEVICE_SQL = f"""
WITH d AS (
    SELECT
        device_id,
        {_sums("readings", "scored", "warmup", "out_of_range", "low_battery")},
        {_sums("alarms", "alarms_out_of_range")},
        count(*) FILTER (WHERE alarms > 0) AS days_with_alarms,
        min(first_alarm) AS first_alarm,
        max(last_alarm) AS last_alarm,
        max(max_score) AS max_score,
        {_sums("labelled", "tp", "fp", "fn")}
    FROM device_day
    GROUP BY device_id
)
SELECT
    device_id, readings, scored, warmup, out_of_range, low_battery, alarms,
    {_ratio("alarms", "scored")} AS alarm_rate,
    alarms_out_of_range, days_with_alarms, first_alarm, last_alarm, max_score,
    labelled, tp, fp, fn,
    {_quality()}
FROM d
ORDER BY alarm_rate DESC NULLS LAST, alarms DESC, device_id
"""

_PER_DAY_SQL = f"""
WITH d AS (
    SELECT
        "date",
        count(*) FILTER (WHERE readings > 0 OR scored > 0) AS devices,
        {_sums("readings", "scored", "out_of_range", "alarms", "alarms_out_of_range")},
        count(*) FILTER (WHERE alarms > 0) AS devices_with_alarms,
        max(max_score) AS max_score,
        {_sums("labelled", "tp", "fp", "fn")}
    FROM device_day
    GROUP BY "date"
)
SELECT
    "date", devices, readings, scored, out_of_range, alarms,
    {_ratio("alarms", "scored")} AS alarm_rate,
    alarms_out_of_range,
    greatest(out_of_range - alarms_out_of_range, 0) AS out_of_range_without_alarm,
    devices_with_alarms, max_score,
    labelled, tp, fp, fn,
    {_quality()}
FROM d
ORDER BY "date"
"""

_TOP_SQL = f"""
SELECT
    device_id, "date", readings, scored, out_of_range, alarms,
    {_ratio("alarms", "scored")} AS alarm_rate,
    max_score, first_alarm, last_alarm
FROM device_day
WHERE alarms > 0
ORDER BY alarms DESC, alarm_rate DESC, device_id, "date"
LIMIT $1
"""

_TOTALS_SQL = f"""
WITH t AS (
    SELECT
        {_sums("readings", "scored", "out_of_range", "alarms", "alarms_out_of_range")},
        {_sums("labelled", "tp", "fp", "fn")},
        count(DISTINCT device_id) AS devices,
        count(DISTINCT "date") AS days
    FROM device_day
)
SELECT
    coalesce(readings, 0) AS readings, coalesce(scored, 0) AS scored,
    coalesce(out_of_range, 0) AS out_of_range, coalesce(alarms, 0) AS alarms,
    {_ratio("alarms", "scored")} AS alarm_rate,
    coalesce(alarms_out_of_range, 0) AS alarms_out_of_range,
    devices, days, coalesce(labelled, 0) AS labelled,
    {_quality()}
FROM t
"""


def _totals(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    cursor = con.execute(_TOTALS_SQL)
    names = [column[0] for column in cursor.description]
    row = cursor.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def _utc(frame: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as UTC-aware (the evaluation writes naive UTC; a tz-aware writer works as well)."""
    fixes = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            column = pl.col(name)
            fixes.append(
                column.dt.replace_time_zone("UTC")
                if dtype.time_zone is None
                else column.dt.convert_time_zone("UTC")
            )
    return frame.with_columns(fixes) if fixes else frame


# --- Markdown -------------------------------------------------------------------------------------


def format_cell(value: Any, kind: str = "") -> str:
    """A value for a table: ``-`` when missing; `kind` "rate" as a percentage, "ratio" to 3 decimals."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if kind == "rate":
        return f"{value:.2%}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if kind != "ratio" else f"{value:.3f}"
    return str(value).replace("|", "\\|")


# column -> (header, kind) of the Markdown tables; kind as in `format_cell`, text and time left-aligned
_COLUMNS = {
    "device_id": ("device", "text"),
    "date": ("day", "text"),
    "devices": ("devices", ""),
    "readings": ("readings", ""),
    "scored": ("scored", ""),
    "out_of_range": ("out of range", ""),
    "alarms": ("alarms", ""),
    "alarm_rate": ("alarm rate", "rate"),
    "devices_with_alarms": ("devices with alarms", ""),
    "first_alarm": ("first alarm (UTC)", "time"),
    "last_alarm": ("last alarm (UTC)", "time"),
    "max_score": ("max score", ""),
    "precision": ("precision", "ratio"),
    "recall": ("recall", "ratio"),
    "f1": ("F1", "ratio"),
}
_QUALITY = ("precision", "recall", "f1")


def _table(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    """A Markdown table of `frame`'s `columns` (headers and formats from `_COLUMNS`)."""
    specs = [_COLUMNS[c] for c in columns]
    lines = [
        "| " + " | ".join(header for header, _ in specs) + " |",
        "|" + "|".join("---" if kind in ("text", "time") else "---:" for _, kind in specs) + "|",
    ]
    for row in frame.select(columns).iter_rows():
        lines.append(
            "| " + " | ".join(format_cell(v, kind) for v, (_, kind) in zip(row, specs, strict=True)) + " |"
        )
    return "\n".join(lines)


def _more(shown: int, total: int, what: str) -> str:
    return f"\n\n… and {total - shown:,} more {what}." if total > shown else ""


def _markdown(
    *,
    version: int,
    generated_at: datetime,
    per_device: pl.DataFrame,
    per_day: pl.DataFrame,
    top: pl.DataFrame,
    totals: dict[str, Any],
    max_devices: int,
    max_days: int,
) -> str:
    labelled = totals["labelled"] > 0
    first_day, last_day = per_day["date"].min(), per_day["date"].max()
    not_evaluated = totals["lake_days_not_evaluated"]
    summary = [
        f"- days evaluated: {totals['days']} ({first_day} .. {last_day})"
        + (f"; {not_evaluated} more lake day(s) not evaluated by this version" if not_evaluated else ""),
        f"- devices: {totals['devices']}",
        f"- readings in the lake on these days: {totals['readings']:,}, "
        f"of them out of range: {totals['out_of_range']:,}",
        f"- scored readings: {totals['scored']:,}",
        f"- alarms: {totals['alarms']:,} (alarm rate {format_cell(totals['alarm_rate'], 'rate')}): "
        f"{totals['alarms'] - totals['alarms_out_of_range']:,} by the model on in-range readings, "
        f"{totals['alarms_out_of_range']:,} by the rule on out-of-range readings",
    ]
    if labelled:
        summary.append(
            f"- labelled readings: {totals['labelled']:,}; "
            f"precision {format_cell(totals['precision'], 'ratio')}, "
            f"recall {format_cell(totals['recall'], 'ratio')}, F1 {format_cell(totals['f1'], 'ratio')}"
        )
    else:
        summary.append("- no labels in this evaluation: precision, recall and F1 are not available")

    quality = list(_QUALITY) if labelled else []
    device_columns = ["device_id", "readings", "scored", "out_of_range", "alarms", "alarm_rate"]
    device_columns += ["first_alarm", "last_alarm", "max_score", *quality]
    day_columns = ["date", "devices", "readings", "scored", "out_of_range", "alarms", "alarm_rate"]
    day_columns += ["devices_with_alarms", *quality]
    top_columns = ["device_id", "date", "scored", "out_of_range", "alarms", "alarm_rate", "max_score"]
    top_columns += ["first_alarm"]
    shown_devices = min(max_devices, per_device.height)
    shown_days = min(max_days, per_day.height)
    sections = [
        f"# Anomaly report: global model version {version}",
        f"Generated {generated_at.strftime('%Y-%m-%d %H:%M:%S')} UTC from the lake and the batch evaluation "
        f"`version={version}`. Readings and out-of-range flags come from the lake, scores and alarms from "
        "the evaluation; alarm rate = alarms (the model's and the out-of-range rule's) / scored readings.",
        "\n".join(summary),
        "## Charts",
        f"![Alarms per day]({CHARTS['alarms_per_day']})",
        f"![Alarm rate per device]({CHARTS['alarm_rate_per_device']})",
        f"![Alarm rate per device and day]({CHARTS['alarm_rate_heatmap']})",
        f"## Devices (top {shown_devices} of {per_device.height} by alarm rate)",
        _table(per_device.head(shown_devices), device_columns)
        + _more(shown_devices, per_device.height, "devices"),
        f"## Days ({shown_days} of {per_day.height})",
        _table(per_day.head(shown_days), day_columns) + _more(shown_days, per_day.height, "days"),
        f"## Top anomalous device-days ({top.height})",
        _table(top, top_columns) if top.height else "No device-day has a model alarm.",
    ]
    return "\n\n".join(sections) + "\n"


# --- charts ---------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without pyplot's global state
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})


def _day_ticks(ax, days: Sequence[date], axis: str = "x") -> None:
    step = max(1, -(-len(days) // 20))
    positions = list(range(0, len(days), step))
    labels = [days[i].strftime("%m-%d") for i in positions]
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=90)
    else:
        ax.set_yticks(positions, labels)


def _alarms_per_day_chart(per_day: pl.DataFrame, version: int) -> Figure:
    days = per_day["date"].to_list()
    x = np.arange(len(days))
    in_range = (per_day["alarms"] - per_day["alarms_out_of_range"]).to_numpy()
    on_out_of_range = per_day["alarms_out_of_range"].to_numpy()
    out_only = per_day["out_of_range_without_alarm"].to_numpy()
    figure = _figure(max(6.0, 0.25 * len(days) + 2), 4.0)
    ax = figure.subplots()
    ax.bar(x, in_range, color="tab:blue", label="model alarm, in-range reading")
    ax.bar(x, on_out_of_range, bottom=in_range, color="tab:purple", label="model alarm, out-of-range reading")
    ax.bar(
        x,
        out_only,
        bottom=in_range + on_out_of_range,
        color="tab:orange",
        label="out of range, no model alarm",
    )
    _day_ticks(ax, days)
    ax.set_ylabel("readings")
    ax.set_title(f"Alarms per day (version {version})")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def _chart_devices(per_device: pl.DataFrame) -> pl.DataFrame:
    """The devices drawn: scored ones, highest alarm rate first, at most CHART_DEVICES."""
    return per_device.filter(pl.col("scored") > 0).head(CHART_DEVICES)


def _alarm_rate_chart(per_device: pl.DataFrame, version: int) -> Figure:
    devices = _chart_devices(per_device)
    scored = per_device.filter(pl.col("scored") > 0).height
    figure = _figure(max(6.0, 0.22 * devices.height + 2), 4.0)
    ax = figure.subplots()
    x = np.arange(devices.height)
    ax.bar(x, devices["alarm_rate"].to_numpy() * 100, color="tab:red")
    ax.set_xticks(x, devices["device_id"].to_list(), rotation=90, fontsize="small")
    ax.set_ylabel("alarm rate (%)")
    shown = f", top {devices.height} of {scored}" if scored > devices.height else ""
    ax.set_title(f"Alarm rate per device (version {version}{shown})")
    return figure


def _heatmap_chart(per_device: pl.DataFrame, device_day: pl.DataFrame, version: int) -> Figure:
    devices = _chart_devices(per_device)["device_id"].to_list()
    days = sorted(device_day["date"].unique().to_list())
    rates = np.full((len(devices), len(days)), np.nan)
    row = {d: i for i, d in enumerate(devices)}
    column = {d: j for j, d in enumerate(days)}
    for device, day, scored, alarms in device_day.filter(pl.col("scored") > 0).iter_rows():
        if device in row:
            rates[row[device], column[day]] = alarms / scored
    figure = _figure(max(6.0, 0.25 * len(days) + 3), max(3.0, 0.22 * len(devices) + 1.5))
    ax = figure.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(rates * 100),
        aspect="auto",
        interpolation="nearest",
        cmap=colormaps["viridis"].with_extremes(bad="#d9d9d9"),
        vmin=0,
        vmax=max(float(np.nanmax(rates * 100)) if np.isfinite(rates).any() else 0.0, 1e-9),
    )
    figure.colorbar(image, ax=ax, label="alarm rate (%)")
    _day_ticks(ax, days)
    ax.set_yticks(range(len(devices)), devices, fontsize="small")
    ax.set_title(f"Alarm rate per device and day (version {version}; grey = not scored)")
    return figure


# --- atomic publication ---------------------------------------------------------------------------


def _publish(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Write the report into a hidden sibling folder, then swap it in place of `out_dir`."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ReportError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
            raise ReportError(
                f"{out_dir} holds files that are not an anomaly report; refusing to replace it "
                "(choose an empty or new folder)"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{token}")
    retired = out_dir.with_name(f".{out_dir.name}.old-{token}")
    staging.mkdir()
    try:
        write(staging)
        if out_dir.exists():
            os.rename(out_dir, retired)
            try:
                os.rename(staging, out_dir)
            except OSError:
                os.rename(retired, out_dir)
                raise
        else:
            os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
