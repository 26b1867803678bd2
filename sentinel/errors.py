"""The one exception type the CLI turns into a one-line message and an exit code."""
from __future__ import annotations


def one_line(exc: BaseException | None) -> str:
    """The first line of an exception's message (or its type): what an error line shows."""
    text = str(exc or "unknown error").strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SentinelError(Exception):
    """A failure the user can act on; its message says what is wrong and what to do."""

    exit_code = 1
