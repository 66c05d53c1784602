"""`python -m flead_cli`: the same command line as the `flead` script."""

from flead_cli import app

if __name__ == "__main__":
    app()
