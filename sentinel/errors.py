"""The one exception type the CLI turns into a one-line message and an exit code."""
from __future__ import annotations


class SentinelError(Exception):
    """A failure the user can act on; its message says what is wrong and what to do."""

    exit_code = 1
