"""The alert listener against a real PostgreSQL, with real HTTP and SMTP servers as sinks: every
flagged row reaches every sink at least once, a failing sink holds back nothing, faults are logged
once per episode, positions survive restarts."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from alerts.listener import Listener
from alerts.sinks import FileSink, StdoutSink, WebhookSink, parse_sink
from alerts.sources import SinkBusy
from fixtures.alerts import (
    SmtpServer,
    WebhookServer,
    ensure_flagged_table,
    insert_flagged,
    read_ndjson,
    wait_until,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def alerts_db(db):
    ensure_flagged_table(db.dsn)
    return db


def run_listener(dsn, sinks, **kwargs) -> Listener:
    listener = Listener(dsn, sinks, retry_base=0.05, retry_cap=0.3, poll_interval=0.5, **kwargs)
    listener.open()
    listener.start()
    return listener


@contextlib.contextmanager
def listening(dsn, sinks, **kwargs) -> Iterator[Listener]:
    """A running listener (fast retries) for the block, stopped after it."""
    listener = run_listener(dsn, sinks, **kwargs)
    try:
        yield listener
    finally:
        listener.stop()


def stdout_ids(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["alert_id"] for line in stream.getvalue().splitlines() if line.strip()]


def test_change_log_orders_inserts_retractions_and_notifies(alerts_db):
    with psycopg.connect(alerts_db.dsn, autocommit=True) as conn:
        conn.execute("listen sentinel_alerts")
        insert_flagged(alerts_db.dsn, 0, 3, per_txn=3)
        conn.execute("update fraud.flagged_transactions set reason = 'changed' where txn_id = 't0000000'")
        conn.execute("update fraud.flagged_transactions set rule = 'velocity' where txn_id = 't0000001'")
        conn.execute("delete from fraud.flagged_transactions where txn_id = 't0000002'")
        log = conn.execute("select seq, op, alert_id, payload->>'reason' from sentinel_alerts.change_log "
                           "order by seq").fetchall()
        notified = [n.payload for n in conn.notifies(timeout=0.2, stop_after=10)]
    assert [(op, alert_id) for _, op, alert_id, _ in log] == [
        ("+", "t0000000:high_value"), ("+", "t0000001:high_value"), ("+", "t0000002:high_value"),
        ("-", "t0000001:high_value"), ("+", "t0000001:velocity"),
        ("-", "t0000002:high_value"),
    ]
    assert [seq for seq, *_ in log] == sorted(seq for seq, *_ in log)
    assert notified and int(notified[-1]) == log[-1][0]


def test_every_sink_gets_every_alert(alerts_db, tmp_path):
    before = insert_flagged(alerts_db.dsn, 0, 30)
    out = io.StringIO()
    path = tmp_path / "alerts.ndjson"
    with WebhookServer() as hook, SmtpServer() as smtp:
        sinks = [
            StdoutSink(stream=out),
            FileSink(str(path)),
            WebhookSink(hook.url, timeout=2),
            parse_sink(f"smtp://127.0.0.1:{smtp.port}?to=fraud@example.com,ops@example.com&digest=1"),
            parse_sink(f"each=smtp://127.0.0.1:{smtp.port}?to=one@example.com"),
        ]
        with listening(alerts_db.dsn, sinks) as listener:
            after = insert_flagged(alerts_db.dsn, 30, 40, per_txn=7)
            expected = before + after
            assert wait_until(lambda: len(read_ndjson(path)) >= 70 and len(hook.ids()) >= 70
                              and len(stdout_ids(out)) >= 70 and len(smtp.alert_ids()) >= 140)
        # in order, nothing lost, nothing duplicated (no fault happened)
        assert [a["alert_id"] for a in read_ndjson(path)] == expected
        assert hook.ids() == expected
        assert stdout_ids(out) == expected
        digests = [m for m in smtp.messages if "fraud@example.com" in m[0]]
        singles = [m for m in smtp.messages if m[0] == ["one@example.com"]]
        assert len(singles) == 70 and 1 <= len(digests) < 70
        assert sorted(smtp.alert_ids()) == sorted(expected * 2)
    first = read_ndjson(path)[0]
    for key in ("alert_id", "txn_id", "card_id", "rule", "risk_level", "reason", "amount", "event_time",
                "flagged_at", "op", "seq"):
        assert first[key] is not None, key
    stats = {s.sink: s for s in listener.stats()}
    assert stats[f"file:{path}"].delivered == 70 and stats[f"file:{path}"].lag_seq == 0
    with psycopg.connect(alerts_db.dsn) as conn:
        positions = dict(conn.execute("select sink, delivered from sentinel_alerts.sink_positions").fetchall())
    assert positions[f"file:{path}"] == 70 and positions["each"] == 70


def test_failing_sinks_hold_back_nothing_and_log_once(alerts_db, tmp_path, caplog):
    """A 500-ing webhook, a slow webhook, a refusing SMTP server, an unwritable file: the healthy
    sink keeps flowing; each failing one logs once, retries, and gets everything once it recovers."""
    good = tmp_path / "good.ndjson"
    blocked = tmp_path / "blocked"
    blocked.mkdir()  # a directory where the file should be: cannot be opened for writing
    with WebhookServer(mode="error") as failing, WebhookServer(mode="slow", slow_seconds=1.5) as slow, \
            SmtpServer() as smtp, caplog.at_level(logging.INFO, logger="alerts"):
        smtp.refuse = True
        sinks = [FileSink(str(good)), WebhookSink(failing.url, name="err500", timeout=2),
                 WebhookSink(slow.url, name="slow", timeout=0.3),
                 parse_sink(f"mail=smtp://127.0.0.1:{smtp.port}?to=fraud@example.com&digest=1"),
                 FileSink(str(blocked), name="blocked")]
        with listening(alerts_db.dsn, sinks) as listener:
            expected = insert_flagged(alerts_db.dsn, 0, 25, per_txn=5)
            assert wait_until(lambda: len(read_ndjson(good)) == 25, timeout=10)
            assert wait_until(lambda: failing.attempts >= 3 and slow.attempts >= 3 and smtp.attempts >= 3)
            assert not failing.ids() and not smtp.messages
            stats = {s.sink: s for s in listener.stats()}
            assert stats["err500"].failing and "HTTP 500" in stats["err500"].failing
            assert stats["slow"].failing and "timed out" in stats["slow"].failing
            assert stats["err500"].retries >= 2 and stats["err500"].lag_seq == 25
            assert stats["err500"].lag_seconds > 0
            # the sinks recover
            failing.mode = slow.mode = "ok"
            smtp.refuse = False
            blocked.rmdir()
            more = insert_flagged(alerts_db.dsn, 25, 5)
            expected += more
            assert wait_until(lambda: len(set(failing.ids())) == 30 and len(set(slow.ids())) == 30
                              and len(set(smtp.alert_ids())) == 30 and len(read_ndjson(blocked)) == 30)
    assert [a["alert_id"] for a in read_ndjson(good)] == expected
    assert failing.ids() == expected  # every POST answered 500 was not counted: in order, no loss
    assert [i for i in dict.fromkeys(slow.ids())] == expected  # timed-out POSTs may repeat (same id)
    assert [a["alert_id"] for a in read_ndjson(blocked)] == expected
    messages = [r.getMessage() for r in caplog.records]
    for name in ("err500", "slow", "mail", "blocked"):
        assert sum(m.startswith(f"sink {name} failing") for m in messages) == 1, (name, messages)
        assert sum(m.startswith(f"sink {name} delivering again") for m in messages) == 1, name


def test_positions_resume_and_from_now(alerts_db, tmp_path):
    path = tmp_path / "a.ndjson"
    first = insert_flagged(alerts_db.dsn, 0, 10)
    listener = run_listener(alerts_db.dsn, [FileSink(str(path))])
    assert wait_until(lambda: len(read_ndjson(path)) == 10)
    listener.stop()
    second = insert_flagged(alerts_db.dsn, 10, 10)  # while no listener runs
    late = tmp_path / "late.ndjson"
    with listening(alerts_db.dsn, [FileSink(str(path)), FileSink(str(late))], from_now=True) as listener:
        assert wait_until(lambda: len(read_ndjson(path)) == 20)
        third = insert_flagged(alerts_db.dsn, 20, 5)
        assert wait_until(lambda: len(read_ndjson(path)) == 25 and len(read_ndjson(late)) == 5)
    # the known sink resumed where it stopped (a clean stop: no duplicates); the new one from now
    assert [a["alert_id"] for a in read_ndjson(path)] == first + second + third
    assert [a["alert_id"] for a in read_ndjson(late)] == third


def test_cli_errors_are_one_line(db, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "alerts.cli", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=60)

    missing = run("--dsn", db.dsn, "--sink", "stdout")
    assert missing.returncode == 1
    assert "fraud.flagged_transactions does not exist: run `sentinel up` first" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run("--dsn", db.dsn, "--sink", "carrier-pigeon:coop")
    assert bad.returncode == 2 and "Invalid value for --sink" in bad.stderr and "Traceback" not in bad.stderr
    unreachable = run("--dsn", "postgresql://nobody@127.0.0.1:1/x", "--sink", "stdout")
    assert unreachable.returncode == 1 and "cannot reach the engine" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


# In the child: the Ctrl-C lands while the main thread, about to wait on the stop event in `serve`,
# holds that event's lock (each wait takes it for a moment).
_CTRL_C_WHILE_THE_STOP_EVENT_IS_LOCKED = """
import os, signal, sys, threading, time
wait = threading.Event.wait
def wait_and_interrupt(self, timeout=None):
    if sys._getframe(1).f_code.co_name == "serve" and threading.Event.wait is not wait:
        threading.Event.wait = wait
        with self._cond:
            os.write(2, b"ctrl-c sent while the stop event is locked\\n")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, in the sleep
    return wait(self, timeout)
threading.Event.wait = wait_and_interrupt
from sentinel.cli import main
main(["alerts", *sys.argv[1:]])
"""


def test_ctrl_c_while_the_listener_holds_its_stop_event_lock_still_stops_it(alerts_db, tmp_path):
    """The signal handler had set the stop event itself, taking the lock the main thread held: the
    listener never stopped. Now it writes a byte that a thread relays, and the listener stops."""
    path = tmp_path / "s.ndjson"
    ids = insert_flagged(alerts_db.dsn, 0, 5)
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_WHILE_THE_STOP_EVENT_IS_LOCKED, "--dsn", alerts_db.dsn,
                             "--sink", f"file:{path}", "--from-start"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the listener did not stop within 30 s of the Ctrl-C: {err[-2000:]}") from None
    assert "ctrl-c sent while the stop event is locked" in err  # else the test tested nothing
    assert proc.returncode == 0, err
    assert "stopping (SIGINT)" in err and "Traceback" not in err
    assert {a["alert_id"] for a in read_ndjson(path)} <= set(ids)


@pytest.mark.slow
def test_kill9_listener_midstream_loses_nothing(alerts_db, tmp_path):
    """kill -9 of the listener while alerts stream in, twice; the restarted listener delivers all."""
    path = tmp_path / "k.ndjson"
    batch = 25
    cmd = [sys.executable, "-m", "alerts.cli", "--dsn", alerts_db.dsn, "--sink", f"file:{path}",
           "--batch-size", str(batch), "--stats-interval", "0"]
    expected: list[str] = []
    writer_done = threading.Event()

    def write():
        for chunk in range(20):
            expected.extend(insert_flagged(alerts_db.dsn, chunk * 100, 100, per_txn=10))
        writer_done.set()

    writer = threading.Thread(target=write)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        writer.start()
        for _ in range(2):
            assert wait_until(lambda: len(read_ndjson(path)) > 200 + len(expected) // 3, timeout=30)
            proc.kill()  # SIGKILL, mid-stream
            proc.wait()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        writer.join()
        assert wait_until(lambda: set(expected) <= {a["alert_id"] for a in read_ndjson(path)}, timeout=30)
    finally:
        proc.terminate()
        proc.wait(10)
    delivered = [a["alert_id"] for a in read_ndjson(path)]
    assert len(expected) == 2000 and set(delivered) == set(expected)
    duplicates = sum(n - 1 for n in Counter(delivered).values())
    assert duplicates <= 2 * batch  # at most the batch in flight, per kill


def _try_up(engine) -> bool:
    from sentinel.errors import SentinelError

    try:
        engine.up()
        return True
    except SentinelError:  # orphaned backends of the killed server may still hold its memory
        return False


@pytest.mark.slow
def test_database_killed_under_the_listener(tmp_path):
    """kill -9 of PostgreSQL under a running listener: logged once, reconnected, nothing lost."""
    from sentinel import schema
    from sentinel.engine import EmbeddedEngine, free_port, port_in_use

    engine = EmbeddedEngine(tmp_path / "home", port=free_port())
    engine.up()
    try:
        dsn = engine.dsn("owner")
        schema.apply(dsn)
        ensure_flagged_table(dsn)
        path = tmp_path / "db.ndjson"
        expected = insert_flagged(dsn, 0, 50)
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logging.getLogger("alerts").addHandler(handler)
        listener = run_listener(dsn, [FileSink(str(path)), WebhookSink("http://127.0.0.1:1/none", name="down")])
        try:
            assert wait_until(lambda: len(read_ndjson(path)) == 50)
            os.kill(engine.status().pid, signal.SIGKILL)  # the postmaster; its backends follow it
            assert wait_until(lambda: not port_in_use(engine.port), timeout=30)
            assert wait_until(lambda: any("database unreachable" in m for m in records), timeout=15)
            # nothing reaps the killed postmaster here (a zombie keeps its pid): drop its stale lock
            (engine.pgdata / "postmaster.pid").unlink(missing_ok=True)
            assert wait_until(lambda: _try_up(engine), timeout=60, interval=0.5)
            expected += insert_flagged(dsn, 50, 50)
            assert wait_until(lambda: len(read_ndjson(path)) >= 100, timeout=30)
        finally:
            listener.stop()
            logging.getLogger("alerts").removeHandler(handler)
        delivered = [a["alert_id"] for a in read_ndjson(path)]
        assert set(delivered) == set(expected)
        assert sum(n - 1 for n in Counter(delivered).values()) <= 50
        assert sum("database unreachable" in m for m in records) == 1, records
        assert sum("database reachable again" in m for m in records) == 1, records
    finally:
        engine.down()


def test_a_seq_that_commits_late_is_not_skipped(alerts_db, tmp_path):
    """A change-log row whose transaction commits after a later seq's: delivered, in seq order.
    (The triggers' lock prevents this for model writes; a writer bypassing it must not lose alerts.)"""
    path = tmp_path / "late.ndjson"
    with listening(alerts_db.dsn, [FileSink(str(path))]):
        with psycopg.connect(alerts_db.dsn) as slow_writer:
            slow_writer.execute(
                "insert into sentinel_alerts.change_log (alert_id, op, txn_id, rule, payload) "
                "values ('slow:high_value', '+', 'slow', 'high_value', "
                "'{\"txn_id\": \"slow\", \"rule\": \"high_value\", \"card_id\": \"c\"}')")
            fast = insert_flagged(alerts_db.dsn, 0, 3, per_txn=3)  # later seqs, committed first
            rolled_back = psycopg.connect(alerts_db.dsn)
            insert_flagged_in(rolled_back, "gone")
            rolled_back.rollback()  # a gap that stays
            rolled_back.close()
            time.sleep(0.5)
            assert read_ndjson(path) == []  # held back by the running transaction's seq
        assert wait_until(lambda: len(read_ndjson(path)) == 4)
        more = insert_flagged(alerts_db.dsn, 10, 2)
        assert wait_until(lambda: len(read_ndjson(path)) == 6)
    delivered = read_ndjson(path)
    assert [a["alert_id"] for a in delivered] == ["slow:high_value", *fast, *more]
    assert [a["seq"] for a in delivered] == sorted(a["seq"] for a in delivered)


def insert_flagged_in(conn, txn_id: str) -> None:
    conn.execute("insert into fraud.flagged_transactions (txn_id, rule, card_id) values (%s, 'high_value', 'c')",
                 (txn_id,))


def test_webhook_slack_body():
    """The Slack-compatible body: {"text": one human line}, POSTed to a real local server."""
    from alerts.model import make_alert

    alert = make_alert(seq=1, op="+", flagged_at=None, row={
        "txn_id": "t9", "rule": "impossible_travel", "card_id": "c9", "risk_level": "critical",
        "reason": "8,412 km in 12 min = 42,060 km/h", "amount": 120.5})
    with WebhookServer() as hook:
        WebhookSink(hook.url, timeout=2, body="slack").deliver([alert])
        assert hook.received == [{"text": "[critical] impossible_travel: card c9, txn t9, amount 120.50 — "
                                          "8,412 km in 12 min = 42,060 km/h"}]


def test_one_listener_per_sink_and_standby_takes_over(alerts_db, tmp_path):
    path = tmp_path / "one.ndjson"
    with listening(alerts_db.dsn, [FileSink(str(path), name="shared")]):
        second = Listener(alerts_db.dsn, [FileSink(str(path), name="shared")])
        with pytest.raises(SinkBusy, match="served by another listener"):
            second.open()
        insert_flagged(alerts_db.dsn, 0, 5)
        assert wait_until(lambda: len(read_ndjson(path)) == 5)
    with listening(alerts_db.dsn, [FileSink(str(path), name="shared")]) as second:
        insert_flagged(alerts_db.dsn, 5, 5)
        assert wait_until(lambda: len(read_ndjson(path)) == 10)
    assert len({a["alert_id"] for a in read_ndjson(path)}) == 10


def test_file_sink_follows_log_rotation(tmp_path):
    from alerts.model import make_alert

    path = tmp_path / "rot.ndjson"
    sink = FileSink(str(path))
    alert = make_alert(seq=1, op="+", row={"txn_id": "t", "rule": "r"}, flagged_at=None)
    sink.deliver([alert])
    path.rename(tmp_path / "rot.ndjson.1")
    sink.deliver([alert, alert])
    sink.close()
    assert len(read_ndjson(path)) == 2 and len(read_ndjson(tmp_path / "rot.ndjson.1")) == 1


@pytest.mark.parametrize("tail", ["", '{"alert_id": "t0:r", "op"', "x" * 100_000], ids=["whole", "torn", "long-torn"])
def test_file_sink_cuts_a_torn_last_line_before_appending(tmp_path, tail):
    """A write cut short (kill -9 mid-batch) leaves a line without its newline; its alerts are
    delivered again, so the sink cuts it off at open: every line stays whole JSON."""
    from alerts.model import make_alert

    path = tmp_path / "torn.ndjson"
    first = make_alert(seq=1, op="+", row={"txn_id": "t1", "rule": "r"}, flagged_at=None)
    second = make_alert(seq=2, op="+", row={"txn_id": "t2", "rule": "r"}, flagged_at=None)
    path.write_text(first.line + "\n" + tail, encoding="utf-8")
    sink = FileSink(str(path))
    sink.deliver([second])
    sink.close()
    assert path.read_text(encoding="utf-8") == first.line + "\n" + second.line + "\n"
    # a file that is nothing but a fragment
    path.write_text("x" * 70_000, encoding="utf-8")
    sink.deliver([first])
    sink.close()
    assert path.read_text(encoding="utf-8") == first.line + "\n"


def test_run_until_stop_event_reports_stats(alerts_db, tmp_path):
    path = tmp_path / "run.ndjson"
    stop = threading.Event()
    reports: list[list] = []
    listener = Listener(alerts_db.dsn, [FileSink(str(path))], poll_interval=0.5)
    thread = threading.Thread(target=listener.run, args=(stop,),
                              kwargs={"on_stats": reports.append, "stats_interval": 0.2})
    thread.start()
    try:
        ids = insert_flagged(alerts_db.dsn, 0, 12)
        assert wait_until(lambda: len(read_ndjson(path)) == 12)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [a["alert_id"] for a in read_ndjson(path)] == ids
    final = reports[-1][0]
    assert (final.delivered, final.lag_seq, final.retries, final.failing) == (12, 0, 0, None)


def test_materialize_positions_keep_kind_and_delivered(db):
    """The Materialize reader's position writes, run against sql/materialize/040_alerts.sql (plain SQL
    PostgreSQL also runs): the sink's row gets its kind, position and delivered count, and a reader
    opened later resumes from them."""
    from alerts.model import make_alert
    from alerts.sources import Batch, MaterializeReader

    ddl = open(os.path.join(REPO, "sql", "materialize", "040_alerts.sql"), encoding="utf-8").read()
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("drop schema sentinel_alerts cascade")
        conn.execute(ddl)
    alert = make_alert(seq=1, op="+", row={"txn_id": "t", "rule": "r"}, flagged_at=None)
    reader = MaterializeReader(db.dsn, "mz-file", "file")
    reader.ack(Batch(alerts=[alert, alert], position=104))
    reader.ack(Batch(alerts=[alert], position=110))
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute("select sink, kind, position, delivered from sentinel_alerts.sink_positions").fetchall()
    assert rows == [("mz-file", "file", 110, 3)]


def test_sink_status_prune_and_uninstall(alerts_db, tmp_path):
    """The operator's SQL: sink_status shows each sink's lag, prune drops only what every sink has
    delivered, uninstall_changelog stops the logging and install_changelog brings it back."""
    path = tmp_path / "s.ndjson"
    with listening(alerts_db.dsn, [FileSink(str(path), name="f")]):
        insert_flagged(alerts_db.dsn, 0, 10)
        assert wait_until(lambda: len(read_ndjson(path)) == 10)
    insert_flagged(alerts_db.dsn, 10, 5)  # while no listener runs
    with psycopg.connect(alerts_db.dsn, autocommit=True) as conn:
        status = conn.execute("select sink, kind, delivered, lag_seq, lag_seconds > 0 "
                              "from sentinel_alerts.sink_status").fetchall()
        assert status == [("f", "file", 10, 5, True)]
        assert conn.execute("select sentinel_alerts.prune(interval '0 s')").fetchone()[0] == 10
        assert conn.execute("select count(*) from sentinel_alerts.change_log").fetchone()[0] == 5

        def triggers() -> int:
            return conn.execute("select count(*) from pg_trigger where tgrelid = "
                                "'fraud.flagged_transactions'::regclass and not tgisinternal").fetchone()[0]

        conn.execute("select sentinel_alerts.uninstall_changelog('fraud.flagged_transactions')")
        assert triggers() == 0
        insert_flagged(alerts_db.dsn, 15, 1)
        assert conn.execute("select count(*) from sentinel_alerts.change_log").fetchone()[0] == 5
        conn.execute("select sentinel_alerts.install_changelog('fraud.flagged_transactions')")
        conn.execute("select sentinel_alerts.install_changelog('fraud.flagged_transactions')")  # idempotent
        assert triggers() == 3
        insert_flagged(alerts_db.dsn, 16, 1)
        assert conn.execute("select count(*) from sentinel_alerts.change_log").fetchone()[0] == 6
