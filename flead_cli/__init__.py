"""The `flead` command line, assembled: the core's commands (``flead.cli``) and each shell's sub-app,
as FastAPI assembles routers. The core imports no shell; this package is where they meet."""

from __future__ import annotations

from flead.cli import app
from flead_dagster.cli import dagster_app
from services.global_api.cli import api_app
from services.notifier.cli import alerts_app
from services.stream_trainer.cli import trainer_app

app.add_typer(api_app, name="api")
app.add_typer(trainer_app, name="trainer")
app.add_typer(alerts_app, name="alerts")
app.add_typer(dagster_app)  # demo, up: top-level commands

__all__ = ["app"]
