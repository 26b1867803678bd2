"""The `sentinel` command's entry point (also `python -m sentinel`).

A Ctrl-C while Python is still loading the command's modules ends it as one a moment later would:
one line and exit code 130, not an import's traceback (nothing has been read or sent by then).
`loader.cli` does the same for `python -m loader.cli`.
"""
from __future__ import annotations

import os
import signal


def quiet_interrupts_while_loading() -> None:
    """Until `loaded()`: SIGINT prints `error: interrupted` and ends the process with 130."""
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"error: interrupted\n"), os._exit(130)))


def loaded() -> None:
    """Python's own SIGINT handling again (KeyboardInterrupt, which the commands handle)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    quiet_interrupts_while_loading()
    from sentinel.cli import main as cli_main

    loaded()
    cli_main()


if __name__ == "__main__":
    main()
