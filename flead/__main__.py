"""`python -m flead`: the same command line as the `flead` script."""

from flead.cli import app

if __name__ == "__main__":
    app()
