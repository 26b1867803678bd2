"""Bringing the pipeline's engine up: start or reuse the server, apply sql/, deploy the models."""
from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sentinel.config import Settings
from sentinel.engine import EmbeddedEngine, free_port
from sentinel.errors import SentinelError
from sentinel.signals import Interrupted, StopSignals


@dataclass(frozen=True)
class Stack:
    """DSNs of a ready engine, and whether this process started it (so it may stop it)."""

    owner_dsn: str
    loader_dsn: str
    analyst_dsn: str
    engine: EmbeddedEngine | None
    started: bool


STEP_FIRST = "stopping once this step ends (Ctrl-C again to stop at once)"
_ROLLS_BACK = " (a model deploy in flight rolls back; the next `dbt run` or `sentinel up` deploys it)"


def bring_up(settings: Settings, *, models: bool = True, engine_kind: str = "postgres",
             on_step: Callable[[str], None] = lambda _msg: None, stop: StopSignals | None = None,
             stop_started_on_failure: bool = False) -> Stack:
    """Start or reuse the embedded engine (or use SENTINEL_DSN), apply sql/, deploy the dbt models.

    Ctrl-C and SIGTERM ask it to stop (`stop`, or a `StopSignals` of its own): the step under way
    (the server's start, sql/, `dbt run`) ends first, as none of them can be cut short cleanly in
    this process (a KeyboardInterrupt inside dbt became an error of dbt's own), then the engine is
    stopped if this call started it and `Interrupted` is raised. A second signal stops at once,
    stopping that engine first (a model deploy in flight rolls back; the next `dbt run` or
    `sentinel up` deploys it). With `stop_started_on_failure`, a failure stops that engine too.
    """
    if stop is None:
        with StopSignals() as own:
            return bring_up(settings, models=models, engine_kind=engine_kind, on_step=on_step, stop=own,
                            stop_started_on_failure=stop_started_on_failure)
    from sentinel import schema

    t0 = time.monotonic()
    saved = stop.first, stop.again, stop.on_again
    stop.first = STEP_FIRST
    engine: EmbeddedEngine | None = None
    started = False

    def stop_started() -> None:
        if started and engine is not None:
            # not again from the handler: it would wait for the engine's lock, which this holds
            stop.on_again = None
            stop.again = ("error: interrupted again: exited while the engine was stopping "
                          "(`sentinel down` stops it if it did not)")
            engine.down()

    try:
        if settings.embedded:
            if engine_kind != "postgres":
                raise SentinelError("the embedded engine is PostgreSQL; --engine needs SENTINEL_DSN")
            engine = settings.engine()
            stop.again = ("error: interrupted again: exited while the engine was starting "
                          "(`sentinel down` stops it if it started)")
            started = engine.up()
            stop.again = ("error: interrupted again: stopped at once"
                          + (", and the engine this command started with it" if started else "") + _ROLLS_BACK)
            stop.on_again = stop_started
            stop.check(_interrupted(started, engine))
            on_step(f"engine {'started' if started else 'already running'} in {engine.home} "
                    f"(port {engine.running_port()}) [{time.monotonic() - t0:.1f} s]")
            stack = Stack(owner_dsn=engine.dsn("owner"), loader_dsn=engine.dsn("loader"),
                          analyst_dsn=engine.dsn("analyst"), engine=engine, started=started)
            passwords = engine.role_passwords()
        else:
            stack = Stack(owner_dsn=settings.dsn, loader_dsn=settings.dsn, analyst_dsn=settings.dsn,
                          engine=None, started=False)
            passwords = None
            stop.again = "error: interrupted again: stopped at once" + _ROLLS_BACK
        files = schema.apply(stack.owner_dsn, engine=engine_kind, role_passwords=passwords)
        on_step(f"applied sql/{engine_kind}: {', '.join(files)}")
        stop.check(_interrupted(started, engine))
        if models:
            from sentinel.deploy import run_dbt

            # said once no stop can cut in before dbt: a Ctrl-C after this line lets the deploy end
            on_step(f"deploying the models (dbt run, target {engine_kind}) ...")
            t1 = time.monotonic()
            run_dbt(["run"], dsn=stack.owner_dsn, target=engine_kind)
            on_step(f"models deployed (dbt run, target {engine_kind}) [{time.monotonic() - t1:.1f} s]")
            stop.check(_interrupted(started, engine))
    except Interrupted:
        stop_started()
        raise
    except BaseException:
        if stop_started_on_failure:
            stop_started()
        raise
    finally:
        stop.first, stop.again, stop.on_again = saved
    on_step(f"ready in {time.monotonic() - t0:.1f} s")
    return stack


def _interrupted(started: bool, engine: EmbeddedEngine | None) -> str:
    if started and engine is not None:
        return f"interrupted: stopped the engine this command started (data kept in {engine.home})"
    return "interrupted"


@contextlib.contextmanager
def temporary_stack(*, models: bool = True, prefix: str = "sentinel-bench-",
                    on_step: Callable[[str], None] = lambda _msg: None,
                    stop: StopSignals | None = None) -> Iterator[Stack]:
    """A throw-away embedded engine (temp home, free port) brought up; stopped and removed afterwards,
    also when bringing it up fails after the server started (sql/ or dbt)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        settings = Settings(home=Path(home) / "home", port=free_port())
        try:
            try:
                stack = bring_up(settings, models=models, on_step=on_step, stop=stop)
            except Interrupted:
                raise Interrupted("interrupted: stopped and removed the throw-away engine") from None
            yield stack
        finally:
            settings.engine().down()
