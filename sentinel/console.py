"""The one console every command prints through: status to stderr, data to stdout."""
from __future__ import annotations

import logging
import os
import sys
import time

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


class LogLines(logging.Handler):
    """Log records as status lines on the console: warnings marked, the message never read as markup.
    With `clock`, each line starts with the time (long-running services such as the listener)."""

    def __init__(self, *, clock: bool = False) -> None:
        super().__init__()
        self.clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        head = time.strftime("%H:%M:%S ", time.localtime(record.created)) if self.clock else ""
        if record.levelno >= logging.WARNING:
            head += "[yellow]warning:[/] "
        console.print(f"{head}{escape(record.getMessage())}", markup=True)
