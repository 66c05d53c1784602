"""``python -m services.notifier [OPTIONS]``: the same as ``flead alerts run``."""

import typer

from services.notifier.cli import run

if __name__ == "__main__":
    typer.run(run)
