"""Where the server's CPU goes while the loader ingests with every model deployed, by sampling.

    python -m sentinel.bench_perf [--history 1000000] [--rows 200000] [--dsn DSN] [--json]

`perf record -a --call-graph dwarf` samples every core while the stream goes through the loader
(as `sentinel.bench_ivm` times it, after `--history` rows); the PostgreSQL processes' samples are
then split by their call stacks into the insert of the rows themselves (COPY's parsing, and the
heap and index insert of `fraud.transactions`), the maintenance triggers on the source, and the
triggers those fire in turn (the models over models); and the source's triggers by the executor
node whose own work a sample is (its innermost plan node: a sort, a window aggregate, a hash join's
build, an index read, an insert, an `on conflict` check ...). Needs `perf` and the right to sample
the whole machine (root, or kernel.perf_event_paranoid <= 0). A development tool: it asserts nothing.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg

from loader.bench import scratch_database
from sentinel.bench_ivm import admin_dsn, checkpoint, head, ingest, latest_event, stream
from sentinel.console import console, out
from sentinel.deploy import run_dbt

# A plan node's own work: the innermost of these frames in a sample's stack (what it calls that is
# not a plan node, such as expression evaluation, tuple copies or index insertion, counts as its own).
NODE = re.compile(r"^(Exec(Sort|WindowAgg|Agg|HashJoin|NestLoop|MergeJoin|Limit|Append|MergeAppend|Material|"
                  r"Result|Unique|SetOp|SubqueryScan|FunctionScan|Insert|Update|Delete|ModifyTable|IncrementalSort|"
                  r"Memoize|LockRows|ProjectSet)|MultiExecHash|IndexOnlyNext|IndexNext|BitmapHeapNext|SeqNext|"
                  r"CteScanNext|SubqueryNext)$")
NAMES = {"ExecSort": "sort", "ExecWindowAgg": "window aggregate", "ExecAgg": "aggregate",
         "MultiExecHash": "hash join: build", "ExecHashJoin": "hash join: probe", "IndexOnlyNext": "index-only read",
         "IndexNext": "index read", "SeqNext": "sequential read", "CteScanNext": "CTE scan (tuplestore)",
         "ExecModifyTable": "insert/update/delete", "ExecInsert": "insert (heap and indexes)",
         "ExecUpdate": "update", "ExecDelete": "delete", "ExecNestLoop": "nested loop", "ExecLimit": "limit",
         "ExecAppend": "append", "ExecResult": "result", "ExecCheckIndexConstraints": "on conflict: the key's check",
         "ExecOnConflictUpdate": "on conflict: the update"}


def samples(script: Iterable[str]) -> Iterator[list[str]]:
    """Each PostgreSQL sample's stack (innermost frame first) from `perf script` output."""
    stack: list[str] | None = None
    for line in script:
        if not line.strip():
            continue
        if not line[0].isspace():
            if stack:
                yield stack
            stack = [] if line.split(None, 1)[0] == "postgres" else None
            continue
        if stack is not None:
            parts = line.split()
            if len(parts) >= 2:
                stack.append(parts[1].split("+0x")[0])
    if stack:
        yield stack


def breakdown(stacks: Iterable[list[str]]) -> dict:
    """Shares of the server's samples: by part, and the source's triggers by plan node."""
    parts: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    n = 0
    for s in stacks:
        n += 1
        depth = s.count("AfterTriggerEndQuery")
        if depth == 0:
            part = ("insert into fraud.transactions (heap and indexes)" if "CopyMultiInsertBufferFlush" in s
                    else "COPY: reading and parsing the rows" if "CopyFrom" in s else "other (vacuum, checkpoints, ...)")
        elif depth == 1:
            part = "triggers on fraud.transactions (the models over it)"
            node = next((f for f in s if NODE.match(f)), None)
            if "ExecCheckIndexConstraints" in s:
                node = "ExecCheckIndexConstraints"
            elif "ExecOnConflictUpdate" in s:
                node = "ExecOnConflictUpdate"
            elif node is None:
                node = "planning" if "pg_plan_queries" in s else "plpgsql and SPI"
            nodes[NAMES.get(node, node)] += 1
        else:
            part = "triggers fired by those (models over models, the alert log)"
        parts[part] += 1
    share = (lambda c: {k: round(100 * v / n, 1) for k, v in c.most_common()}) if n else (lambda c: {})
    return {"samples": n, "parts_pct": share(parts), "source_triggers_by_node_pct": share(nodes)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sentinel.bench_perf", description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=int, default=1_000_000, help="rows loaded before the sampled run")
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the sampled run")
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--frequency", type=int, default=199, help="samples per second and core")
    ap.add_argument("--dsn", help="superuser DSN of a server to use instead of a throw-away embedded engine")
    ap.add_argument("--json", action="store_true", help="print figures as JSON on stdout")
    args = ap.parse_args(argv)
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("error: perf is not installed (Debian: apt-get install linux-perf)")
    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sentinel-perf-")))
        admin = admin_dsn(cleanup, args.dsn)
        passwords = {"sentinel_loader": uuid.uuid4().hex, "sentinel_analyst": uuid.uuid4().hex}
        dsn = cleanup.enter_context(scratch_database(admin, role_passwords=passwords))
        run_dbt(["run"], dsn=dsn, target_path=tmp / "target", log_path=tmp / "logs")
        rows = stream(3, None, args.cards, after=latest_event(dsn))
        if args.history:
            console.print(f"loading {args.history:,} rows of history ...")
            ingest(dsn, head(rows, args.history), batch=10_000, writers=args.writers)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("vacuum analyze")
        checkpoint(dsn)
        data = tmp / "perf.data"
        rec = subprocess.Popen([perf, "record", "-q", "-a", "-F", str(args.frequency), "--call-graph", "dwarf,16384",
                                "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            rate, _ms = ingest(dsn, head(rows, args.rows), batch=10_000, writers=args.writers)
        finally:
            rec.send_signal(2)  # perf writes its file on SIGINT
            _o, err = rec.communicate(timeout=120)
        if rec.returncode not in (0, -2, 130) or not data.exists():
            raise SystemExit(f"error: perf record failed: {err.strip()[-500:]}")
        script = subprocess.Popen([perf, "script", "-i", str(data), "-F", "comm,ip,sym"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        assert script.stdout is not None
        figures = {"rows_per_s": round(rate), "history_rows": args.history, **breakdown(samples(script.stdout))}
        script.wait()
    if args.json:
        out.print(json.dumps(figures))
        return
    console.print(f"{figures['rows_per_s']:,} rows/s after {args.history:,} rows; {figures['samples']:,} server samples")
    for title, key in (("server CPU", "parts_pct"), ("the source's triggers, by plan node", "source_triggers_by_node_pct")):
        out.print(f"{title} (% of the server's samples):")
        for k, v in list(figures[key].items())[:15]:
            out.print(f"  {v:5.1f}  {k}")


if __name__ == "__main__":
    main()
