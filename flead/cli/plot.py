"""`flead plot`: a PNG of one device's readings, scores, alarms, events and model versions."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from pymongo.errors import PyMongoError

from flead.cli.output import console, fail
from flead.config import Settings
from flead.reporting.device_plot import write_device_png
from flead.reporting.device_view import DeviceViewError, NoDeviceData, build_device_view, parse_range
from flead.schema import DEVICE_ID_PATTERN
from flead.storage.mongo import get_database, make_mongo_client

MONGO_TIMEOUT_MS = 3000


def plot_command(
    device: str = typer.Option(..., "--device", help="The device to draw, e.g. mote-07."),
    start: str | None = typer.Option(None, "--start", help="First day or time (ISO 8601, UTC if naive)."),
    end: str | None = typer.Option(
        None, "--end", help="Last day (inclusive) or time (exclusive), ISO 8601, UTC if naive."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="The PNG to write (default: FLEAD_REPORTS_DIR/device-<ID>.png)."
    ),
    max_points: int = typer.Option(20_000, "--max-points", min=100, help="Readings drawn at most."),
) -> None:
    """Each feature of a device over time, its score and threshold, events, alarms and model versions."""
    settings = Settings()
    if not re.fullmatch(DEVICE_ID_PATTERN, device):
        raise fail(f"not a device id: {device!r}", code=2)
    try:
        first, last = parse_range(start, end)
    except DeviceViewError as exc:
        raise fail(str(exc), code=2) from None
    path = Path(out) if out is not None else Path(settings.reports_dir) / f"device-{device}.png"
    client = make_mongo_client(settings, serverSelectionTimeoutMS=MONGO_TIMEOUT_MS)
    try:
        db = get_database(client, settings)
        try:
            db.command("ping")
        except PyMongoError as exc:
            console.print(
                f"[yellow]warning:[/] MongoDB unreachable ({type(exc).__name__}): "
                "drawing the lake and the batch evaluation only",
                highlight=False,
            )
            db = None
        with console.status(f"reading {device}"):
            view = build_device_view(
                device,
                lake_dir=Path(settings.lake_dir),
                evaluations_dir=Path(settings.evaluations_dir),
                db=db,
                anomalies_collection=settings.collection_anomalies,
                events_collection=settings.collection_events,
                start=first,
                end=last,
                max_points=max_points,
            )
            write_device_png(view, path)
    except NoDeviceData as exc:
        raise fail(str(exc)) from None
    finally:
        client.close()
    console.print(
        f"{device}: {view.readings_total:,} readings, {view.alarms.height:,} alarms "
        f"({int(view.alarms['rule'].sum())} rule), {len(view.events)} events, "
        f"{len(view.adoptions)} model versions; scores from {view.score_source}",
        highlight=False,
    )
    for note in view.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"plot: {path}", highlight=False, soft_wrap=True)
