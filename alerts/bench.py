"""`python -m alerts.bench`: latency from a transaction's commit to its alert in the file sink.

Measurement. The loader (`python -m loader.cli`, a separate process) streams synthetic
transactions at --rate into an engine with every default model deployed; the listener runs in
this process with one file sink whose deliveries are timed right after write+flush returns
(wall clock). A flagged row's commit time is the server's own commit timestamp of the transaction
that logged it (`pg_xact_commit_timestamp`, so `track_commit_timestamp` is switched on in the
engine this command starts). Latency = flush time - commit time, same machine, same clock.
Alerts of the first --warmup seconds are left out. Without commit timestamps (--dsn to a server
where the setting is off) the change log's logged_at (taken inside the transaction, before its
commit) stands in, which can only overstate the latency.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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

REPO = Path(__file__).resolve().parent.parent


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --stand-in: the alert view as a table kept by one statement trigger (high_value only), for
# measuring the listener's own path while the real models cannot be deployed.
STAND_IN = """
create table if not exists fraud.flagged_transactions (
    txn_id            text not null,
    rule              text not null,
    card_id           text not null,
    customer_id       text,
    merchant_id       text,
    merchant_category text,
    country           char(2),
    channel           text,
    amount            numeric(12, 2),
    currency          char(3),
    event_time        timestamptz,
    risk_level        text,
    reason            text,
    primary key (txn_id, rule)
);

create or replace function fraud.bench_flag_high_value() returns trigger
language plpgsql as $$
begin
    insert into fraud.flagged_transactions (
        txn_id, rule, card_id, customer_id, merchant_id, merchant_category, country, channel,
        amount, currency, event_time, risk_level, reason
    )
    select
        n.txn_id, 'high_value', n.card_id, n.customer_id, n.merchant_id, n.merchant_category,
        n.country, n.channel, n.amount, n.currency, n.event_time, 'high',
        'amount ' || to_char(n.amount, 'FM999,999,990.00') || ' > 2,000.00'
    from new_rows as n
    where n.amount > 2000
    on conflict do nothing;
    return null;
end
$$;

drop trigger if exists bench_flag_high_value on fraud.transactions;
create trigger bench_flag_high_value
    after insert on fraud.transactions
    referencing new table as new_rows
    for each statement execute function fraud.bench_flag_high_value();

select sentinel_alerts.install_changelog('fraud.flagged_transactions');
"""


def _start_engine(home: Path, *, stand_in: bool):
    from sentinel import schema
    from sentinel.engine import EmbeddedEngine, free_port

    engine = EmbeddedEngine(home, port=free_port())
    engine.up()
    dsn = engine.dsn("owner")
    creds = engine.credentials()
    schema.apply(dsn, role_passwords={"sentinel_loader": creds["loader"], "sentinel_analyst": creds["analyst"]})
    if stand_in:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(STAND_IN)
    else:
        from sentinel.deploy import DbtFailed, run_dbt

        click.echo("deploying the default models (dbt run) ...", err=True)
        try:
            run_dbt(["run"], dsn=dsn)
        except DbtFailed as exc:
            engine.down()
            raise click.ClickException(f"{exc} — the default models do not deploy; "
                                       "--stand-in measures the listener with a one-rule stand-in") from None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter system set track_commit_timestamp = on")
    engine.down()
    engine.up()
    return engine, engine.dsn("owner")


@click.command()
@click.option("--dsn", help="An engine with sql/ applied and the models deployed (default: start a temporary one).")
@click.option("--rate", type=float, default=5000.0, show_default=True, help="Loader transactions per second.")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="How long the loader runs.")
@click.option("--warmup", type=float, default=5.0, show_default=True, help="Seconds of alerts left out first.")
@click.option("--batch-ms", type=float, default=200.0, show_default=True, help="The loader's batching interval.")
@click.option("--fraud-share", type=click.FloatRange(0, 0.5),
              help="Passed to the loader: total share of fraud scenarios (more alerts, tighter percentiles).")
@click.option("--stand-in", is_flag=True,
              help="Instead of the dbt models, a trigger-maintained high_value-only alert view (listener path only).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def main(dsn: str | None, rate: float, seconds: float, warmup: float, batch_ms: float,
         fraud_share: float | None, stand_in: bool, as_json: bool) -> None:
    """Measure commit-to-file-sink alert latency with the loader at --rate."""
    engine = None
    tmp = tempfile.TemporaryDirectory(prefix="sentinel-alerts-bench-")
    try:
        if dsn is None:
            engine, dsn = _start_engine(Path(tmp.name) / "home", stand_in=stand_in)
        with psycopg.connect(dsn, autocommit=True) as conn:
            commit_ts = conn.execute("show track_commit_timestamp").fetchone()[0] == "on"
            if conn.execute("select to_regclass('fraud.flagged_transactions')").fetchone()[0] is None:
                raise click.ClickException("fraud.flagged_transactions does not exist: run `sentinel up` first")
        sink = TimedFileSink(str(Path(tmp.name) / "alerts.ndjson"))
        listener = Listener(dsn, [sink], from_now=True)
        listener.open()
        listener.start()
        started = time.time()
        loader = subprocess.run(
            [sys.executable, "-m", "loader.cli", "--dsn", dsn, "--rate", str(rate), "--duration", str(seconds),
             "--batch-ms", str(batch_ms), "--quiet", "--json",
             *(["--fraud-share", str(fraud_share)] if fraud_share is not None else [])],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if loader.returncode != 0:
            raise click.ClickException(f"the loader failed: {(loader.stderr or loader.stdout).strip()[-300:]}")
        summary = json.loads(loader.stdout.strip().splitlines()[-1])
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
                "select seq, extract(epoch from logged_at)::float8, "
                + ("extract(epoch from pg_xact_commit_timestamp(xact_id::xid))::float8 " if commit_ts else "null ")
                + "from sentinel_alerts.change_log where seq between %s and %s",
                (min(seqs), max(seqs)),
            ).fetchall()
        by_seq = {seq: (logged, committed) for seq, logged, committed in rows}
        from_commit = [(t - by_seq[s][1]) * 1000 for s, t in flushed if s in by_seq and by_seq[s][1] is not None]
        from_logged = [(t - by_seq[s][0]) * 1000 for s, t in flushed if s in by_seq]
        figures = {
            "loader_rows": summary.get("loaded"),
            "loader_rows_per_s": summary.get("rows_per_s"),
            "loader_max_lag_s": summary.get("max_lag_s"),
            "alerts_measured": len(from_logged),
            "alerts_per_s": round(len(from_logged) / max(seconds - warmup, 1e-9), 1),
            "models": "stand-in (high_value trigger)" if stand_in else "deployed dbt models",
            "latency_from": "commit timestamp" if from_commit else "logged_at (before commit)",
        }
        values = from_commit or from_logged
        for q in (50, 90, 99):
            figures[f"p{q}_ms"] = round(percentile(values, q), 2)
        figures["max_ms"] = round(max(values), 2)
        figures["logged_at_p50_ms"] = round(percentile(from_logged, 50), 2)
        figures["logged_at_p99_ms"] = round(percentile(from_logged, 99), 2)
        if as_json:
            click.echo(json.dumps(figures))
        else:
            width = max(map(len, figures))
            for key, value in figures.items():
                click.echo(f"{key:<{width}}  {value}")
    finally:
        if engine is not None:
            engine.down()
        tmp.cleanup()


if __name__ == "__main__":
    main()
