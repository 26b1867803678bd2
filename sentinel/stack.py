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


@dataclass(frozen=True)
class Stack:
    """DSNs of a ready engine, and whether this process started it (so it may stop it)."""

    owner_dsn: str
    loader_dsn: str
    analyst_dsn: str
    engine: EmbeddedEngine | None
    started: bool


def bring_up(settings: Settings, *, models: bool = True, engine_kind: str = "postgres",
             on_step: Callable[[str], None] = lambda _msg: None) -> Stack:
    """Start or reuse the embedded engine (or use SENTINEL_DSN), apply sql/, deploy the dbt models."""
    from sentinel import schema

    t0 = time.monotonic()
    if settings.embedded:
        if engine_kind != "postgres":
            raise SentinelError("the embedded engine is PostgreSQL; --engine needs SENTINEL_DSN")
        engine = settings.engine()
        started = engine.up()
        on_step(f"engine {'started' if started else 'already running'} in {engine.home} "
                f"(port {engine.running_port()}) [{time.monotonic() - t0:.1f} s]")
        stack = Stack(owner_dsn=engine.dsn("owner"), loader_dsn=engine.dsn("loader"),
                      analyst_dsn=engine.dsn("analyst"), engine=engine, started=started)
        passwords = engine.role_passwords()
    else:
        stack = Stack(owner_dsn=settings.dsn, loader_dsn=settings.dsn, analyst_dsn=settings.dsn,
                      engine=None, started=False)
        passwords = None
    files = schema.apply(stack.owner_dsn, engine=engine_kind, role_passwords=passwords)
    on_step(f"applied sql/{engine_kind}: {', '.join(files)}")
    if models:
        from sentinel.deploy import run_dbt

        t1 = time.monotonic()
        run_dbt(["run"], dsn=stack.owner_dsn, target=engine_kind)
        on_step(f"models deployed (dbt run, target {engine_kind}) [{time.monotonic() - t1:.1f} s]")
    on_step(f"ready in {time.monotonic() - t0:.1f} s")
    return stack


@contextlib.contextmanager
def temporary_stack(*, models: bool = True, prefix: str = "sentinel-bench-",
                    on_step: Callable[[str], None] = lambda _msg: None) -> Iterator[Stack]:
    """A throw-away embedded engine (temp home, free port) brought up; stopped and removed afterwards,
    also when bringing it up fails after the server started (sql/ or dbt)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        settings = Settings(home=Path(home) / "home", port=free_port())
        try:
            yield bring_up(settings, models=models, on_step=on_step)
        finally:
            settings.engine().down()
