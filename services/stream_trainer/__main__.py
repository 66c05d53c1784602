"""``python -m services.stream_trainer [OPTIONS]``: the same as ``flead trainer run``."""

import typer

from flead.cli_trainer import run

if __name__ == "__main__":
    typer.run(run)
