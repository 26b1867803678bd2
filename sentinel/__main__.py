"""The `sentinel` command's entry point (also `python -m sentinel`).

A Ctrl-C while Python is still loading the command's modules ends it as one a moment later would:
one line and exit code 130, not an import's traceback (nothing has been read or sent by then).
`loader.cli` does the same for `python -m loader.cli`. `sentinel.cli.main` hands Ctrl-C back to
Python (KeyboardInterrupt) inside its own error handling; `sentinel load`, `sentinel up` and
`sentinel demo` then replace it with a stop request (`sentinel.signals.StopSignals`).
"""
from __future__ import annotations

import os

# `_signal`, the C core of `signal`: `import signal` first imports `enum`, long enough for a Ctrl-C
# to land in it (seen: 1 of 300 signals at random times in the first 1.2 s) with Python's own
# handler still in place, which prints a traceback.
import _signal


def quiet_interrupts_while_loading() -> None:
    """Until `sentinel.cli.main` starts: SIGINT prints `error: interrupted` and ends the process with 130."""
    _signal.signal(_signal.SIGINT, lambda *_: (os.write(2, b"error: interrupted\n"), os._exit(130)))


def main() -> None:
    quiet_interrupts_while_loading()
    from sentinel.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
