"""The one console every command prints through: status to stderr, data to stdout."""
from __future__ import annotations

import os
import sys

from rich.console import Console

#: Status, progress and errors. Kept off stdout so `sentinel dsn` and `--json` stay pipeable.
console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Data a script may read (DSNs, JSON summaries, alert lines).
out = Console(file=sys.stdout, highlight=False, soft_wrap=True, color_system=None)


def is_interactive() -> bool:
    """Whether live progress displays make sense (a terminal, not CI, not a pipe)."""
    return console.is_terminal and not os.environ.get("CI")


def error(message: str) -> None:
    """Print one error line."""
    console.print(f"[bold red]error:[/] {message}", markup=True)


def info(message: str) -> None:
    """Print one status line."""
    console.print(message, markup=True)
