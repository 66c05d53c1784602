"""``python -m services.notifier [OPTIONS]``: the same as ``flead alerts run``."""

import typer

from flead.cli_alerts import run

if __name__ == "__main__":
    typer.run(run)
