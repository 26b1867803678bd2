"""`python -m alerts.bench`: latency from a transaction's commit to its alert in the file sink.

Measurement. A writer process streams the loader's synthetic transactions (loader.generator, the
rows `sentinel load` sends) at --rate into an engine with every default model deployed, one COPY
transaction per --batch-ms, and notes the wall-clock time each COMMIT returns, keyed by the
transaction id. The listener runs in this process with one file sink whose deliveries are timed
right after write+flush returns. Latency = flush time - COMMIT-returned time of the transaction
that flagged the row (same machine, same clock): from the moment the commit is acknowledged, and
so visible, to the alert line being in the file. Alerts of the first --warmup seconds are left out.

Also printed: the same from the server's commit timestamp (`pg_xact_commit_timestamp`, taken as the
commit record is written, before its WAL flush; it adds the commit's own fsync to the figure), and
from the change log's logged_at (inside the transaction).
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import click
import psycopg

from alerts.listener import Listener
from alerts.model import Alert
from alerts.sinks import FileSink
from sentinel.measure import percentile


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class TimedFileSink(FileSink):
    """The file sink, noting when each alert was flushed."""

    def __init__(self, path: str) -> None:
        super().__init__(path, name="bench-file")
        self.flushed: list[tuple[int, str, float]] = []
        self._lock = threading.Lock()

    def deliver(self, alerts: Sequence[Alert]) -> None:
        super().deliver(alerts)
        now = time.time()
        with self._lock:
            self.flushed.extend((a.seq, a.op, now) for a in alerts)


@contextlib.contextmanager
def _temporary_engine():
    """A throw-away engine with every default model deployed and commit timestamps tracked."""
    from sentinel.stack import temporary_stack

    with temporary_stack(prefix="sentinel-alerts-bench-",
                         on_step=lambda msg: click.echo(msg, err=True)) as stack:
        with psycopg.connect(stack.owner_dsn, autocommit=True) as conn:
            conn.execute("alter system set track_commit_timestamp = on")
        stack.engine.down()  # the setting needs a restart
        stack.engine.up()
        yield stack.owner_dsn


def timed_load(dsn: str, rate: float, seconds: float, batch_ms: float, fraud_share: float | None,
               out_path: str) -> None:
    """The writer process: generated rows at `rate`/s, one COPY transaction per batch, and the time
    each COMMIT returned (JSON: xid -> epoch seconds, plus totals) written to `out_path`."""
    from loader.cli import parse_shares
    from loader.generator import GeneratorConfig, generate
    from loader.schema import COLUMNS
    from loader.writer import format_copy_text

    rows = generate(GeneratorConfig(seed=7, rate=rate, shares=parse_shares((), fraud_share)))
    copy_sql = f"copy fraud.transactions ({', '.join(COLUMNS)}) from stdin"
    commits: dict[str, float] = {}
    sent = 0
    with psycopg.connect(dsn) as conn:
        start = time.monotonic()
        next_batch = start
        while True:
            next_batch += batch_ms / 1000
            pause = next_batch - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) - sent
            batch = [next(rows) for _ in range(due)]
            if not batch:
                continue
            with conn.cursor() as cur:
                with cur.copy(copy_sql) as copy:
                    copy.write(format_copy_text(batch))
                xid = cur.execute("select pg_current_xact_id()::text").fetchone()[0]
            conn.commit()
            commits[xid] = time.time()
            sent += len(batch)
        elapsed = time.monotonic() - start
    Path(out_path).write_text(json.dumps({"commits": commits, "rows": sent, "seconds": elapsed}))


@click.command()
@click.option("--dsn", help="An engine with sql/ applied and the models deployed (default: start a temporary one).")
@click.option("--rate", type=float, default=5000.0, show_default=True, help="Transactions per second written.")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="How long the writer runs.")
@click.option("--warmup", type=float, default=5.0, show_default=True, help="Seconds of alerts left out first.")
@click.option("--batch-ms", type=float, default=200.0, show_default=True, help="One transaction per this many ms (the loader's default).")
@click.option("--fraud-share", type=click.FloatRange(0, 0.5),
              help="Total share of fraud scenarios in the generated stream (more alerts, tighter percentiles).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(dsn: str | None, rate: float, seconds: float, warmup: float, batch_ms: float,
         fraud_share: float | None, as_json: bool) -> None:
    """Measure commit-to-file-sink alert latency with the loader at --rate."""
    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sentinel-alerts-bench-")))
        if dsn is None:
            dsn = cleanup.enter_context(_temporary_engine())
        with psycopg.connect(dsn, autocommit=True) as conn:
            commit_ts = conn.execute("show track_commit_timestamp").fetchone()[0] == "on"
            if conn.execute("select to_regclass('fraud.flagged_transactions')").fetchone()[0] is None:
                raise click.ClickException("fraud.flagged_transactions does not exist: run `sentinel up` first")
        sink = TimedFileSink(str(tmp / "alerts.ndjson"))
        listener = Listener(dsn, [sink], from_now=True)
        listener.open()
        listener.start()
        started = time.time()
        out_path = str(tmp / "commits.json")
        writer = multiprocessing.get_context("spawn").Process(
            target=timed_load, args=(dsn, rate, seconds, batch_ms, fraud_share, out_path))
        writer.start()
        writer.join()
        if writer.exitcode != 0 or not Path(out_path).exists():
            raise click.ClickException(f"the writer process failed (exit code {writer.exitcode})")
        written = json.loads(Path(out_path).read_text())
        commits = written["commits"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            head = conn.execute("select coalesce(max(seq), 0) from sentinel_alerts.change_log").fetchone()[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (listener.workers[0].reader.position or 0) < head:
            time.sleep(0.05)
        listener.stop()
        flushed = [(seq, t) for seq, op, t in sink.flushed if op == "+" and t >= started + warmup]
        if not flushed:
            raise click.ClickException("no alerts were delivered after the warm-up: are the models deployed?")
        seqs = [seq for seq, _ in flushed]
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "select seq, xact_id::text, extract(epoch from logged_at)::float8, "
                + ("extract(epoch from pg_xact_commit_timestamp(xact_id::xid))::float8 " if commit_ts else "null ")
                + "from sentinel_alerts.change_log where seq between %s and %s",
                (min(seqs), max(seqs)),
            ).fetchall()
        by_seq = {seq: (xid, logged, committed) for seq, xid, logged, committed in rows}
        from_ack = [(t - commits[by_seq[s][0]]) * 1000 for s, t in flushed
                    if s in by_seq and by_seq[s][0] in commits]
        from_commit_ts = [(t - by_seq[s][2]) * 1000 for s, t in flushed
                          if s in by_seq and by_seq[s][2] is not None]
        from_logged = [(t - by_seq[s][1]) * 1000 for s, t in flushed if s in by_seq]
        figures = {
            "rows_written": written["rows"],
            "rows_per_s": round(written["rows"] / written["seconds"], 1),
            "alerts_measured": len(from_ack),
            "alerts_per_s": round(len(from_ack) / max(seconds - warmup, 1e-9), 1),
        }
        for q in (50, 90, 99):
            figures[f"p{q}_ms"] = _round(percentile(from_ack, q))
        figures["max_ms"] = round(max(from_ack), 2) if from_ack else None
        if from_commit_ts:
            figures["from_commit_timestamp_p50_ms"] = _round(percentile(from_commit_ts, 50))
            figures["from_commit_timestamp_p99_ms"] = _round(percentile(from_commit_ts, 99))
        figures["from_logged_at_p50_ms"] = _round(percentile(from_logged, 50))
        figures["from_logged_at_p99_ms"] = _round(percentile(from_logged, 99))
        if as_json:
            click.echo(json.dumps(figures))
        else:
            width = max(map(len, figures))
            for key, value in figures.items():
                click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
