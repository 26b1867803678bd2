"""The writer: idempotent batches, lost connections, SIGKILL + rerun, Ctrl-C flush, timed batches."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from loader.generator import GeneratorConfig, generate
from loader.writer import Writer, format_copy_text, row_from_line

REPO = Path(__file__).resolve().parent.parent


def _row(txn_id: str, amount: str = "10.00") -> tuple:
    return (txn_id, "c1", None, "m1", "grocery", Decimal(amount), "USD", "pos", "US", 1.0, 2.0, "d1",
            datetime(2025, 1, 6, tzinfo=timezone.utc), False, None)


def _ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("select txn_id from fraud.transactions order by txn_id")]


def _wait_for_rows(dsn: str, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
            if n >= at_least:
                return n
            time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows after {timeout} s")


def _loader_connections(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from pg_stat_activity where application_name = 'sentinel-loader' "
                        "and datname = current_database()").fetchone()[0]


def _wait_for_loader_connection(dsn: str, timeout: float = 60.0) -> None:
    """Until the loader process has connected (its signal handling is in place by then)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if _loader_connections(conn):
                return
            time.sleep(0.05)
    raise AssertionError("the loader did not connect")


def _wait_for_loader_gone(dsn: str, timeout: float = 30.0) -> None:
    """Until the server has ended the killed loader's session: a COPY whose end the loader had
    sent may still commit after the process died."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if not _loader_connections(conn):
                return
            time.sleep(0.05)
    raise AssertionError("the killed loader's session did not end")


def test_resent_rows_are_ignored_and_counted_as_duplicates(db) -> None:
    rows = [_row(f"t{i}") for i in range(50)]
    with Writer(db.loader_dsn, batch_rows=20) as writer:
        writer.write_many(rows)
        writer.flush()
        writer.write_many(rows[10:30] + [_row("t-new")] + [_row("t-new")])
    assert writer.stats.inserted == 51
    assert writer.stats.duplicates == 21
    assert writer.stats.sent == 72
    assert len(_ids(db.dsn)) == 51


def test_a_row_the_database_refuses_does_not_sink_its_batch(db) -> None:
    refused: list[tuple[str, str]] = []
    rows = [_row("ok1"), _row("bad", amount="-1.00"), _row("ok2")]
    with Writer(db.loader_dsn, on_reject=lambda row, reason: refused.append((row[0], reason))) as writer:
        writer.write_many(rows)
    assert _ids(db.dsn) == ["ok1", "ok2"]
    assert writer.stats.rejected == 1
    assert refused[0][0] == "bad" and "transactions_amount_positive" in refused[0][1]


def _line(row: tuple) -> str:
    return format_copy_text([row]).decode().removesuffix("\n")


def test_row_from_line_is_the_inverse_of_format_copy_text() -> None:
    rows = [
        _row("t1"),
        ("t\\2", "c\t2", None, "m\n2", "grocery", Decimal("1500.05"), "USD", "ecom", "DE", None, None, "d\r2",
         datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), True, "velocity"),
    ]
    for row in rows:
        assert row_from_line(_line(row)) == row


def test_rows_given_as_copy_lines_are_refused_and_deduplicated_like_tuples(db) -> None:
    refused: list[tuple] = []
    good = [_row(f"t{i}") for i in range(5)]
    bad = _row("bad", amount="-1.00")
    with Writer(db.loader_dsn, batch_rows=4, on_reject=lambda row, reason: refused.append(row)) as writer:
        writer.write_many([_line(r) for r in good[:3]] + [_line(bad), good[3]])  # lines and tuples mixed
        writer.flush()
        writer.write_many([_line(r) for r in good])  # all sent again
    assert _ids(db.dsn) == [f"t{i}" for i in range(5)]
    assert refused == [bad]  # the refused line comes back to the caller as its row
    assert (writer.stats.inserted, writer.stats.rejected, writer.stats.duplicates) == (5, 1, 4)


def test_a_batch_leaves_after_batch_ms_without_a_flush(db) -> None:
    with Writer(db.loader_dsn, batch_rows=10_000, batch_ms=100) as writer:
        writer.write_many([_row(f"t{i}") for i in range(3)])
        assert _wait_for_rows(db.dsn, 3, timeout=5.0) == 3
        assert writer.stats.batches == 1


def test_a_lost_connection_is_retried_without_loss_or_duplication(db) -> None:
    rows = list(generate(GeneratorConfig(seed=21, count=6000)))
    with Writer(db.loader_dsn, batch_rows=500) as writer:
        writer.write_many(rows[:3000])
        writer.flush()
        with psycopg.connect(db.dsn, autocommit=True) as admin:
            killed = admin.execute(
                "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = 'sentinel-loader' and datname = current_database()) t"
            ).fetchone()[0]
        assert killed == 1
        writer.write_many(rows[3000:])
    assert writer.stats.retries >= 1
    assert writer.stats.inserted == 6000
    assert _ids(db.dsn) == sorted(r[0] for r in rows)


def _load_cmd(db, *args: str) -> list[str]:
    return [sys.executable, "-m", "loader.cli", "--dsn", db.loader_dsn, "-q", *args]


def test_killed_half_way_and_rerun_leaves_exactly_one_copy(db) -> None:
    # paced with a fixed --start, so the rerun generates exactly the same rows
    args = ["--count", "40000", "--seed", "77", "--rate", "20000", "--start", "2025-01-06T00:00:00Z",
            "--batch-rows", "1000"]
    proc = subprocess.Popen(_load_cmd(db, *args), cwd=REPO)
    try:
        _wait_for_rows(db.dsn, 5000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_for_loader_gone(db.dsn)
    partial = len(_ids(db.dsn))
    assert 0 < partial < 40000
    rerun = subprocess.run(_load_cmd(db, *args, "--json"), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["duplicates"] == partial
    assert summary["loaded"] == 40000 - partial
    start = datetime(2025, 1, 6, tzinfo=timezone.utc)
    expected = sorted(r[0] for r in generate(GeneratorConfig(seed=77, count=40000, rate=20000, start=start)))
    assert _ids(db.dsn) == expected


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_flushes_what_was_read_and_exits_cleanly(db, signum: int) -> None:
    proc = subprocess.Popen(_load_cmd(db, "--seed", "5", "--rate", "2000", "--batch-ms", "60000", "--json"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_loader_connection(db.dsn)
        time.sleep(1.5)  # the batch timer (60 s) has not fired, so rows sit in the buffer
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert summary["read"] > 0
    assert summary["loaded"] == summary["read"] == len(_ids(db.dsn))


def test_insert_mode_the_risingwave_fallback_is_idempotent_too(db) -> None:
    rows = list(generate(GeneratorConfig(seed=8, count=1200)))
    with Writer(db.loader_dsn, mode="insert", batch_rows=700) as writer:
        writer.write_many(rows)
        writer.flush()
        writer.write_many(rows[:300])
    assert (writer.stats.inserted, writer.stats.duplicates) == (1200, 300)
    assert _ids(db.dsn) == sorted(r[0] for r in rows)


def test_cli_in_insert_mode_loads_the_same_stream(db) -> None:
    """`--mode insert`: the generator hands the writer tuples, not COPY lines to parse back."""
    done = subprocess.run(_load_cmd(db, "--count", "3000", "--seed", "9", "--mode", "insert", "--json"),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["loaded"] == 3000
    assert _ids(db.dsn) == sorted(r[0] for r in generate(GeneratorConfig(seed=9, count=3000)))
