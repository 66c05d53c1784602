"""``python -m services.stream_trainer [OPTIONS]``: the same as ``flead trainer run``."""

import typer

from services.stream_trainer.cli import run

if __name__ == "__main__":
    typer.run(run)
