"""The alert change log on PostgreSQL: rows are staged during the transaction and get their
sequence numbers at COMMIT, in commit order, with one NOTIFY per committing transaction.

The change log is installed on a plain table with txn_id and rule columns (as the dbt post-hook
installs it on fraud.flagged_transactions), so no dbt run is needed.
"""
from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from fixtures.alerts import wait_until

TABLE = "fraud.changelog_probe"
ALERT_LOCK = 7262540436151157589


@pytest.fixture
def logged(db):
    """`db` with TABLE (txn_id, rule, note) under the change-log triggers."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(f"create table {TABLE} (txn_id text not null, rule text not null, note text, "
                     "primary key (txn_id, rule))")
        conn.execute("select sentinel_alerts.install_changelog(%s::regclass)", (TABLE,))
    return db


def _insert(conn: psycopg.Connection, *txn_ids: str, rule: str = "high_value") -> None:
    """One multi-row INSERT statement."""
    values = sql.SQL(", ").join(sql.SQL("({}, {}, 'n')").format(t, rule) for t in txn_ids)
    conn.execute(sql.SQL("insert into {} (txn_id, rule, note) values {}").format(
        sql.SQL(TABLE), values))


def _log(dsn: str) -> list[tuple[int, str, str]]:
    """(seq, op, alert_id) of the whole change log, by seq, as another session sees it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("select seq, op, alert_id from sentinel_alerts.change_log order by seq").fetchall()


def _ops(log: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    return [(op, alert_id) for _, op, alert_id in log]


def _consecutive(log: list[tuple[int, str, str]]) -> bool:
    seqs = [seq for seq, _, _ in log]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


def test_rows_reach_the_log_at_commit_in_staging_order(logged) -> None:
    with psycopg.connect(logged.dsn) as conn:
        _insert(conn, "b")
        _insert(conn, "a")
        _insert(conn, "d", "c")  # one statement: staged in (txn_id, rule) order
        conn.execute(f"update {TABLE} set note = 'same key' where txn_id = 'b'")  # not a change
        conn.execute(f"update {TABLE} set rule = 'velocity' where txn_id = 'a'")  # '-' then '+'
        conn.execute(f"delete from {TABLE} where txn_id = 'd'")
        assert conn.execute("select count(*) from sentinel_alerts.change_log").fetchone()[0] == 0
        assert conn.execute("select count(*) from pg_temp.sentinel_alerts_pending").fetchone()[0] == 7
        assert _log(logged.dsn) == []
        conn.commit()
        log = _log(logged.dsn)
        # the staging table is emptied by the commit; the next transaction logs after the first
        assert conn.execute("select count(*) from pg_temp.sentinel_alerts_pending").fetchone()[0] == 0
        _insert(conn, "e")
        conn.commit()
    assert _ops(log) == [
        ("+", "b:high_value"), ("+", "a:high_value"), ("+", "c:high_value"), ("+", "d:high_value"),
        ("-", "a:high_value"), ("+", "a:velocity"), ("-", "d:high_value"),
    ]
    assert _consecutive(log)
    with psycopg.connect(logged.dsn) as conn:
        payload, xacts = conn.execute(
            "select (select payload from sentinel_alerts.change_log where alert_id = 'a:velocity'), "
            "count(distinct xact_id) from sentinel_alerts.change_log where seq <= %s", (log[-1][0],)).fetchone()
    assert payload == {"txn_id": "a", "rule": "velocity", "note": "n"}
    assert xacts == 1
    log2 = _log(logged.dsn)
    assert _ops(log2[len(log):]) == [("+", "e:high_value")] and _consecutive(log2)


def test_rollbacks_and_rolled_back_savepoints_leave_nothing(logged) -> None:
    with psycopg.connect(logged.dsn) as conn:
        _insert(conn, "gone1")
        conn.rollback()
        _insert(conn, "kept1")
        conn.execute("savepoint s1")
        _insert(conn, "gone2")
        conn.execute("rollback to savepoint s1")
        conn.execute("savepoint s2")
        _insert(conn, "kept2")
        conn.execute("release savepoint s2")
        conn.commit()
    assert _ops(_log(logged.dsn)) == [("+", "kept1:high_value"), ("+", "kept2:high_value")]


def test_a_transaction_first_staging_in_a_rolled_back_savepoint_still_logs_later_rows(logged) -> None:
    """The staging that armed the commit trigger was undone: the next one must arm it again.
    On a fresh session the staging tables themselves are created in the rolled-back savepoint."""
    with psycopg.connect(logged.dsn) as conn:
        conn.execute("savepoint s")
        _insert(conn, "gone1")  # first staging of the session
        conn.execute("rollback to savepoint s")
        _insert(conn, "kept1")
        conn.commit()
        _insert(conn, "kept2")
        conn.execute("savepoint s")
        _insert(conn, "gone2")
        conn.execute("rollback to savepoint s")
        conn.commit()
        conn.execute("savepoint s")
        _insert(conn, "gone3")  # first staging of this transaction, on a session that has the tables
        conn.execute("rollback to savepoint s")
        _insert(conn, "kept3")
        conn.commit()
    assert _ops(_log(logged.dsn)) == [("+", "kept1:high_value"), ("+", "kept2:high_value"),
                                      ("+", "kept3:high_value")]


def test_set_constraints_immediate_loses_no_staged_row(logged) -> None:
    with psycopg.connect(logged.dsn) as conn:
        _insert(conn, "before")
        conn.execute("set constraints all immediate")
        flushed = conn.execute("select count(*) from sentinel_alerts.change_log").fetchone()[0]
        _insert(conn, "after1")
        _insert(conn, "after2")
        conn.commit()
    assert flushed == 1  # IMMEDIATE ran the pending flush
    log = _log(logged.dsn)
    assert _ops(log) == [("+", "before:high_value"), ("+", "after1:high_value"), ("+", "after2:high_value")]
    assert _consecutive(log)


def test_rows_staged_after_immediate_at_transaction_start_are_logged(logged) -> None:
    with psycopg.connect(logged.dsn) as conn:
        conn.execute("set constraints all immediate")
        _insert(conn, "only")
        conn.commit()
    assert _ops(_log(logged.dsn)) == [("+", "only:high_value")]


def test_the_first_to_commit_gets_the_lower_seqs(logged) -> None:
    with psycopg.connect(logged.dsn) as early, psycopg.connect(logged.dsn) as late:
        _insert(early, "first-in", "first-in-2")
        _insert(late, "second-in")  # does not wait for the other open transaction
        late.commit()
        _insert(early, "first-in-3")
        early.commit()
    log = _log(logged.dsn)
    assert _ops(log) == [("+", "second-in:high_value"), ("+", "first-in:high_value"),
                         ("+", "first-in-2:high_value"), ("+", "first-in-3:high_value")]
    assert _consecutive(log)


def test_commit_draws_seqs_under_the_change_log_lock(logged) -> None:
    """A committer waits for the advisory lock while another transaction holds it, then logs."""
    with psycopg.connect(logged.dsn) as holder, psycopg.connect(logged.dsn) as writer, \
            psycopg.connect(logged.dsn, autocommit=True) as watcher:
        holder.execute("select pg_advisory_xact_lock(%s)", (ALERT_LOCK,))
        _insert(writer, "waits")  # staging takes no lock
        writer.execute("set lock_timeout = '10s'")  # a backstop: statement_timeout does not cover COMMIT
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                writer.commit()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        thread = threading.Thread(target=commit)
        thread.start()
        try:
            waiting = "select wait_event from pg_stat_activity where pid = %s and query = 'COMMIT'"
            assert wait_until(lambda: watcher.execute(waiting, (writer.info.backend_pid,)).fetchone()
                              == ("advisory",), timeout=5.0)
            assert _log(logged.dsn) == []
        finally:
            holder.rollback()
            thread.join(15)
    assert outcome == [None]
    assert _ops(_log(logged.dsn)) == [("+", "waits:high_value")]


def test_the_insert_only_loader_role_gets_its_rows_logged(logged) -> None:
    with psycopg.connect(logged.dsn, autocommit=True) as owner:
        owner.execute(f"grant insert on {TABLE} to sentinel_loader")
    with psycopg.connect(logged.loader_dsn) as loader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            loader.execute("select count(*) from sentinel_alerts.change_log")
        loader.rollback()
        _insert(loader, "by-loader-1")
        _insert(loader, "by-loader-2", "by-loader-3")
        loader.commit()
        _insert(loader, "by-loader-4")
        loader.commit()
    log = _log(logged.dsn)
    assert _ops(log) == [("+", f"by-loader-{i}:high_value") for i in range(1, 5)]
    assert _consecutive(log)


def test_one_notification_per_committing_transaction_with_the_last_seq(logged) -> None:
    with psycopg.connect(logged.dsn, autocommit=True) as listener, psycopg.connect(logged.dsn) as conn:
        listener.execute("listen sentinel_alerts")
        _insert(conn, "a1")
        _insert(conn, "a2", "a3")
        conn.commit()
        _insert(conn, "b1")
        conn.commit()
        conn.execute(f"update {TABLE} set note = 'same key'")  # logs nothing: no notification
        conn.execute(f"insert into {TABLE} select * from {TABLE} where false")  # no rows
        conn.commit()
        _insert(conn, "rolled-back")
        conn.rollback()
        _insert(conn, "c1")
        conn.execute(f"delete from {TABLE} where txn_id = 'a1'")
        conn.commit()
        notified = [(n.channel, n.payload) for n in listener.notifies(timeout=0.5, stop_after=10)]
    log = _log(logged.dsn)
    assert _ops(log) == [("+", "a1:high_value"), ("+", "a2:high_value"), ("+", "a3:high_value"),
                         ("+", "b1:high_value"), ("+", "c1:high_value"), ("-", "a1:high_value")]
    seqs = [seq for seq, _, _ in log]
    assert notified == [("sentinel_alerts", str(seqs[2])), ("sentinel_alerts", str(seqs[3])),
                        ("sentinel_alerts", str(seqs[5]))]
