"""The one console every command prints through: status to stderr, data to stdout."""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

#: Status, progress and errors. Kept off stdout so `sentinel dsn` and `--json` stay pipeable.
console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Data a script may read (DSNs, JSON summaries, alert lines): printed as is, never read as markup or emoji.
out = Console(file=sys.stdout, highlight=False, soft_wrap=True, color_system=None, markup=False, emoji=False)


def is_interactive() -> bool:
    """Whether live progress displays make sense (a terminal, not CI, not a pipe)."""
    return console.is_terminal and not os.environ.get("CI")


def error(message: str) -> None:
    """Print one error line (the message as is: a `[...]` in it is text, not markup)."""
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
