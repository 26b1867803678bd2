"""Benchmark of incremental maintenance: ingest through the loader with every model deployed vs a
raw COPY, empty vs with history (in order, with 1 % of the rows late, and one batch older than all
its cards' history), and a full recomputation of the models (and of fraud.flagged_transactions at
1M rows) vs the per-batch cost. The empty run is repeated in a second scratch database right before
the history's timed runs and again after them, so that their ratio need not include how the
machine's speed drifted while the history loaded.
Where the machine's CPU went (Linux) is measured over the raw COPY, each empty run and the history's
continuing run: the cores busy, and CPU µs a row of the loader's own process and of the rest of the
machine (the server, with the embedded engine).

    python -m sentinel.bench_ivm [--rows 200000] [--batch 10000] [--writers 2] [--history 1000000] [--recompute-at 1000000] [--dsn DSN] [--profile]

Starts a throw-away embedded engine (or uses --dsn, a superuser DSN), works in a scratch database,
and prints figures; it asserts nothing. Rows come from the loader's generator and go through the
loader's writer, as `sentinel load` sends them (lists of rows, normal purchases as COPY lines).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from loader.bench import RAW_TABLE, baseline, scratch_database
from loader.generator import GeneratorConfig, generate, generate_batches
from loader.load import load
from loader.schema import COLUMNS
from loader.writer import Writers, format_copy_text
from sentinel.console import console, out
from sentinel.deploy import run_dbt
from sentinel.ivm.buckets import buckets


def ingest(dsn: str, batches: Iterator[list], *, batch: int, writers: int) -> tuple[float, float]:
    """Write generator batches through the loader's writers as `sentinel load` does (a batch leaves at
    `batch` rows or 200 ms); (rows/s, mean ms per batch and writer)."""
    summary = load(batches, Writers(dsn, count=writers, batch_rows=batch), batched=True)
    if summary.interrupted:  # load() reports a Ctrl-C as `interrupted` (its contract); here it ends the run
        raise KeyboardInterrupt
    return summary.rows_per_s, 1000 * summary.elapsed_s * writers / max(summary.batches, 1)


def parallel_baseline(dsn: str, rows: list[tuple], connections: int) -> float:
    """Rows/s of raw COPYs into the identical table (no models), the rows shared out by card bucket
    over `connections` connections sending at once, each its own pre-formatted COPY."""
    parts: list[list[tuple]] = [[] for _ in range(connections)]
    for row, b in zip(rows, buckets([row[1] for row in rows])):
        parts[b % connections].append(row)
    data = [format_copy_text(p) for p in parts]
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]
    errors: list[BaseException] = []

    def send(conn: psycopg.Connection, payload: bytes) -> None:
        try:
            with conn.cursor().copy(f"copy {RAW_TABLE} ({', '.join(COLUMNS)}) from stdin") as copy:
                copy.write(payload)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=send, args=(c, d)) for c, d in zip(conns, data)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - started
    finally:
        for c in conns:
            c.close()
    if errors:
        raise errors[0]
    return len(rows) / took


def stream(seed: int, count: int | None, cards: int, after: datetime | None = None) -> Iterator[list]:
    """What `sentinel load` sends: the generator's lists of rows, normal purchases as COPY lines."""
    return generate_batches(GeneratorConfig(seed=seed, count=count, cards=cards,
                                            start=after + timedelta(seconds=1) if after is not None else None))


def head(batches: Iterator[list], rows: int) -> Iterator[list]:
    """Whole lists from `batches` until at least `rows` rows; the rest stays in `batches`."""
    n = 0
    while n < rows and (chunk := next(batches, None)) is not None:
        n += len(chunk)
        yield chunk


def delayed(batches: Iterator[list], every: int, by: int) -> Iterator[list]:
    """The same rows, every `every`-th delivered `by` rows later than its place: late events, which
    the models must fold into the outputs they touch (each one's key takes the general path when a
    later batch of its bucket has gone before it)."""
    held: collections.deque = collections.deque()  # (due position, row)
    n = 0
    for chunk in batches:
        out = []
        for row in chunk:
            n += 1
            if n % every == 0:
                held.append((n + by, row))
            else:
                out.append(row)
            while held and held[0][0] <= n:
                out.append(held.popleft()[1])
        yield out
    yield [row for _, row in held]


@contextlib.contextmanager
def profiling(dsn: str, on: bool) -> Iterator[dict]:
    """With `on`, time the trigger functions of the runs inside (new sessions of the scratch
    database): yields a dict that gets {"profile_ms_per_1000_rows": {function: own ms per 1,000 rows}}."""
    out: dict = {}
    if not on:
        yield out
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        db = conn.info.dbname
        conn.execute(sql.SQL("alter database {} set track_functions = 'pl'").format(sql.Identifier(db)))
        conn.execute("select pg_stat_reset()")
        before = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
    yield out
    time.sleep(1)  # sessions report their counters when they end
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = conn.execute("select count(*) from fraud.transactions").fetchone()[0] - before
        rows = conn.execute("select schemaname || '.' || funcname, self_time from pg_stat_user_functions "
                            "order by self_time desc").fetchall()
    thousands = max(n / 1000, 1)
    out["profile_ms_per_1000_rows"] = {f: round(t / thousands, 2) for f, t in rows}
    for f, ms in out["profile_ms_per_1000_rows"].items():
        console.print(f"  {ms:7.2f} ms per 1,000 rows  {f}")


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, all) clock ticks of every core so far, from Linux's /proc/stat; None elsewhere. Busy is
    user, nice, system, irq and softirq time; idle, iowait and steal (the hypervisor running
    something else) are not. Guest time is inside user already."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 8:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return user + nice + system + irq + softirq, sum(ticks)


@contextlib.contextmanager
def cpu_use(rows: int | Callable[[], int], suffix: str) -> Iterator[dict]:
    """Where the machine's CPU went while `rows` rows (or as many as `rows()` counts once the block
    is over, outside the measurement) went through the block: the cores busy on
    average, the CPU µs a row of this process (the loader: its generator and writer threads) and of
    the rest of the machine (with the embedded engine: its server, the backends' maintenance SQL
    above all). Figures `cpu_*_<suffix>`; none where /proc/stat is not there."""
    out: dict = {}
    j0, r0 = _cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    yield out
    j1, r1 = _cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    rows = rows() if callable(rows) else rows
    if j0 is None or j1 is None or j1[1] == j0[1] or not rows:
        return
    cores = os.cpu_count() or 1
    wall_s = (j1[1] - j0[1]) / os.sysconf("SC_CLK_TCK") / cores
    busy_s = (j1[0] - j0[0]) / os.sysconf("SC_CLK_TCK")
    loader_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out.update({f"cpu_cores_busy_{suffix}": round(busy_s / wall_s, 2),
                f"cpu_us_per_row_loader_{suffix}": round(loader_s / rows * 1e6, 1),
                f"cpu_us_per_row_rest_{suffix}": round(max(busy_s - loader_s, 0) / rows * 1e6, 1)})


def checkpoint(dsn: str) -> None:
    """Start a timed run at the same point of the checkpoint cycle, empty or not: right after one,
    where every page a run touches first writes its full image to the WAL (the worst point for a
    large table; a run that a checkpoint started by the history's WAL happened to overlap would
    otherwise be slower by luck)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("checkpoint")


def counters(dsn: str) -> tuple[int, int, int]:
    """(full-page images written to the WAL, server-wide; index entries read and heap rows fetched
    through the per-card index): the index-only lookback reads fetch a heap row only where the
    visibility map does not yet show its page all-visible. Ended sessions report theirs within a second."""
    time.sleep(1)
    with psycopg.connect(dsn) as conn:
        fpi = conn.execute("select wal_fpi from pg_stat_wal").fetchone()[0]
        read, fetched = conn.execute("select idx_tup_read, idx_tup_fetch from pg_stat_user_indexes "
                                     "where indexrelid = 'fraud.transactions_card_time_idx'::regclass").fetchone()
    return fpi, read, fetched


def _deltas(before: tuple[int, int, int], after: tuple[int, int, int], rows: int, suffix: str) -> dict:
    fpi, read, fetched = (a - b for a, b in zip(after, before))
    return {f"wal_fpi_per_1000_rows_{suffix}": round(1000 * fpi / rows),
            f"card_index_heap_fetches_per_entry_read_{suffix}": round(fetched / read, 3) if read else None}


def probe(dsn: str, cards: int = 10_000, repeats: int = 5) -> dict:
    """What one descent of the per-card index costs at the table's present size: the median time of
    finding the latest row of each of `cards` cards that have rows (a sample, in key order, as the
    window group reads them; index-only), in µs per card, and the index's size. Each batch makes
    one such descent per card to read and one per row to insert; as the index outgrows the CPU
    caches, each costs more, with the same rows read."""
    with psycopg.connect(dsn) as conn:
        n = conn.execute("select reltuples::bigint from pg_class where oid = 'fraud.transactions'::regclass").fetchone()[0]
        share = min(100.0, 100.0 * 5 * cards / max(n, 1))
        keys = conn.execute(f"select array(select card_id from (select distinct card_id from fraud.transactions "
                            f"tablesample system ({share})) as s order by md5(card_id) limit %s)", (cards,)).fetchone()[0]
        keys.sort()
        query = ("select count(*) from unnest(%s::text[]) as k(card) cross join lateral (select t.event_time "
                 "from fraud.transactions as t where t.card_id = k.card order by t.event_time desc limit 1) as t")
        took = []
        for _ in range(repeats):
            t = time.perf_counter()
            conn.execute(query, (keys,))
            took.append(time.perf_counter() - t)
        size = conn.execute("select pg_relation_size('fraud.transactions_card_time_idx')").fetchone()[0]
    took.sort()
    return {"us_per_card": round(1e6 * took[len(took) // 2] / max(len(keys), 1), 2), "cards": len(keys),
            "index_mb": round(size / 2**20)}


def shifted_batch(dsn: str, rows: int, repeats: int = 2) -> dict:
    """One batch in a single transaction, rolled back, its ms (the best of `repeats`): the table's
    latest `rows` rows again (new txn_ids, the same cards and spacing), moved to just after the
    table's latest event (in order) and to just before its earliest (older than every card's whole
    history, the worst case of late data: every window output of those cards that the rows reach
    changes)."""
    took: dict[str, list[float]] = {"in_order": [], "older_than_history": []}
    with psycopg.connect(dsn) as conn:
        conn.execute("create temp table bench_shifted as select * from fraud.transactions "
                     f"order by event_time desc limit {int(rows)}")
        lo, hi, first, last = conn.execute(
            "select (select min(event_time) from fraud.transactions), (select max(event_time) from fraud.transactions), "
            "min(event_time), max(event_time) from bench_shifted").fetchone()
        conn.commit()
        moved = ", ".join({"txn_id": "'shifted-' || txn_id", "event_time": "event_time + %s"}.get(c, c) for c in COLUMNS)
        for _ in range(repeats):
            for kind, shift in (("in_order", hi - first + timedelta(seconds=1)),
                                ("older_than_history", lo - last - timedelta(seconds=1))):
                t = time.perf_counter()
                conn.execute(f"insert into fraud.transactions ({', '.join(COLUMNS)}) select {moved} from bench_shifted",
                             (shift,))
                took[kind].append(time.perf_counter() - t)
                conn.rollback()
    return {f"batch_ms_{k}_single": round(1000 * min(v), 1) for k, v in took.items()}


def redeploy_under_load(dsn: str, batches: Iterator[list], *, batch: int, writers: int,
                        relation: str = "fraud_intermediate.int_flags__velocity") -> dict:
    """A changed model (its SQL with a comment added: a full backfill, the same content) redeployed
    while the loader writes, first online and then under the lock alone: the seconds from asking
    for the deploy's lock to its commit (an upper bound of the writers' wait), and the deploy's."""
    from sentinel.ivm import deploy_model, online

    with psycopg.connect(dsn) as conn:
        model, model_sql, shape, loc = conn.execute(
            "select model, sql, shape, locator from sentinel_ivm.models where relation = %s", (relation,)).fetchone()
    stop = threading.Event()

    def feed() -> Iterator[list]:
        for b in batches:
            if stop.is_set():
                return
            yield b

    out: dict = {"redeploy_relation": relation}
    loader = threading.Thread(target=ingest, args=(dsn, feed()), kwargs={"batch": batch, "writers": writers})
    loader.start()
    try:
        time.sleep(2)
        for kind, connect in (("online", lambda: psycopg.connect(dsn)), ("locked", None)):
            marks: dict[str, float] = {}
            with psycopg.connect(dsn) as conn:
                t0 = time.perf_counter()
                res = deploy_model(conn.cursor(), model=model, relation=relation, sql=f"/* {kind} redeploy */\n{model_sql}",
                                   unique_key=loc if shape == "linear" else None, connect=connect,
                                   on_step=lambda step: marks.setdefault(step, time.perf_counter()))
                conn.commit()
                t1 = time.perf_counter()
            out[f"redeploy_{kind}_s"] = round(t1 - t0, 2)
            out[f"redeploy_{kind}_lock_s"] = round(t1 - marks.get("switch", t0), 2)
            if res.online is not None:
                online.finish(res.online)  # its capture and staging tables, after the switch's commit
                out.update(redeploy_online_backfill_s=round(res.online.backfill_s, 2),
                           redeploy_online_rounds=res.online.rounds,
                           redeploy_online_round_s=[round(x, 2) for x in res.online.round_s],
                           redeploy_online_switch_s=res.online.switch_s)
            time.sleep(2)
    finally:
        stop.set()
        loader.join()
    return out


def latest_event(dsn: str):
    with psycopg.connect(dsn) as conn:
        return conn.execute("select max(event_time) from fraud.transactions").fetchone()[0]


def admin_dsn(cleanup: contextlib.ExitStack, dsn: str | None) -> str:
    """`dsn` (a superuser's), else that of a throw-away embedded engine, stopped by `cleanup`."""
    if dsn:
        return dsn
    from sentinel.stack import temporary_stack

    console.print("starting a throw-away embedded engine ...")
    return cleanup.enter_context(temporary_stack(models=False)).engine.dsn("owner", dbname="postgres")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sentinel.bench_ivm", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per timed ingest run")
    ap.add_argument("--batch", type=int, default=10_000,
                    help="rows per batch (as `sentinel load --batch-rows`; a batch also leaves after 200 ms)")
    ap.add_argument("--history", type=int, default=1_000_000, help="rows of history before the second run")
    ap.add_argument("--recompute-at", type=int, default=1_000_000,
                    help="rows in the table where fraud.flagged_transactions' full recomputation is timed "
                         "during the history load (or its end, if it ends before)")
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--writers", type=int, default=2,
                    help="loader connections writing in parallel (as `sentinel load --writers`)")
    ap.add_argument("--dsn", help="superuser DSN of a server to use instead of a throw-away embedded engine")
    ap.add_argument("--json", action="store_true", help="print figures as JSON on stdout")
    ap.add_argument("--profile", action="store_true",
                    help="also report each maintenance trigger's own time per 1,000 rows in the last timed run "
                         "(track_functions = 'pl' on the scratch database)")
    args = ap.parse_args(argv)

    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sentinel-bench-")))
        figures = run(admin_dsn(cleanup, args.dsn), args, tmp)
    if args.json:
        out.print(json.dumps(figures))
    else:
        for k, v in figures.items():
            out.print(f"{k}: {v}")


def _vacuum_analyze(dsn: str) -> None:
    """After a history load: the visibility map and statistics the timed runs' plans rely on."""
    with psycopg.connect(dsn, autocommit=True) as ac:
        ac.execute("vacuum analyze")


def _count(dsn: str) -> int:
    """The rows in fraud.transactions."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("select count(*) from fraud.transactions").fetchone()[0]


def recompute_s(conn: psycopg.Connection, sqls: list[str]) -> float:
    """Seconds to evaluate each query in full and store its rows (`create temp table ... as`, in one
    transaction, rolled back): what a refresh that is not incremental does, bar the WAL of a
    regular table. Stored, not counted: `count(*)` over a model lets PostgreSQL skip the columns
    nobody reads (the flagged chain at 1M rows, a development measurement: 3.4–3.9 s counted,
    12.5–13.6 s stored)."""
    t = time.perf_counter()
    for i, sql in enumerate(sqls):
        conn.execute(f"create temp table __bench_recompute_{i} as {sql}")
    s = time.perf_counter() - t
    conn.rollback()
    return s


def recompute_flagged(dsn: str) -> dict:
    """The full recomputation of fraud.flagged_transactions from the source: its SQL and the SQL of
    every maintained model upstream of it (the rules and their helpers), each evaluated in full
    over the current tables, in dependency order (`recompute_s`)."""
    with psycopg.connect(dsn) as conn:
        models = {rel: (sql, inputs) for rel, sql, inputs in
                  conn.execute("select relation, sql, inputs from sentinel_ivm.models").fetchall()}
        order: list[str] = []

        def visit(rel: str) -> None:
            if rel in models and rel not in order:
                for upstream in models[rel][1]:
                    visit(upstream)
                order.append(rel)

        visit("fraud.flagged_transactions")
        conn.rollback()
        n = _count(dsn)
        s = recompute_s(conn, [models[rel][0] for rel in order])
    return {"flagged_recompute_rows": n, "flagged_recompute_s": round(s, 2), "flagged_recompute_models": len(order)}


def raw_and_empty(dsn: str, args: argparse.Namespace, *, parallel: bool = False) -> dict:
    """In a scratch database with every model deployed and no rows: a raw COPY of the stream's rows
    into the identical table (with `parallel`, also over the loader's connections), then the
    stream through the loader, right after a checkpoint."""
    out: dict = {}
    raw_rows = list(generate(GeneratorConfig(seed=1, count=args.rows, cards=args.cards)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        with cpu_use(len(raw_rows), "raw") as raw_cpu:
            out["raw"] = baseline(conn, raw_rows)
        conn.execute(f"truncate {RAW_TABLE}")
    if parallel and args.writers > 1:
        # the same rows over as many connections as the loader uses, pre-formatted: what the
        # server takes in raw when both cores work on it
        out["raw_parallel"] = parallel_baseline(dsn, raw_rows, args.writers)
    del raw_rows
    checkpoint(dsn)
    with cpu_use(args.rows, "empty") as cpu:
        out["rate"], out["batch_ms"] = ingest(dsn, stream(2, args.rows, args.cards), batch=args.batch, writers=args.writers)
    out["cpu"] = {**raw_cpu, **cpu}
    return out


def empty_again(admin: str, passwords: dict[str, str], tmp: Path, args: argparse.Namespace,
                suffix: str = "adjacent") -> dict:
    """The empty-table run repeated in a second scratch database, the same stream as the first:
    the empty rate next to the history's in time (its figures named `..._<suffix>`)."""
    with scratch_database(admin, role_passwords=passwords) as dsn:
        run_dbt(["run"], dsn=dsn, target_path=tmp / f"target-{suffix}", log_path=tmp / f"logs-{suffix}")
        e = raw_and_empty(dsn, args)
    return {f"raw_copy_rows_per_s_{suffix}": round(e["raw"]), f"models_rows_per_s_empty_{suffix}": round(e["rate"]),
            f"models_vs_raw_{suffix}": round(e["rate"] / e["raw"], 2),
            f"batch_ms_mean_empty_{suffix}": round(e["batch_ms"], 1),
            **{f"{k}_{suffix}": v for k, v in e["cpu"].items()}}


def run(admin: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Every figure, in a scratch database on the server of `admin` (dropped afterwards)."""
    figures: dict[str, float | int] = {}
    passwords = {"sentinel_loader": uuid.uuid4().hex, "sentinel_analyst": uuid.uuid4().hex}
    with scratch_database(admin, role_passwords=passwords) as dsn:
        t = time.perf_counter()
        run_dbt(["run"], dsn=dsn, target_path=tmp / "target", log_path=tmp / "logs")
        figures["dbt_run_s"] = round(time.perf_counter() - t, 2)
        e = raw_and_empty(dsn, args, parallel=True)
        raw_rate, empty_rate, empty_batch_ms = e["raw"], e["rate"], e["batch_ms"]
        if "raw_parallel" in e:
            figures["raw_copy_parallel_rows_per_s"] = round(e["raw_parallel"])
        figures.update(raw_copy_rows_per_s=round(raw_rate), models_rows_per_s_empty=round(empty_rate),
                       models_vs_raw=round(empty_rate / raw_rate, 2), batch_ms_mean_empty=round(empty_batch_ms, 1),
                       writers=args.writers, **e["cpu"])
        pe = probe(dsn)
        figures.update(card_index_probe_us_empty=pe["us_per_card"], card_index_mb_empty=pe["index_mb"])
        if "raw_copy_parallel_rows_per_s" in figures:
            figures["models_vs_raw_parallel"] = round(empty_rate / figures["raw_copy_parallel_rows_per_s"], 2)
        console.print(f"raw COPY {raw_rate:,.0f} rows/s; loader with every model {empty_rate:,.0f} rows/s "
                      f"({empty_rate / raw_rate:.2f}x)")
        if args.history:
            # One stream: the timed rows continue the history's cards (a seed has its own cards),
            # so each card's windows and first uses meet its own past, as in production.
            console.print(f"loading {args.history:,} rows of history ...")
            rows = stream(3, None, args.cards, after=latest_event(dsn))  # as long as the phases below take
            # the history in two parts: up to `--recompute-at` rows in the table (or all of it, if it
            # ends before), where fraud.flagged_transactions' full recomputation is timed against
            # the incremental batches that follow it
            before = _count(dsn)
            first = min(args.history, max(0, args.recompute_at - before))
            seg_rate, seg_ms = ingest(dsn, head(rows, first), batch=args.batch, writers=args.writers)
            _vacuum_analyze(dsn)
            figures.update(recompute_flagged(dsn))
            rest = args.history - first
            if rest:
                # the batches right after it (as many rows as a timed run: a mean, not one batch),
                # else those that led up to it
                seg_rate, seg_ms = ingest(dsn, head(rows, min(rest, args.rows)), batch=args.batch, writers=args.writers)
                ingest(dsn, head(rows, rest - min(rest, args.rows)), batch=args.batch, writers=args.writers)
                _vacuum_analyze(dsn)
            figures.update(flagged_recompute_batch_ms_mean=round(seg_ms, 1), flagged_recompute_vs_batch=round(
                figures["flagged_recompute_s"] * 1000 / seg_ms, 1) if seg_ms else None)
            console.print(f"full recomputation of fraud.flagged_transactions at {figures['flagged_recompute_rows']:,} rows: "
                          f"{figures['flagged_recompute_s']} s ({figures['flagged_recompute_models']} models), against "
                          f"{seg_ms:,.0f} ms per incremental batch of {args.batch:,} rows ({seg_rate:,.0f} rows/s)")
            # The empty table once more, right before the history's timed runs: the machine's speed
            # drifts by a fifth and more within minutes, and the history took them.
            adjacent = empty_again(admin, passwords, tmp, args)
            figures.update(adjacent)
            console.print(f"empty table again: {adjacent['models_rows_per_s_empty_adjacent']:,} rows/s, raw COPY "
                          f"{adjacent['raw_copy_rows_per_s_adjacent']:,} rows/s")
            checkpoint(dsn)
            with profiling(dsn, args.profile) as profile:
                c0 = counters(dsn)  # after profiling's pg_stat_reset, which zeroes the index counters
                hist_rate, hist_batch_ms = ingest(dsn, head(rows, args.rows), batch=args.batch, writers=args.writers)
                c1 = counters(dsn)
            figures.update(profile)
            # The same stream on, with no checkpoint in between: most pages the batches touch have
            # written their full image since the last one (where a long stream spends most of a
            # checkpoint cycle).
            before_steady = _count(dsn)
            with cpu_use(lambda: _count(dsn) - before_steady, "history_steady") as cpu:
                steady_rate, steady_batch_ms = ingest(dsn, head(rows, args.rows), batch=args.batch, writers=args.writers)
            figures.update(cpu)
            c2 = counters(dsn)
            n = _count(dsn)
            # The stream on again, 1 % of its rows each delivered a whole round of batches late
            # (behind rows of its bucket that later batches carried): out-of-order data.
            late_by = args.batch * args.writers
            late_rate, late_batch_ms = ingest(dsn, delayed(head(rows, args.rows), every=100, by=late_by),
                                              batch=args.batch, writers=args.writers)
            figures.update(models_rows_per_s_late=round(late_rate), late_vs_steady=round(late_rate / steady_rate, 2) if steady_rate else None,
                           batch_ms_mean_late=round(late_batch_ms, 1), late_share=0.01, late_by_rows=late_by)
            console.print(f"with 1 % of the rows {late_by:,} rows late: {late_rate:,.0f} rows/s "
                          f"({figures['late_vs_steady']}x in order)")
            # ... and once more right after them (after the late run, as its checkpoint is the
            # server's): the two empty runs bracket the history's, so the ratio to their mean
            # cancels a drift of the machine that is steady over those minutes
            after = empty_again(admin, passwords, tmp, args, suffix="after")
            figures.update(after)
            bracket = (adjacent["models_rows_per_s_empty_adjacent"] + after["models_rows_per_s_empty_after"]) / 2
            console.print(f"empty table after them: {after['models_rows_per_s_empty_after']:,} rows/s, raw COPY "
                          f"{after['raw_copy_rows_per_s_after']:,} rows/s")
            # A detection engineer's `dbt run` of a changed model while the loader writes.
            rd = redeploy_under_load(dsn, rows, batch=args.batch, writers=args.writers)
            figures.update(rd)
            console.print(f"redeploy of {rd['redeploy_relation']} under load: online {rd['redeploy_online_s']} s, "
                          f"the lock held {rd['redeploy_online_lock_s']} s (backfill {rd['redeploy_online_backfill_s']} s, "
                          f"then {' + '.join(map(str, rd['redeploy_online_rounds']))} captured changes); under the lock "
                          f"alone {rd['redeploy_locked_s']} s")
            # One batch of the cards' own rows older than all their history, against the same batch
            # in order: what a late row costs at its worst, as the history grows.
            sb = shifted_batch(dsn, args.batch)
            figures.update(sb, older_than_history_vs_in_order=round(
                sb["batch_ms_older_than_history_single"] / sb["batch_ms_in_order_single"], 1))
            console.print(f"one {args.batch:,}-row batch older than all its cards' history: "
                          f"{sb['batch_ms_older_than_history_single']:,.0f} ms, in order {sb['batch_ms_in_order_single']:,.0f} ms")
            ph = probe(dsn)
            figures.update(card_index_probe_us_history=ph["us_per_card"], card_index_mb_history=ph["index_mb"])
            console.print(f"one per-card index descent: {pe['us_per_card']} µs at {pe['index_mb']} MB of index, "
                          f"{ph['us_per_card']} µs at {ph['index_mb']} MB")
            figures.update(history_rows=n - args.rows, models_rows_per_s_history=round(hist_rate),
                           history_vs_empty=round(hist_rate / empty_rate, 2), batch_ms_mean_history=round(hist_batch_ms, 1),
                           history_vs_empty_adjacent=round(hist_rate / adjacent["models_rows_per_s_empty_adjacent"], 2),
                           history_steady_vs_empty_adjacent=round(
                               steady_rate / adjacent["models_rows_per_s_empty_adjacent"], 2),
                           history_vs_empty_bracket=round(hist_rate / bracket, 2),
                           history_steady_vs_empty_bracket=round(steady_rate / bracket, 2),
                           **_deltas(c0, c1, args.rows, "history"),
                           models_rows_per_s_history_steady=round(steady_rate),
                           history_steady_vs_empty=round(steady_rate / empty_rate, 2),
                           batch_ms_mean_history_steady=round(steady_batch_ms, 1),
                           **_deltas(c1, c2, args.rows, "history_steady"))
            console.print(f"after {n - args.rows:,} rows of history {hist_rate:,.0f} rows/s ({hist_rate / empty_rate:.2f}x "
                          f"empty, {figures['history_vs_empty_adjacent']:.2f}x the empty run next to it, "
                          f"{figures['history_vs_empty_bracket']:.2f}x the mean of those before and after) right after a "
                          f"checkpoint, {steady_rate:,.0f} rows/s ({steady_rate / empty_rate:.2f}x, "
                          f"{figures['history_steady_vs_empty_adjacent']:.2f}x, "
                          f"{figures['history_steady_vs_empty_bracket']:.2f}x) continuing")
        with psycopg.connect(dsn) as conn:
            # the full recomputation: every model's SQL, evaluated from the source
            chain = conn.execute("select relation, sql from sentinel_ivm.models").fetchall()
            flagged_sql = dict(chain)["fraud.flagged_transactions"]
            n = _count(dsn)
            conn.rollback()
            full = recompute_s(conn, [model_sql for _rel, model_sql in chain])
            flagged_only = recompute_s(conn, [flagged_sql])
        figures.update(full_recompute_rows=n, full_recompute_all_models_s=round(full, 2),
                       full_recompute_flagged_over_tables_s=round(flagged_only, 3))
        console.print(f"full recomputation of every model at {n:,} rows: {full:.2f} s (per-batch incremental: "
                      f"{figures.get('batch_ms_mean_history', figures['batch_ms_mean_empty'])} ms "
                      f"for {args.batch:,} rows)")
    return figures


if __name__ == "__main__":
    main()
