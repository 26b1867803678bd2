"""The `sentinel` command: thin commands that build a Settings object and call the library."""
from __future__ import annotations

import json
import shlex
import signal
import sys
import threading

import click

from sentinel import __version__
from sentinel.config import ROLES, Settings
from sentinel.console import console, error, out
from sentinel.errors import SentinelError, one_line

EXAMPLES = """
\b
Examples:
  sentinel demo                      # engine + models + live synthetic stream + alerts
  sentinel up                        # start (or reuse) the embedded engine, deploy the models
  psql "$(sentinel dsn)"             # connect; try: select * from fraud.flagged_transactions
  sentinel load --count 100000       # stream synthetic transactions
  sentinel load --from txns.csv.gz   # replay a file
  sentinel alerts --sink stdout --sink file:alerts.ndjson
  SENTINEL_DSN=postgresql://... sentinel up   # use another PostgreSQL instead
"""


@click.group(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", envvar="SENTINEL_HOME", type=click.Path(file_okay=False),
              help="Embedded engine's data directory [env SENTINEL_HOME; default ./.sentinel].")
@click.option("--dsn", "dsn", envvar="SENTINEL_DSN",
              help="Use this server instead of the embedded engine [env SENTINEL_DSN].")
@click.version_option(__version__, prog_name="sentinel")
@click.pass_context
def cli(ctx: click.Context, home: str | None, dsn: str | None) -> None:
    """Sentinel: real-time card-fraud detection, SQL first."""
    ctx.obj = Settings.from_env(home=home, dsn=dsn)


pass_settings = click.pass_obj


@cli.command()
@click.option("--models/--no-models", default=True, show_default=True,
              help="Deploy the dbt models after applying sql/.")
@click.option("--engine", "engine_kind", type=click.Choice(["postgres", "risingwave", "materialize"]),
              default="postgres", show_default=True,
              help="Kind of server SENTINEL_DSN points at (the embedded engine is PostgreSQL).")
@pass_settings
def up(settings: Settings, models: bool, engine_kind: str) -> None:
    """Start or reuse the embedded engine, apply sql/, deploy the models; print the DSN."""
    from sentinel.stack import bring_up

    stack = bring_up(settings, models=models, engine_kind=engine_kind, on_step=console.print)
    console.print('connect with: psql "$(sentinel dsn)"')
    out.print(stack.owner_dsn)


@cli.command()
@pass_settings
def down(settings: Settings) -> None:
    """Stop the embedded engine cleanly; its data stays in SENTINEL_HOME."""
    if not settings.embedded:
        raise SentinelError("SENTINEL_DSN is set: Sentinel did not start that server and will not stop it")
    stopped = settings.engine().down()
    console.print("engine stopped" if stopped else "engine was not running")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_settings
def status(settings: Settings, as_json: bool) -> None:
    """Say what runs: the embedded engine (or SENTINEL_DSN) and what it holds."""
    info: dict = {"version": __version__}
    if settings.embedded:
        st = settings.engine().status()
        info.update(engine="embedded", home=str(st.home), initialized=st.initialized, running=st.running,
                    pid=st.pid, port=st.port, data_mb=round(st.data_bytes / 1e6, 1) if st.data_bytes else None)
        dsn = settings.engine().dsn("owner") if st.running else None
    else:
        info.update(engine="external")
        dsn = settings.dsn
    if dsn:
        info.update(_database_summary(dsn))
    if as_json:
        out.print(json.dumps(info, default=str))
        return
    for key, value in info.items():
        console.print(f"{key:>14}: {value}")


def _database_summary(dsn: str) -> dict:
    import psycopg

    from sentinel import schema

    summary: dict = {}
    try:
        with schema.connect(dsn) as conn:
            summary["server"] = conn.execute("select version()").fetchone()[0].split(" on ")[0]
            row = conn.execute("select to_regclass('fraud.transactions') is not null").fetchone()
            if row[0]:
                estimate = conn.execute(
                    "select reltuples::bigint from pg_class where oid = 'fraud.transactions'::regclass"
                ).fetchone()[0]
                if estimate < 100_000:  # never analyzed, or small enough to count exactly
                    estimate = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
                summary["transactions"] = estimate
            models = conn.execute(
                "select count(*) from information_schema.tables where table_schema in ('fraud', 'fraud_intermediate')"
                " and table_name <> 'transactions'"
            ).fetchone()[0]
            summary["relations"] = models
    except SentinelError as exc:
        summary["database"] = f"unreachable: {exc}"
    except psycopg.Error as exc:  # reachable, but this role may not read what the summary counts
        summary["database"] = f"error: {one_line(exc)}"
    return summary


@cli.command()
@click.option("--role", type=click.Choice(ROLES), default="owner", show_default=True,
              help="owner (runs sql/ and dbt), loader (insert only) or analyst (read-only).")
@click.option("--env", "as_env", is_flag=True, help="Print `export PG...=` lines for psql and `dbt` instead.")
@pass_settings
def dsn(settings: Settings, role: str, as_env: bool) -> None:
    """Print a libpq DSN for psql, psycopg and BI tools (or PG* environment variables)."""
    from sentinel.config import resolve_dsn

    value = resolve_dsn(role, settings=settings)
    if not as_env:
        out.print(value)
        return
    from sentinel.deploy import libpq_env

    for var, text in libpq_env(value).items():
        if text:
            out.print(f"export {var}={shlex.quote(text)}")


def _register_commands() -> None:
    """Attach the commands that live in the loader and alerts packages, and the end-to-end ones."""
    from alerts.cli import alerts
    from loader.cli import load
    from sentinel.bench import bench
    from sentinel.demo import demo

    for command in (load, alerts, demo, bench):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: map failures to one line and an exit code; never a traceback for user errors."""
    try:
        # Python's own Ctrl-C (KeyboardInterrupt) again, after `sentinel.__main__`'s quiet exit while
        # the modules loaded: switched here, inside the handling below, so that a Ctrl-C landing
        # in the switch itself is one line too (it had been a traceback: 1 of 300 signals)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        rv = cli.main(args=argv, prog_name="sentinel", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        error("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SentinelError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
