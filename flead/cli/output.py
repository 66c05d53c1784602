"""What every `flead` command prints through: one console and one way to fail.

Importing it also fixes one thing of Typer's help: its rich help panel prints a type placeholder
(``<bool>``) beside every flag, a flag takes no value (the plain help already leaves it out).
"""

from __future__ import annotations

import typer
from rich.console import Console
from typer.core import TyperOption

console = Console(log_path=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error; the Exit to raise (``raise fail(...) from None``)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _flag_has_no_placeholder(display_type_rich):
    def display(self: TyperOption, ctx) -> str | None:
        if self.is_flag and not self.count:
            return None  # --full, --no-gzip, --help: nothing follows the flag
        return display_type_rich(self, ctx)

    display.__wrapped__ = display_type_rich
    return display


if not hasattr(TyperOption.display_type_rich, "__wrapped__"):
    TyperOption.display_type_rich = _flag_has_no_placeholder(TyperOption.display_type_rich)
