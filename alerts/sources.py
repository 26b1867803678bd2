"""Where alerts come from: the change log on PostgreSQL, a subscription cursor on RisingWave,
SUBSCRIBE on Materialize. Each reader serves one sink and keeps that sink's position in the engine."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

import psycopg
from psycopg import sql

from alerts.model import Alert, compact, make_alert
from sentinel.errors import one_line

log = logging.getLogger("alerts")

ALERT_VIEW = "fraud.flagged_transactions"
SUBSCRIPTION = "fraud.flagged_transactions_alerts"


class AlertViewMissing(Exception):
    """The engine has no alert view or change log yet."""


class SinkBusy(Exception):
    """Another listener serves this sink (holds its lock); this one waits as a standby."""


@dataclass
class Batch:
    """Alerts to deliver, and the position to store once they are delivered."""

    alerts: list[Alert]
    position: Any
    head: int | None = None  # newest sequence known in the source, for lag
    oldest_at: datetime | None = None  # logged_at of the first undelivered change, for lag


class Reader(Protocol):
    """Reads one sink's changes from its stored position on; `ack` stores the new position."""

    sink: str
    position: Any
    delivered: int
    created: bool  # the sink was new to the engine when `open` registered it

    def open(self) -> None: ...
    def read(self, *, limit: int, wait: float) -> Batch | None: ...
    def ack(self, batch: Batch) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


#: What RisingWave/Materialize answer when the subscription, view or positions table is not there.
MISSING_OBJECT = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject, psycopg.errors.InvalidSchemaName,
                  psycopg.errors.InternalError_)


def missing(what: str, exc: BaseException) -> AlertViewMissing:
    """The one-line error for a reader whose engine objects are not deployed."""
    return AlertViewMissing(f"{what} or sentinel_alerts.sink_positions is missing ({one_line(exc)}): "
                            "run `sentinel up` first")


def connect(dsn: str, *, application_name: str = "sentinel-alerts") -> psycopg.Connection:
    """An autocommit connection with a short connect timeout (faults surface, they are not waited out)."""
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name=application_name)


# --------------------------------------------------------------------------------------------
# PostgreSQL: sentinel_alerts.change_log
# --------------------------------------------------------------------------------------------

def check_postgres(conn: psycopg.Connection) -> list[str]:
    """Raise AlertViewMissing when the change log or the alert view is absent; return warnings."""
    row = conn.execute(
        "select to_regclass('sentinel_alerts.change_log'), to_regclass(%s), "
        "to_regclass('sentinel_alerts.sink_positions')", (ALERT_VIEW,)
    ).fetchone()
    if row[0] is None or row[2] is None:
        raise AlertViewMissing("the alert change log sentinel_alerts.change_log does not exist: "
                               "run `sentinel up` first")
    if row[1] is None:
        raise AlertViewMissing(f"the alert view {ALERT_VIEW} does not exist: run `sentinel up` first")
    triggers = conn.execute(
        "select count(*) from pg_trigger where tgrelid = %s::regclass "
        "and tgname like 'sentinel_alerts_log_%%' and tgenabled <> 'D'", (ALERT_VIEW,)
    ).fetchone()[0]
    if triggers < 2:
        return [f"{ALERT_VIEW} has no change-log triggers: new flags will not reach the sinks "
                "(re-run `sentinel up`, or select sentinel_alerts.install_changelog(...))"]
    return []


def register_postgres(conn: psycopg.Connection, sink: str, kind: str, *, from_now: bool) -> tuple[int, int, bool]:
    """The sink's stored (position, delivered); a new sink starts at 0 or at the current head."""
    row = conn.execute(
        """
        with registered as (
            insert into sentinel_alerts.sink_positions (sink, kind, position)
            select %(sink)s, %(kind)s,
                case when %(from_now)s
                    then (select coalesce(max(seq), 0) from sentinel_alerts.change_log)
                    else 0
                end
            on conflict (sink) do nothing
            returning position, delivered
        )
        select position, delivered, true from registered
        union all
        select position, delivered, false from sentinel_alerts.sink_positions where sink = %(sink)s
        limit 1
        """,
        {"sink": sink, "kind": kind, "from_now": from_now},
    ).fetchone()
    return int(row[0]), int(row[1]), bool(row[2])


_READ = """
    select
        c.seq,
        c.op,
        c.payload::text,
        c.logged_at,
        c.xact_id::text,
        c.alert_id,
        (select max(seq) from sentinel_alerts.change_log) as head,
        (select pg_current_snapshot()::text) as snapshot
    from sentinel_alerts.change_log as c
    where c.seq > %s
    order by c.seq
    limit %s
"""

# The in-progress transactions of a snapshot, still running now.
_STILL_RUNNING = """
    select count(*)
    from pg_snapshot_xip(%s::pg_snapshot) as x
    where pg_xact_status(x) = 'in progress'
"""


def _loads(text: str) -> dict[str, Any]:
    return json.loads(text, parse_float=Decimal)


def contiguous_prefix(seqs: list[int], position: int) -> int:
    """How many of the sorted `seqs` follow `position` without a gap."""
    expected = position + 1
    for index, seq in enumerate(seqs):
        if seq != expected:
            return index
        expected += 1
    return len(seqs)


class _ConnectedReader:
    """What every reader shares: one connection, dropped after a fault and reopened by the next read."""

    _conn: psycopg.Connection | None = None

    def open(self) -> None:
        raise NotImplementedError

    def _connection(self) -> psycopg.Connection:
        """The reader's connection, opened again (by `open`) after a reset."""
        if self._conn is None or self._conn.closed:
            self.open()
        return self._conn

    def reset(self) -> None:
        """Drop the connection after a fault; the next read reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    close = reset


class PostgresReader(_ConnectedReader):
    """One sink's reader of sentinel_alerts.change_log, woken by NOTIFY (via `wake`).

    Late commits: change-log writers take one advisory lock before their sequence numbers, so
    seqs commit in order and a gap is normally a rollback or a crash-time sequence jump. The
    reader still re-checks every gap: it delivers past a gap only once no transaction that was
    running in the snapshot that saw the gap is still running (and the gap is still empty)."""

    def __init__(self, dsn: str, sink: str, kind: str, *, from_now: bool = False,
                 wake: threading.Event | None = None) -> None:
        self.dsn = dsn
        self.sink = sink
        self.kind = kind
        self.from_now = from_now
        self.wake = wake or threading.Event()
        self.position: int = 0
        self.delivered = 0
        self.created = False
        self._conn: psycopg.Connection | None = None
        self._registered = False

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = connect(self.dsn)
            # one listener per sink: a second one would deliver everything twice
            locked = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                                  (f"sentinel_alerts.sink:{self.sink}",)).fetchone()[0]
            if not locked:
                conn.close()
                raise SinkBusy(f"sink {self.sink} is served by another listener "
                               "(pg_stat_activity: application_name = 'sentinel-alerts')")
            if not self._registered:
                check_postgres(conn)
                self.position, self.delivered, self.created = register_postgres(
                    conn, self.sink, self.kind, from_now=self.from_now)
                self._registered = True
            # Positions are then committed without waiting for their WAL flush, so the next batch is
            # not held up by an fsync: a killed listener loses nothing (the commit is visible at
            # once); a database crash may roll a position back by < 1 s, re-delivering those alerts
            # (same alert_ids). The registration above stays synchronous.
            conn.execute("set synchronous_commit = off")
            self._conn = conn
        return self._conn

    def open(self, *, busy_wait: float = 5.0) -> None:
        """Connect, take the sink's lock, check the schema and register the sink (raises on failure).

        The lock is waited for a few seconds: the server may not yet have noticed that the previous
        listener of this sink was killed."""
        deadline = time.monotonic() + busy_wait
        while True:
            try:
                self._connection()
                return
            except SinkBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _gap_is_final(self, conn: psycopg.Connection, snapshot: str, low: int, high: int) -> bool:
        running = conn.execute(_STILL_RUNNING, (snapshot,)).fetchone()[0]
        if running:
            return False
        # Everyone who could hold a seq in [low, high) has finished: is the gap still empty?
        filled = conn.execute(
            "select exists (select from sentinel_alerts.change_log where seq >= %s and seq < %s)",
            (low, high),
        ).fetchone()[0]
        return not filled

    def read(self, *, limit: int = 1000, wait: float = 1.0) -> Batch | None:
        """The next batch after the stored position, or None after waiting `wait` s for a NOTIFY."""
        conn = self._connection()
        self.wake.clear()
        rows = conn.execute(_READ, (self.position, limit)).fetchall()
        if not rows:
            self.wake.wait(wait)
            return None
        seqs = [row[0] for row in rows]
        usable = contiguous_prefix(seqs, self.position)
        while usable < len(rows):
            low = self.position + 1 if usable == 0 else seqs[usable - 1] + 1
            if not self._gap_is_final(conn, rows[0][7], low, seqs[usable]):
                break
            usable += 1 + contiguous_prefix(seqs[usable + 1:], seqs[usable])
        if usable == 0:
            self.wake.wait(0.005)  # a transaction holding the next seq is still running
            return None
        rows = rows[:usable]
        alerts = [
            make_alert(seq=seq, op=op, row=_loads(payload), flagged_at=logged_at, xact=xact, alert_id=alert_id)
            for seq, op, payload, logged_at, xact, alert_id, _head, _snapshot in rows
        ]
        return Batch(alerts=compact(alerts), position=rows[-1][0], head=rows[0][6], oldest_at=rows[0][3])

    def ack(self, batch: Batch) -> None:
        """Store the sink's position after its batch was delivered."""
        conn = self._connection()
        conn.execute(
            """
            insert into sentinel_alerts.sink_positions as p (sink, kind, position, delivered)
            values (%(sink)s, %(kind)s, %(position)s, %(n)s)
            on conflict (sink) do update
                set position = excluded.position, delivered = p.delivered + %(n)s, updated_at = now()
            """,
            {"sink": self.sink, "kind": self.kind, "position": batch.position, "n": len(batch.alerts)},
        )
        self.position = batch.position
        self.delivered += len(batch.alerts)


# --------------------------------------------------------------------------------------------
# RisingWave: subscription cursor (compiled here, executed only against a RisingWave server)
# --------------------------------------------------------------------------------------------

RW_OPS = {"Insert": "+", "UpdateInsert": "+", "Delete": "-", "UpdateDelete": "-",
          "1": "+", "3": "+", "2": "-", "4": "-"}


def rw_declare_statement(cursor: str, subscription: str, since_ms: int | None, *,
                         from_now: bool = False) -> sql.Composed:
    """DECLARE for a subscription cursor: SINCE the stored rw_timestamp (inclusive), else the start."""
    if since_ms is not None:
        since = sql.SQL("since {}").format(sql.Literal(int(since_ms)))
    elif from_now:
        since = sql.SQL("since now()")
    else:
        since = sql.SQL("since begin()")
    return sql.SQL("declare {} subscription cursor for {} {}").format(
        sql.Identifier(cursor), sql.SQL(".").join(sql.Identifier(p) for p in subscription.split(".")), since)


def rw_fetch_statement(cursor: str, limit: int, timeout_s: float) -> sql.Composed:
    """FETCH up to `limit` rows, waiting at most `timeout_s` for the first one."""
    return sql.SQL("fetch {} from {} with (timeout = {})").format(
        sql.Literal(int(limit)), sql.Identifier(cursor), sql.Literal(f"{max(timeout_s, 0.001):.3f}s"))


@dataclass
class RwResume:
    """De-duplication for SINCE being inclusive: changes at the stored rw_timestamp may come again."""

    since_ms: int | None = None
    seen_at_since: set[str] = field(default_factory=set)

    def admit(self, rw_ts: int, alert_id: str, op: str) -> bool:
        """Whether a fetched change is new (not one already delivered at or before `since_ms`)."""
        if self.since_ms is None or rw_ts > self.since_ms:
            return True
        if rw_ts < self.since_ms:
            return False
        return f"{op}{alert_id}" not in self.seen_at_since

    def advance(self, changes: Iterable[tuple[int, str, str]]) -> None:
        """Record delivered (rw_ts, alert_id, op) changes: the position becomes the newest rw_ts."""
        for rw_ts, alert_id, op in changes:
            if self.since_ms is None or rw_ts > self.since_ms:
                self.since_ms, self.seen_at_since = rw_ts, set()
            if rw_ts == self.since_ms:
                self.seen_at_since.add(f"{op}{alert_id}")


def decode_rw_row(columns: list[str], row: tuple[Any, ...]) -> tuple[int, str, dict[str, Any]]:
    """(rw_timestamp, op '+'/'-', the flagged row's columns) from one subscription-cursor row."""
    values = dict(zip(columns, row))
    rw_ts = int(values.pop("rw_timestamp"))
    raw_op = str(values.pop("op"))
    if raw_op not in RW_OPS:
        raise ValueError(f"unknown subscription op {raw_op!r}")
    return rw_ts, RW_OPS[raw_op], values


class RisingWaveReader(_ConnectedReader):
    """One sink's reader of the `flagged_transactions` subscription; the position is an rw_timestamp.

    After a restart the cursor is declared SINCE the stored rw_timestamp; that bound is inclusive,
    so changes at exactly that timestamp may be delivered again (same alert_id): at least once."""

    def __init__(self, dsn: str, sink: str, kind: str, *, from_now: bool = False,
                 subscription: str = SUBSCRIPTION, wake: threading.Event | None = None) -> None:
        self.dsn, self.sink, self.kind, self.from_now = dsn, sink, kind, from_now
        self.subscription = subscription
        self.cursor = "sentinel_alerts_" + "".join(c if c.isalnum() else "_" for c in sink)[:40]
        self.resume = RwResume()
        self.position: int | None = None
        self.delivered = 0
        self.created = False
        self._conn: psycopg.Connection | None = None

    def open(self) -> None:
        conn = connect(self.dsn)
        try:
            row = conn.execute("select position, delivered from sentinel_alerts.sink_positions where sink = %s",
                               (self.sink,)).fetchone()
            self.created = row is None
            self.resume = RwResume(since_ms=int(row[0]) if row else None)
            self.position = self.resume.since_ms
            self.delivered = int(row[1]) if row else 0
            conn.execute(rw_declare_statement(self.cursor, self.subscription, self.resume.since_ms,
                                              from_now=self.from_now))
        except MISSING_OBJECT as exc:
            conn.close()
            raise missing(f"the alert subscription {self.subscription}", exc) from None
        self._conn = conn

    def read(self, *, limit: int = 1000, wait: float = 1.0) -> Batch | None:
        cur = self._connection().execute(rw_fetch_statement(self.cursor, limit, wait))
        columns = [d.name for d in cur.description or []]
        alerts, changes = [], []
        for row in cur.fetchall():
            rw_ts, op, values = decode_rw_row(columns, row)
            alert_id = f"{values.get('txn_id')}:{values.get('rule')}"
            if not self.resume.admit(rw_ts, alert_id, op):
                continue
            flagged_at = datetime.fromtimestamp(rw_ts / 1000, tz=timezone.utc)
            alerts.append(make_alert(seq=rw_ts, op=op, row=values, flagged_at=flagged_at))
            changes.append((rw_ts, alert_id, op))
        if not changes:
            return None
        return Batch(alerts=alerts, position=changes, oldest_at=alerts[0].logged_at)

    def ack(self, batch: Batch) -> None:
        # `on conflict do update full`: the row written replaces the stored one whole
        self.resume.advance(batch.position)
        self._connection().execute(
            "insert into sentinel_alerts.sink_positions (sink, kind, position, delivered, updated_at) "
            "values (%s, %s, %s, %s, now())",
            (self.sink, self.kind, self.resume.since_ms, self.delivered + len(batch.alerts)))
        self.position = self.resume.since_ms
        self.delivered += len(batch.alerts)


# --------------------------------------------------------------------------------------------
# Materialize: SUBSCRIBE ... WITH (PROGRESS) AS OF (compiled here, executed only against Materialize)
# --------------------------------------------------------------------------------------------

def mz_subscribe_statement(cursor: str, relation: str, as_of: int | None, *,
                           snapshot: bool = True) -> sql.Composed:
    """DECLARE a SUBSCRIBE cursor resuming after `as_of` (every update at or before it was delivered).

    AS OF t with SNAPSHOT = false emits only updates later than t; it needs the view's retained
    history to reach back to t (the dbt post-hook sets RETAIN HISTORY). Without a position, a new
    sink starts with the current rows (snapshot) or, from now, without them."""
    target = sql.SQL(".").join(sql.Identifier(p) for p in relation.split("."))
    if as_of is None:
        options = sql.SQL("progress") if snapshot else sql.SQL("progress, snapshot = false")
        return sql.SQL("declare {} cursor for subscribe {} with ({})").format(
            sql.Identifier(cursor), target, options)
    return sql.SQL("declare {} cursor for subscribe {} with (progress, snapshot = false) as of {}").format(
        sql.Identifier(cursor), target, sql.Literal(int(as_of)))


def mz_fetch_statement(cursor: str, timeout_s: float) -> sql.Composed:
    return sql.SQL("fetch all {} with (timeout = {})").format(
        sql.Identifier(cursor), sql.Literal(f"{max(timeout_s, 0.0):.3f}s"))


def decode_mz_rows(columns: list[str], rows: Iterable[tuple[Any, ...]]
                   ) -> tuple[list[tuple[int, str, dict[str, Any]]], int | None]:
    """Updates (mz_timestamp, op, row) — a diff of n emits |n| changes — and the last progress frontier.

    A progress row with timestamp t means every update before t has been emitted: the position to
    store is then t - 1 (as of t - 1, snapshot false, resumes with the updates at t and later)."""
    updates: list[tuple[int, str, dict[str, Any]]] = []
    frontier: int | None = None
    for row in rows:
        values = dict(zip(columns, row))
        ts = int(values.pop("mz_timestamp"))
        progressed = values.pop("mz_progressed", False)
        diff = values.pop("mz_diff")
        if progressed:
            frontier = ts
            continue
        op = "+" if int(diff) > 0 else "-"
        updates.extend((ts, op, values) for _ in range(abs(int(diff))))
    return updates, frontier


def split_at_frontier(updates: list[tuple[int, str, dict[str, Any]]], frontier: int
                      ) -> tuple[list[tuple[int, str, dict[str, Any]]], list[tuple[int, str, dict[str, Any]]]]:
    """(updates before the progress frontier: complete, deliverable; the rest: wait for more)."""
    return [u for u in updates if u[0] < frontier], [u for u in updates if u[0] >= frontier]


class MaterializeReader(_ConnectedReader):
    """One sink's SUBSCRIBE to the alert view; the position is a complete mz_timestamp frontier."""

    def __init__(self, dsn: str, sink: str, kind: str, *, from_now: bool = False,
                 relation: str = ALERT_VIEW, wake: threading.Event | None = None) -> None:
        self.dsn, self.sink, self.kind, self.from_now = dsn, sink, kind, from_now
        self.relation = relation
        self.cursor = "sentinel_alerts_sub"
        self.position: int | None = None
        self.delivered = 0
        self.created = False
        self._conn: psycopg.Connection | None = None
        self._pending: list[tuple[int, str, dict[str, Any]]] = []

    def open(self) -> None:
        conn = psycopg.connect(self.dsn, connect_timeout=5, application_name="sentinel-alerts")
        try:
            row = conn.execute("select max(position), max(delivered) from sentinel_alerts.sink_positions "
                               "where sink = %s", (self.sink,)).fetchone()
            conn.commit()
            self.position = int(row[0]) if row[0] is not None else None
            self.delivered = int(row[1]) if row[1] is not None else 0
            self.created = self.position is None
            conn.execute(mz_subscribe_statement(self.cursor, self.relation, self.position,
                                                snapshot=not (self.created and self.from_now)))
        except MISSING_OBJECT as exc:
            conn.close()
            raise missing(f"the alert view {self.relation}", exc) from None
        self._conn = conn

    def read(self, *, limit: int = 1000, wait: float = 1.0) -> Batch | None:
        cur = self._connection().execute(mz_fetch_statement(self.cursor, wait))
        columns = [d.name for d in cur.description or []]
        updates, frontier = decode_mz_rows(columns, cur.fetchall())
        self._pending.extend(updates)
        if frontier is None:
            return None
        complete, self._pending = split_at_frontier(self._pending, frontier)
        alerts = [make_alert(seq=ts, op=op, row=values,
                             flagged_at=datetime.fromtimestamp(ts / 1000, tz=timezone.utc))
                  for ts, op, values in complete]
        return Batch(alerts=alerts, position=frontier - 1, oldest_at=alerts[0].logged_at if alerts else None)

    def ack(self, batch: Batch) -> None:
        # a separate connection: the SUBSCRIBE transaction stays open on the reading one. Tables
        # have no keys on Materialize: update the sink's row, insert it the first time.
        with psycopg.connect(self.dsn, connect_timeout=5, autocommit=True) as conn:
            updated = conn.execute(
                "update sentinel_alerts.sink_positions set position = %s, delivered = delivered + %s, "
                "updated_at = now() where sink = %s",
                (batch.position, len(batch.alerts), self.sink)).rowcount
            if not updated:
                conn.execute("insert into sentinel_alerts.sink_positions (sink, kind, position, delivered) "
                             "values (%s, %s, %s, %s)", (self.sink, self.kind, batch.position, len(batch.alerts)))
        self.position = batch.position
        self.delivered += len(batch.alerts)

    def reset(self) -> None:
        self._pending = []  # SUBSCRIBE restarts from the stored position: buffered updates come again
        super().reset()

    close = reset


def make_reader(engine: str, dsn: str, sink: str, kind: str, *, from_now: bool,
                wake: threading.Event | None = None) -> Reader:
    """The reader for the engine behind `dsn`."""
    cls = {"postgres": PostgresReader, "risingwave": RisingWaveReader,
           "materialize": MaterializeReader}[engine]
    return cls(dsn, sink, kind, from_now=from_now, wake=wake)
