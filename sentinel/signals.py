"""Ctrl-C and SIGTERM as a request to stop, which the code checks where it can stop cleanly.

A KeyboardInterrupt raised wherever the main thread happens to be can be lost or do harm: code
that a C extension calls back may swallow it (numpy.random's Cython module init registers a type
under a bare `except: pass`), a library may wrap it in an error of its own (dbt's manifest
serialisation turned a Ctrl-C during `dbt run` into a mashumaro `InvalidFieldValue`, a traceback
and "dbt run failed"), and one landing inside a lock's or a queue's bookkeeping can leave it held.
`StopSignals` only records the signal; the code it guards stops at its next check.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from sentinel.errors import SentinelError


class Interrupted(SentinelError):
    """Ctrl-C or SIGTERM stopped the command where it could stop cleanly; the message says where."""

    exit_code = 130


class StopSignals:
    """While in effect (a context manager; the main thread only), SIGINT and SIGTERM set `signum`
    and, if `first` is set, write it as one line; the guarded code checks `requested` (or calls
    `check`) where it can stop. A second signal writes `again` and ends the process at once with
    exit code 130, after calling `on_again` (which may, say, stop a server this command started),
    or, with `again=None`, raises KeyboardInterrupt. `first`, `again` and `on_again` may be changed
    as the guarded code goes from step to step.
    """

    def __init__(self, *, first: str | None = None,
                 again: str | None = "error: interrupted again: stopped at once",
                 on_again: Callable[[], object] | None = None,
                 signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signum: int | None = None
        self.first = first
        self.again = again  # None: a second signal raises KeyboardInterrupt where the code is
        self.on_again = on_again
        self.signums = signums
        self._saved: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, message: str = "interrupted") -> None:
        """Raise `Interrupted(message)` if a stop was requested."""
        if self.signum is not None:
            raise Interrupted(message)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            if self.first:
                os.write(2, self.first.encode() + b"\n")
            return
        if self.again is None:
            raise KeyboardInterrupt
        message, err = self.again.encode() + b"\n", os.dup(2)
        try:
            if self.on_again is not None:
                # what the interrupted code prints as `on_again` pulls things from under it (dbt's
                # "ERROR creating ..." as its server stops) is noise: only the one line is shown
                quiet = os.open(os.devnull, os.O_WRONLY)
                os.dup2(quiet, 1)
                os.dup2(quiet, 2)
                self.on_again()
        finally:
            os.write(err, message)
            _release_semaphores()
            os._exit(130)


def _release_semaphores() -> None:
    """Unlink the multiprocessing semaphores this process made (dbt makes some), as a normal exit
    would: `os._exit` skips it, and the resource tracker then warns of them on the terminal."""
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        try:
            util._run_finalizers(0)
        except Exception:
            pass
