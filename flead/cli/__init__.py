"""The core's `flead` command line: the commands of the framework-free library (data, replay,
evaluation, report, plot, local services, supervised services, exports, settings).

Each shell adds its own sub-app (``services/*/cli.py``, ``flead_dagster/cli.py``); ``flead_cli``
assembles them into the `flead` script, as FastAPI assembles routers.
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from flead.cli.anomalies import anomalies_app
from flead.cli.data import data_app, replay_command
from flead.cli.evaluate import evaluate_command
from flead.cli.local import local_app
from flead.cli.output import console
from flead.cli.plot import plot_command
from flead.cli.report import report_command
from flead.cli.services import services_app
from flead.config import Settings, load_settings_or_exit, settings_markdown_table, settings_rows

app = typer.Typer(
    help="FLEAD: federated, online anomaly detection on IoT sensor streams.", no_args_is_help=True
)
app.add_typer(local_app, name="local")
app.add_typer(data_app, name="data")
app.add_typer(services_app, name="services")
app.add_typer(anomalies_app, name="anomalies")
app.command("replay")(replay_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.command("plot")(plot_command)


@app.callback()
def _check_settings(ctx: typer.Context) -> None:
    # Before any command: bad settings print every bad variable at once and exit 2 (no traceback).
    if not any(arg in ctx.help_option_names for arg in sys.argv[1:]):  # help needs no settings
        load_settings_or_exit()


@app.command("config")
def config(
    markdown: bool = typer.Option(False, help="Print the defaults as the README's Markdown table."),
) -> None:
    """The effective settings (environment, .env file, defaults); secrets are masked."""
    if markdown:
        console.print(settings_markdown_table(), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title="FLEAD settings")
    for column in ("variable", "value", "meaning"):
        table.add_column(column)
    for row in settings_rows(Settings()):
        table.add_row(*row)
    console.print(table)
