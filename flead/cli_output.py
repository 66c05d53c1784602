"""What every `flead` command prints through: one console and one way to fail."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(log_path=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error; the Exit to raise (``raise fail(...) from None``)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
