"""`python -m loader.bench`: the loader against a raw psycopg COPY, same server, same run.

In a scratch database (sql/postgres applied, no detection models deployed) it times
1. the baseline: rows pre-built in memory, then one raw `COPY ... FROM STDIN` with `write_row`
   into `bench_raw.transactions`, a table identical to `fraud.transactions` (columns,
   constraints, indexes);
2. the loader: `python -m loader.cli --count N` as a subprocess — generation, batching and
   idempotent writing into `fraud.transactions` — its rate taken from its own JSON summary;
alternating them `--repeat` times (the machine is shared: the median is reported), then a
long loader run (`--rss-count`) whose peak RSS shows memory stays flat. Figures, not asserts.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader.generator import GeneratorConfig, generate
from loader.schema import COLUMNS

REPO = Path(__file__).resolve().parent.parent
RAW_TABLE = "bench_raw.transactions"


def _owner_dsn(dsn: str | None) -> str:
    if dsn:
        return dsn
    from sentinel.config import resolve_dsn

    return resolve_dsn("owner")


def _with_db(dsn: str, dbname: str) -> str:
    parts = conninfo_to_dict(dsn)
    parts["dbname"] = dbname
    return make_conninfo(**parts)


@contextlib.contextmanager
def scratch_database(owner: str, *, role_passwords: dict[str, str] | None = None) -> Iterator[str]:
    """A new database on `owner`'s server with sql/postgres applied and `bench_raw.transactions`,
    a table identical to `fraud.transactions` for the raw COPY baseline; yields its DSN and
    drops it afterwards."""
    from sentinel import schema

    dbname = f"sentinel_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(owner, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    try:
        dsn = _with_db(owner, dbname)
        schema.apply(dsn, role_passwords=role_passwords)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create schema bench_raw")
            conn.execute(f"create table {RAW_TABLE} (like fraud.transactions including all)")
        yield dsn
    finally:
        with psycopg.connect(owner, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


def _clear(conn: psycopg.Connection) -> None:
    conn.execute("alter table fraud.transactions disable trigger transactions_append_only")
    conn.execute("truncate fraud.transactions, bench_raw.transactions")
    conn.execute("alter table fraud.transactions enable trigger transactions_append_only")
    conn.execute("checkpoint")


def baseline(conn: psycopg.Connection, rows: list[tuple]) -> float:
    """Rows/s of one raw COPY of pre-built rows into the identical table."""
    cols = ", ".join(COLUMNS)
    started = time.perf_counter()
    with conn.transaction():
        with conn.cursor() as cur, cur.copy(f"copy {RAW_TABLE} ({cols}) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
    return len(rows) / (time.perf_counter() - started)


def loader_run(dsn: str, count: int, seed: int, batch_rows: int, writers: int = 2) -> dict:
    """Run `python -m loader.cli` and return its JSON summary (with its own peak RSS) and wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "loader.cli", "--dsn", dsn, "--count", str(count), "--seed", str(seed),
         "--batch-rows", str(batch_rows), "--writers", str(writers), "--json", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise click.ClickException(f"loader failed: {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    summary["wall_s"] = wall
    return summary


@click.command()
@click.option("--dsn", help="Owner DSN of the server [default: the embedded engine's].")
@click.option("--count", type=click.IntRange(min=1000), default=300_000, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--rss-count", type=click.IntRange(min=0), default=2_000_000, show_default=True,
              help="Rows of the long run that measures peak memory (0: skip).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--writers", type=click.IntRange(min=1), default=2, show_default=True,
              help="The loader's connections (`sentinel load --writers`).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
def main(dsn: str | None, count: int, repeat: int, rss_count: int, batch_rows: int, writers: int,
         as_json: bool) -> None:
    """Compare the loader's rate with a raw psycopg COPY and report its peak memory."""
    from sentinel.console import console

    with scratch_database(_owner_dsn(dsn)) as bench_dsn:
        with psycopg.connect(bench_dsn, autocommit=True) as conn:
            console.print(f"pre-building {count:,} rows for the baseline…")
            rows = list(generate(GeneratorConfig(seed=1, count=count)))
            raw_rates, loader_rates, wall_rates = [], [], []
            for i in range(repeat):
                _clear(conn)
                raw_rates.append(baseline(conn, rows))
                _clear(conn)
                run = loader_run(bench_dsn, count, 1, batch_rows, writers)
                loader_rates.append(run["rows_per_s"])
                wall_rates.append(count / run["wall_s"])
                console.print(f"round {i + 1}: raw COPY {raw_rates[-1]:,.0f} rows/s · loader "
                              f"{loader_rates[-1]:,.0f} rows/s (with start-up {wall_rates[-1]:,.0f}) "
                              f"· ratio {loader_rates[-1] / raw_rates[-1]:.2f}")
            del rows
            rss = None
            if rss_count:
                _clear(conn)
                console.print(f"long run: {rss_count:,} rows for peak memory…")
                long_run = loader_run(bench_dsn, rss_count, 2, batch_rows, writers)
                rss = round(long_run["peak_rss_mb"], 1)
        raw, ldr, wall = (statistics.median(x) for x in (raw_rates, loader_rates, wall_rates))
        # back-to-back pairs see the same machine load: the median of per-round ratios is the figure
        ratios = [lr / rr for lr, rr in zip(loader_rates, raw_rates)]
        wall_ratios = [wr / rr for wr, rr in zip(wall_rates, raw_rates)]
        figures = {
            "count": count,
            "writers": writers,
            "repeat": repeat,
            "raw_copy_rows_per_s": round(raw),
            "loader_rows_per_s": round(ldr),
            "loader_rows_per_s_with_startup": round(wall),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_with_startup": round(statistics.median(wall_ratios), 3),
            "round_ratios": [round(x, 3) for x in ratios],
            "rss_count": rss_count,
            "loader_peak_rss_mb": rss,
        }
    if as_json:
        click.echo(json.dumps(figures))
    console.print(
        f"raw COPY {figures['raw_copy_rows_per_s']:,} rows/s · loader {figures['loader_rows_per_s']:,} rows/s "
        f"· ratio {figures['ratio']:.2f} (median of rounds; with start-up {figures['ratio_with_startup']:.2f})"
        + (f" · loader peak RSS {rss:.0f} MB over {rss_count:,} rows" if rss is not None else "")
    )


if __name__ == "__main__":
    main()
