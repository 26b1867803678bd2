"""Run dbt on Sentinel's project programmatically, pointed at a DSN through the libpq variables."""
from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from sentinel.errors import SentinelError
from sentinel.signals import StopSignals

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt"
_ENV_LOCK = threading.Lock()  # dbt reads os.environ; one in-process invocation at a time


class DbtFailed(SentinelError):
    """`dbt` reported a failure; the message is its first error line."""


@dataclass
class DbtResult:
    """Outcome of one dbt invocation: per-node status and message."""

    args: list[str]
    nodes: dict[str, tuple[str, str]]  # unique_id -> (status, message)


def libpq_env(dsn: str) -> dict[str, str]:
    """PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE for a DSN (what dbt/profiles.yml reads).

    A port, user, password or database the DSN leaves out is libpq's default (its PG* variable, else
    port 5432, the OS user, a database named as the user), as psycopg connects: not the profile's
    fallbacks, which are the embedded engine's (port 54329, user sentinel).
    """
    parts = conninfo_to_dict(dsn)
    defaults = {o.keyword.decode(): o.val.decode() for o in pq.Conninfo.get_defaults() if o.val is not None}
    for key in ("port", "user", "password"):
        parts[key] = parts.get(key) or defaults.get(key)
    parts["dbname"] = parts.get("dbname") or defaults.get("dbname") or parts["user"]
    env = {}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                     ("password", "PGPASSWORD"), ("dbname", "PGDATABASE")):
        if parts.get(key):
            env[var] = str(parts[key])
    env.setdefault("PGPASSWORD", "")
    return env


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_dbt(args: list[str], *, dsn: str, vars: dict | None = None, target: str = "postgres",
            project_dir: Path | str | None = None, target_path: Path | str | None = None,
            log_path: Path | str | None = None) -> DbtResult:
    """Run `dbt <args>` on the project against `dsn`; raise DbtFailed with one clear line on failure."""
    from dbt.cli.main import dbtRunner

    project = Path(project_dir or PROJECT_DIR)
    argv = list(args) + ["--project-dir", str(project), "--profiles-dir", str(project), "--target", target,
                         "--log-level", "warn", "--log-level-file", "debug", "--quiet"]
    if vars:
        argv += ["--vars", json.dumps(vars)]
    if target_path:
        argv += ["--target-path", str(target_path)]
    if log_path:
        argv += ["--log-path", str(log_path)]
    # A Ctrl-C inside dbt's in-process run is not safe to raise there: dbt turned one into an error
    # of its own (a mashumaro InvalidFieldValue, a traceback, "dbt run failed") and its threads went
    # on writing to the target path. Where Ctrl-C would be a KeyboardInterrupt, it waits for the run
    # to end (a second one raises at once); a caller's own StopSignals is left in place.
    # (StopSignals installs nothing off the main thread)
    defer = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    guard = StopSignals(again=None, signums=(signal.SIGINT,) if defer else ())
    with guard, _environ(libpq_env(dsn)):
        res = dbtRunner().invoke(argv)
    if guard.requested:
        raise KeyboardInterrupt
    nodes: dict[str, tuple[str, str]] = {}
    for r in getattr(res.result, "results", None) or []:
        nodes[r.node.unique_id] = (str(r.status), r.message or "")
    if res.success:
        return DbtResult(args=argv, nodes=nodes)
    failed = [f"{uid.split('.')[-1]}: {msg}" for uid, (status, msg) in nodes.items()
              if status in ("error", "fail", "runtime error")]
    if failed:
        first = " ".join(failed[0].split())
        raise DbtFailed(f"dbt {args[0]} failed: {first}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""))
    detail = " ".join(str(res.exception).split()) if res.exception else "see dbt/logs/dbt.log"
    raise DbtFailed(f"dbt {args[0]} failed: {detail}")
