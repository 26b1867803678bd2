"""Benchmark of incremental maintenance: ingest with every model deployed vs a raw COPY, empty vs
with history, and a full recomputation of flagged_transactions vs the per-batch incremental cost.

    python -m sentinel.bench_ivm [--rows 200000] [--batch 5000] [--history 1000000] [--dsn DSN]

Starts a throw-away embedded engine (or uses --dsn, a superuser DSN, creating a scratch database)
and prints figures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sentinel import schema
from sentinel.console import console, out
from sentinel.deploy import run_dbt

COLS = ("txn_id, card_id, customer_id, merchant_id, merchant_category, amount, currency, channel, country, "
        "lat, lon, device_id, event_time")
STAGE_DDL = ("create temp table if not exists bench_stage (like fraud.transactions including defaults) "
             "on commit delete rows")
CATEGORIES = ["grocery", "electronics", "travel", "atm", "restaurant", "fuel"]
CITIES = [("US", 40.71, -74.0), ("US", 34.05, -118.24), ("FR", 48.85, 2.35), ("GB", 51.5, -0.12),
          ("JP", 35.68, 139.69), ("BR", -23.55, -46.63), ("FJ", -18.14, 178.44), ("DE", 52.52, 13.4)]


class Stream:
    """Synthetic, roughly in-order transactions over `cards` cards, as COPY text batches."""

    def __init__(self, *, cards: int, seed: int, start: float, prefix: str, rate_per_s: float = 2000.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.cards = cards
        self.t = start
        self.prefix = prefix
        self.n = 0
        self.step = 1.0 / rate_per_s

    def batch(self, size: int) -> bytes:
        r = self.rng
        card = r.integers(0, self.cards, size)
        # mostly in order, some late by up to 5 minutes
        times = self.t + np.arange(size) * self.step - np.where(r.random(size) < 0.02, r.random(size) * 300, 0)
        self.t += size * self.step
        amount = np.round(np.exp(r.normal(3.5, 1.2, size)), 2).clip(0.5, 9999)
        city = (card + (r.random(size) < 0.01) * r.integers(1, len(CITIES), size)) % len(CITIES)
        located = r.random(size) < 0.7
        lines = []
        for i in range(size):
            c = CITIES[city[i]]
            lat, lon = (f"{c[1] + r.random() * 0.1:.5f}", f"{c[2] + r.random() * 0.1:.5f}") if located[i] else (r"\N", r"\N")
            ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(times[i])) + f".{int((times[i] % 1) * 1e6):06d}+00"
            lines.append(
                f"{self.prefix}{self.n + i}\tc{card[i]}\tu{card[i]}\tm{card[i] % 997}\t{CATEGORIES[card[i] % 6]}\t"
                f"{max(amount[i], 0.5):.2f}\tUSD\tpos\t{c[0]}\t{lat}\t{lon}\td{card[i]}-{int(r.random() < 0.01)}\t{ts}\n")
        self.n += size
        return "".join(lines).encode()


def ingest(conn: psycopg.Connection, target: str, stream: Stream, *, rows: int, batch: int) -> tuple[float, list[float]]:
    """COPY into a temp stage, then insert ... on conflict do nothing (the loader's SQL); rows/s, per-batch s."""
    conn.execute(STAGE_DDL)
    conn.commit()
    took: list[float] = []
    data = [stream.batch(batch) for _ in range(rows // batch)]  # generated before timing
    start = time.perf_counter()
    for payload in data:
        t = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"copy bench_stage ({COLS}) from stdin") as cp:
                cp.write(payload)
            cur.execute(f"insert into {target} ({COLS}) select {COLS} from bench_stage on conflict do nothing")
        conn.commit()
        took.append(time.perf_counter() - t)
    return len(data) * batch / (time.perf_counter() - start), took


def load_history(conn: psycopg.Connection, target: str, stream: Stream, *, rows: int, batch: int) -> None:
    """Fast history: the same ingest path (maintenance included), not timed."""
    done = 0
    while done < rows:
        n = min(batch * 10, rows - done)
        ingest(conn, target, stream, rows=n, batch=min(batch * 10, n))
        done += n
        console.print(f"  history {done:,}/{rows:,}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sentinel.bench_ivm", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per timed ingest run")
    ap.add_argument("--batch", type=int, default=5_000, help="rows per batch (loader batch size)")
    ap.add_argument("--history", type=int, default=1_000_000, help="rows of history before the second run")
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--dsn", help="superuser DSN of a server to use instead of a throw-away embedded engine")
    ap.add_argument("--json", action="store_true", help="print figures as JSON on stdout")
    args = ap.parse_args(argv)

    engine = None
    tmp = tempfile.TemporaryDirectory(prefix="sentinel-bench-")
    if args.dsn:
        admin = args.dsn
    else:
        from sentinel.engine import EmbeddedEngine, free_port
        engine = EmbeddedEngine(Path(tmp.name) / "home", port=free_port())
        console.print("starting a throw-away embedded engine ...")
        engine.up()
        admin = engine.dsn("owner", dbname="postgres")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    parts = conninfo_to_dict(admin)
    parts["dbname"] = name
    dsn = make_conninfo(**parts)
    figures: dict[str, float | int] = {}
    try:
        schema.apply(dsn, role_passwords={"sentinel_loader": uuid.uuid4().hex, "sentinel_analyst": uuid.uuid4().hex})
        t = time.perf_counter()
        run_dbt(["run"], dsn=dsn, target_path=Path(tmp.name) / "target", log_path=Path(tmp.name) / "logs")
        figures["dbt_run_s"] = round(time.perf_counter() - t, 2)
        with psycopg.connect(dsn) as conn:
            conn.execute("create schema bench_raw")
            conn.execute("create table bench_raw.transactions (like fraud.transactions including all)")
            conn.commit()
            base = 1_700_000_000.0
            raw_rate, _ = ingest(conn, "bench_raw.transactions", Stream(cards=args.cards, seed=1, start=base, prefix="r"),
                                 rows=args.rows, batch=args.batch)
            models = Stream(cards=args.cards, seed=1, start=base, prefix="t")
            empty_rate, empty_batches = ingest(conn, "fraud.transactions", models, rows=args.rows, batch=args.batch)
            figures.update(raw_copy_rows_per_s=round(raw_rate), models_rows_per_s_empty=round(empty_rate),
                           models_vs_raw=round(empty_rate / raw_rate, 2),
                           batch_ms_median_empty=round(1000 * float(np.median(empty_batches)), 1))
            console.print(f"raw COPY {raw_rate:,.0f} rows/s; with every model {empty_rate:,.0f} rows/s "
                          f"({empty_rate / raw_rate:.2f}x)")
            if args.history:
                load_history(conn, "fraud.transactions", models, rows=args.history, batch=args.batch)
                with psycopg.connect(dsn, autocommit=True) as ac:
                    ac.execute("vacuum analyze")
                hist_rate, hist_batches = ingest(conn, "fraud.transactions", models, rows=args.rows, batch=args.batch)
                n = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
                figures.update(history_rows=n, models_rows_per_s_history=round(hist_rate),
                               history_vs_empty=round(hist_rate / empty_rate, 2),
                               batch_ms_median_history=round(1000 * float(np.median(hist_batches)), 1))
                console.print(f"after {n:,} rows of history {hist_rate:,.0f} rows/s ({hist_rate / empty_rate:.2f}x empty)")
            flagged_sql = conn.execute(
                "select sql from sentinel_ivm.models where relation = 'fraud.flagged_transactions'").fetchone()[0]
            # the full recomputation: every upstream model's SQL, evaluated from the source
            chain = conn.execute("select relation, sql from sentinel_ivm.models").fetchall()
            n = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
            t = time.perf_counter()
            for _rel, model_sql in chain:
                conn.execute(f"select count(*) from ({model_sql}) x")
            full = time.perf_counter() - t
            t = time.perf_counter()
            conn.execute(f"select count(*) from ({flagged_sql}) x")
            flagged_only = time.perf_counter() - t
            conn.rollback()
            figures.update(full_recompute_rows=n, full_recompute_all_models_s=round(full, 2),
                           full_recompute_flagged_over_tables_s=round(flagged_only, 3))
            console.print(f"full recomputation of every model at {n:,} rows: {full:.2f} s "
                          f"(per-batch incremental: {figures.get('batch_ms_median_history', figures['batch_ms_median_empty'])} ms "
                          f"for {args.batch:,} rows)")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if engine is not None:
            engine.down()
        tmp.cleanup()
    if args.json:
        out.print(json.dumps(figures))
    else:
        for k, v in figures.items():
            out.print(f"{k}: {v}")


if __name__ == "__main__":
    main()
