"""Online backfill: a changed model's new content computed while writers go on, then caught up.

Computed under the deploy's lock, the new content of a model over 10M rows of history would hold
every writer (and so every alert) for as long as the model's full evaluation takes: seconds per
model at 1M rows, tens at 10M. Instead, as PostgreSQL's CREATE INDEX CONCURRENTLY does, the
deploy (`install.deploy_model` with `connect`) builds it beside the live model on a connection of
its own:

1. **Capture.** Statement triggers on each of the model's inputs copy every inserted and deleted
   row, with the writer's transaction id, into a capture table (`sentinel_ivm.cap_<tag>_<n>`).
   Installing them waits for the writers in flight (a SHARE ROW EXCLUSIVE lock, released at once):
   every later change of an input is captured.
2. **Backfill.** In one REPEATABLE READ transaction, the model's SQL over its inputs as of that
   transaction's snapshot S fills a staging table (`sentinel_ivm.stage_<tag>`), indexed as the
   model is. Writers go on meanwhile; the live model stays maintained by its current triggers.
3. **Catch-up rounds.** While many captured changes are not visible in S, a new REPEATABLE READ
   transaction (snapshot S') applies those visible in S' and not in S to the staging table, with
   the model's own maintenance SQL run against it (the changes as its transition tables), and S'
   becomes S.
4. **Switch** (`install.deploy_model`, under the deploy's usual lock, which now holds writers only
   this long): the last captured changes not visible in S are applied, the live table is made
   equal to the staging table (only the rows that differ change, so downstream models and the
   alert change log see exactly the change), the new triggers replace the old, and the capture
   triggers, capture tables and staging table go.

A change is applied exactly once: a writer's changes are in the backfill (or a round) exactly
when its transaction is visible in that round's snapshot (`pg_visible_in_snapshot`), and every
transaction that wrote an input after the capture triggers were installed is captured. The
rounds' maintenance recomputes from the inputs as of their snapshot (windows: the affected keys;
aggregates: the touched groups, for inserts and deletes alike), so it holds for a batch of many
writers' changes at once; linear models apply the captured inserts before the captured deletes,
so that a row inserted and then deleted after S leaves nothing.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.ivm import group
from sentinel.ivm.planner import Branch, P, Plan, Step, _q, _qi, plan

# catch-up rounds outside the lock while more changes than this are pending, until the pending
# changes have twice not shrunk (writers as fast as the rounds: the rest is applied under the
# lock), at most MAX_ROUNDS
ROUND_ROWS = 2_000
MAX_ROUNDS = 10
# the statistics target of the catch-up's changes (`catch_up`)
SAMPLE_TARGET = 10
# how long `finish` waits for a lock on what it drops before leaving it to the next deploy
FINISH_LOCK_TIMEOUT = "10s"
# how long a step of the online phases waits for a lock before the deploy fails (not forever: the
# deploy's own transaction could be what it waits for)
LOCK_TIMEOUT = "5min"
# pg_advisory_lock(DEPLOY_CLASS, hashtext(relation)), held by an online deploy's own connection
# from its start to its end: one deploy of a model at a time, and capture triggers found without
# it held are a killed deploy's
DEPLOY_CLASS = 724581240
# Deploys of several models at once (dbt `threads` > 1), two locks of SWITCH_CLASS:
# - (SWITCH_CLASS, 0), for the deploy's transaction, taken before the SHARE ROW EXCLUSIVE locks of
#   its switch, which hold writers: one switch at a time. Otherwise their table locks queue behind
#   one another's, and writers, queued behind the first waiting request, are held from one switch
#   to the end of the last; this way they go on between them. (Not before an online deploy's
#   capture install: a transaction that has switched one model holds it to its commit, and its
#   next model's online deploy, on another connection, would wait for it.)
# - (SWITCH_CLASS, 1), for the session of an online deploy's own connection, from its capture
#   to its switch: one online deploy at a time. Otherwise each switch's last changes are applied
#   while other deploys' backfills take the cores (measured with `dbt run --threads 4`, four
#   models changed, the loader at 3,000 rows/s after 400,000 rows: a switch of 1,700 changes held
#   writers 1.84 s, against 0.2-0.5 s one deploy at a time).
SWITCH_CLASS = 724581241


# a captured change not yet applied: its transaction is not visible in the staging table's snapshot;
# the first term, implied by the second (transactions older than a snapshot's xmin are visible in
# it), lets the capture table's xid index skip the changes earlier rounds applied, so a round reads
# what it applies, not everything captured since the deploy began
UNAPPLIED = (f"{P}xid >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot) "
             f"and not pg_visible_in_snapshot({P}xid, %(snapshot)s::pg_snapshot)")


# the capture triggers of a deploy of the model of a tag (`tag`), as a LIKE pattern
_CAPTURE_TRIGGERS = "ivm\\_cap\\_%s\\_%%"


def tag(relation: str) -> str:
    return hashlib.sha1(relation.encode()).hexdigest()[:10]


@dataclass
class Staged:
    """A model's new content, built beside the live one and current as of `snapshot`."""

    relation: str  # the live model
    stage: str  # the staging table
    plan: Plan  # the model's plan with the staging table as its relation
    caps: list[tuple[str, str]]  # (input, its capture table)
    snapshot: str  # pg_snapshot (text) the staging table is current to
    # per input whose window group the model is a member of: the watermark table of a group of the
    # staging table alone, so that captured appends take the group's in-order path (as the writers'
    # batches do), not the general one, which is several times slower per row
    watermarks: dict[str, str] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)  # changes applied per catch-up round (the last: under the lock)
    round_s: list[float] = field(default_factory=list)  # each round's seconds
    switch_s: dict[str, float] = field(default_factory=dict)  # the switch's steps' seconds (`install._switch`)
    backfill_s: float = 0.0
    steps: dict[tuple[str, bool], list[Step]] = field(default_factory=dict)  # per (input, appends only): `catch_up`'s
    conn: Any = None  # the deploy's own connection, holding the model's deploy lock until the switch is over
    connect: Callable[[], Any] | None = None  # new connections like it (`finish`)


def _capture_fn(relation: str, n: int, event: str) -> str:
    return f"sentinel_ivm.{_qi(f'cap_{tag(relation)}_{n}_{event[0]}')}"


def _capture_trigger(relation: str, event: str) -> str:
    return f"ivm_cap_{tag(relation)}_{event[0]}"


def detach(cur: Any, relation: str) -> None:
    """Drop the capture triggers (and their functions) of `relation`'s online deploy: writers stop
    capturing. What the switch does under the lock; the tables go after it (`finish`)."""
    cur.execute("select format('%%I', t.tgname), t.tgrelid::regclass::text, p.oid::regprocedure::text "
                "from pg_trigger t join pg_proc p on p.oid = t.tgfoid where t.tgname like %s and not t.tgisinternal",
                (_CAPTURE_TRIGGERS % tag(relation),))
    for name, rel, fn in cur.fetchall():
        cur.execute(f"drop trigger if exists {name} on {rel}")
        cur.execute(f"drop function if exists {fn}")


def _tables(cur: Any, relation: str) -> list[str]:
    """The capture, staging and watermark tables of `relation`'s online deploys."""
    t = tag(relation)
    cur.execute("select format('%%I.%%I', schemaname, tablename) from pg_tables where schemaname = 'sentinel_ivm' "
                "and (tablename like %s or tablename like %s or tablename = %s)",
                (f"cap\\_{t}\\_%", f"stagewm\\_{t}\\_%", f"stage_{t}"))
    return [r[0] for r in cur.fetchall()]


def cleanup(cur: Any, relation: str) -> None:
    """Drop the capture triggers, capture tables and staging table of `relation`'s online deploy
    (those of an earlier deploy that did not finish, too)."""
    detach(cur, relation)
    for table in _tables(cur, relation):
        cur.execute(f"drop table if exists {table}")


def finish(st: Staged) -> None:
    """After the caller committed the switch: drop the deploy's capture, staging and watermark tables
    (`clean_stale`, on a connection of its own), not under the switch's lock, which holds writers:
    in one switch under load, dropping a capture of 1.6M rows took 0.24 s and the commit that
    unlinks it 0.43 s. If the caller rolled the switch back, its capture triggers are back and go
    too. What a session still holds after FINISH_LOCK_TIMEOUT is left to the next deploy."""
    if st.connect is not None:
        clean_stale(st.connect, st.relation, lock_timeout=FINISH_LOCK_TIMEOUT)


def backfill(connect: Callable[[], Any], p: Plan, *, sql: str, model: str, unique_key: list[str] | None,
             on_step: Callable[[str], None] = lambda _msg: None,
             on_staged: Callable[[Staged], None] = lambda _st: None) -> Staged:
    """Steps 1-3 on a connection of `connect`'s; the caller switches (step 4) under its lock.
    `on_staged` runs once the staging table is built, before the rounds (whose last changes the
    switch applies grow with the time from the last round to the lock)."""
    from sentinel.ivm.install import TRANSITION_TABLES, _columns, _ensure_indexes, output_columns

    stage = f"sentinel_ivm.stage_{tag(p.relation)}"
    conn = connect()
    conn.autocommit = True  # transactions are begun here, each with its isolation level
    cur = conn.cursor()
    try:
        cur.execute(f"set lock_timeout = '{LOCK_TIMEOUT}'")
        cur.execute("select pg_advisory_lock(%s, hashtext(%s))", (DEPLOY_CLASS, p.relation))
        # then the online deploys' turn (`SWITCH_CLASS`), however long the others' backfills take
        cur.execute("set lock_timeout = 0")
        cur.execute("select pg_advisory_lock(%s, 1)", (SWITCH_CLASS,))
        cur.execute(f"set lock_timeout = '{LOCK_TIMEOUT}'")
        # 1. capture (after what a killed deploy of the model left)
        cur.execute("begin")
        cleanup(cur, p.relation)
        caps = []
        for n, rel in enumerate(sorted(p.inputs)):
            cur.execute(f"lock table {_q(rel)} in share row exclusive mode")
            cap = f"sentinel_ivm.cap_{tag(p.relation)}_{n}"
            cols = ", ".join(_qi(c) for c, _ in _columns(cur, rel))
            cur.execute(f'create unlogged table {cap} as select null::"char" as {P}op, null::xid8 as {P}xid, {cols} '
                        f"from {_q(rel)} limit 0")
            # each round reads only the changes from its snapshot's oldest transaction on (`UNAPPLIED`)
            cur.execute(f"create index on {cap} ({P}xid)")
            for event in ("insert", "delete", "update"):
                rows = {"insert": [("i", f"{P}new")], "delete": [("d", f"{P}old")],
                        "update": [("d", f"{P}old"), ("i", f"{P}new")]}[event]
                body = "\n".join(f"    insert into {cap} select '{op}', pg_current_xact_id(), {cols} from {t};"
                                 for op, t in rows)
                fn = _capture_fn(p.relation, n, event)
                cur.execute(f"create function {fn}() returns trigger language plpgsql security definer "
                            f"set search_path = pg_catalog, pg_temp as $cap$\nbegin\n{body}\n    return null;\nend\n$cap$")
                cur.execute(f"revoke all on function {fn}() from public")
                cur.execute(f"create trigger {_qi(_capture_trigger(p.relation, event))} after {event} on {_q(rel)} "
                            f"referencing {TRANSITION_TABLES[event]} for each statement execute function {fn}()")
            caps.append((rel, cap))
        cur.execute("commit")
        # 2. backfill, as of one snapshot
        t0 = time.perf_counter()
        on_step("captured")
        cur.execute("begin isolation level repeatable read")
        cur.execute("select pg_current_snapshot()::text")
        snapshot = cur.fetchone()[0]
        on_step("snapshot")
        cur.execute(f"create unlogged table {stage} as {p._tree.sql('postgres')}")
        sp = plan(sql, model=model, relation=stage, unique_key=unique_key)
        sp.columns = output_columns(model, _columns(cur, stage), sp.locator)
        _ensure_indexes(cur, sp)
        cur.execute(f"analyze {stage}")
        watermarks = {}
        for n, (rel, _cap) in enumerate(caps):
            m = group.member(sp, rel)
            if m is not None:
                wm = f"sentinel_ivm.stagewm_{tag(p.relation)}_{n}"
                cur.execute(f"create unlogged table {wm} as {group.watermark_init(rel, m.key, m.order)}")
                cur.execute(f"alter table {wm} add primary key (bucket)")
                watermarks[rel] = wm
        cur.execute("commit")
        st = Staged(relation=p.relation, stage=stage, plan=sp, caps=caps, snapshot=snapshot,
                    watermarks=watermarks, backfill_s=time.perf_counter() - t0, conn=conn, connect=connect)
        for rel, _cap in caps:
            _steps(cur, st, rel, appends=True)  # the common case, made before the lock
        on_staged(st)
        # 3. catch-up rounds while the writers go on
        on_step("backfilled")
        rounds(st, on_step)
        return st
    except BaseException:
        try:
            cur.execute("rollback")
            cur.execute("begin")
            cleanup(cur, p.relation)
            cur.execute("commit")
        finally:
            conn.close()
        raise


def rounds(st: Staged, on_step: Callable[[str], None] = lambda _msg: None) -> None:
    """Catch-up rounds on the deploy's own connection, while writers go on, until at most
    ROUND_ROWS changes are pending, or they have twice not shrunk, or MAX_ROUNDS in all."""
    cur = st.conn.cursor()
    least, stalled = None, 0
    while len(st.rounds) < MAX_ROUNDS:
        n = pending(cur, st)
        if n <= ROUND_ROWS:
            break
        if least is not None and n >= least:
            stalled += 1
            if stalled == 2:
                break
        least = n if least is None else min(least, n)
        on_step(f"catch-up round {len(st.rounds) + 1}")
        t = time.perf_counter()
        cur.execute("begin isolation level repeatable read")
        cur.execute("select pg_current_snapshot()::text")
        nxt = cur.fetchone()[0]
        st.rounds.append(catch_up(cur, st))
        cur.execute("commit")
        st.round_s.append(time.perf_counter() - t)
        st.snapshot = nxt


def switch_lock(cur: Any) -> float:
    """Take the switch lock (`SWITCH_CLASS`) for this transaction; return the seconds waited."""
    t = time.perf_counter()
    cur.execute("select pg_advisory_xact_lock(%s, 0)", (SWITCH_CLASS,))
    return time.perf_counter() - t


def abandon(st: Staged) -> None:
    """After a failed switch (the deploy's transaction rolled back): remove the capture triggers and
    tables and the staging table on the deploy's own connection, and close it."""
    try:
        with st.conn.cursor() as cur:
            cur.execute("begin")
            cleanup(cur, st.relation)
            cur.execute("commit")
    finally:
        st.conn.close()


def leftovers(cur: Any, relation: str) -> bool:
    """Whether capture triggers or tables of an online deploy of `relation` exist (no lock taken)."""
    cur.execute("select exists (select from pg_trigger where tgname like %s and not tgisinternal)",
                (_CAPTURE_TRIGGERS % tag(relation),))
    return bool(cur.fetchone()[0]) or bool(_tables(cur, relation))


def clean_stale(connect: Callable[[], Any], relation: str, *, lock_timeout: str = LOCK_TIMEOUT) -> None:
    """`cleanup` of what a killed or finished deploy of `relation` left, if no deploy of it runs,
    in a transaction of its own on a new connection: the deploy's transaction then holds none of
    the locks (the tables', the deploy lock) that its own online backfill would wait for. A lock
    not had within `lock_timeout` leaves everything to the next deploy (whose backfill cleans up
    first, under the deploy lock)."""
    with connect() as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("begin")
        cur.execute(f"set local lock_timeout = '{lock_timeout}'")
        try:
            if stale(cur, relation):
                cleanup(cur, relation)
            cur.execute("commit")
        except Exception as exc:
            if (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) != "55P03":  # lock_not_available
                raise
            cur.execute("rollback")


def stale(cur: Any, relation: str) -> bool:
    """Whether a killed online deploy of `relation` left capture triggers, or a finished one its
    tables (`finish` not called, or it could not drop them), and none is running: its deploy lock
    is free. Taking the lock for this transaction keeps one from starting meanwhile."""
    if not leftovers(cur, relation):
        return False
    cur.execute("select pg_try_advisory_xact_lock(%s, hashtext(%s))", (DEPLOY_CLASS, relation))
    return bool(cur.fetchone()[0])


def pending(cur: Any, st: Staged) -> int:
    """Captured changes not yet in the staging table (as far as this statement sees)."""
    total = 0
    for _rel, cap in st.caps:
        # the xid column's statistics as the table grows (a few ms; writers go on meanwhile), so
        # that the planner reads a round's few recent changes by the index, not the whole table
        cur.execute(f"analyze {cap} ({P}xid)")
        cur.execute(f"select count(*) from {cap} where {UNAPPLIED}", {"snapshot": st.snapshot})
        total += cur.fetchone()[0]
    return total


def catch_up(cur: Any, st: Staged) -> int:
    """Apply to the staging table the captured changes its snapshot does not show (those this
    transaction sees); return how many."""
    from sentinel.ivm.install import _columns

    applied = 0
    # the changes' statistics from a small sample: the plans need their sizes and keys' spread, and
    # a full sample of every column costs as much as applying them (160 vs 14 ms for 32,000 rows)
    cur.execute("select current_setting('default_statistics_target')")
    target = cur.fetchone()[0]
    for rel, cap in st.caps:
        cols = ", ".join(_qi(c) for c, _ in _columns(cur, rel))
        for op, t in (("d", f"{P}old"), ("i", f"{P}new")):
            cur.execute(f"drop table if exists pg_temp.{t}")
            cur.execute(f"create temp table {t} on commit drop as select {cols} from {cap} "
                        f"where {P}op = '{op}' and {UNAPPLIED}", {"snapshot": st.snapshot})
            applied += cur.rowcount
            cur.execute("select set_config('default_statistics_target', %s, true)", (str(SAMPLE_TARGET),))
            cur.execute(f"analyze pg_temp.{t}")
            cur.execute("select set_config('default_statistics_target', %s, true)", (target,))
        cur.execute(f"select exists (select from pg_temp.{P}old)")
        run_steps(cur, _steps(cur, st, rel, appends=not cur.fetchone()[0]))
        for t in (f"{P}old", f"{P}new"):
            cur.execute(f"drop table pg_temp.{t}")
    return applied


def _steps(cur: Any, st: Staged, rel: str, *, appends: bool) -> list[Step]:
    """The statements that apply captured changes of `rel` to the staging table (as its transition
    tables), made once per deploy: the same every round, and the last round holds the writers."""
    from sentinel.ivm.install import _bytewise_default, _columns

    steps = st.steps.get((rel, appends))
    if steps is None:
        sp = st.plan
        if appends:
            # appends only (a source): applied as the writers' own batches are
            # (no key-bucket locks: no trigger maintains the staging table)
            if rel in st.watermarks:
                g = group.Group(rel, [group.member(sp, rel)], _columns(cur, rel),
                                bytewise_default=_bytewise_default(cur), watermark=st.watermarks[rel])
                steps = g.statements(locks=False)
            else:
                steps = sp.statements(rel, "insert", locks=False)
        elif sp.shape == "linear":
            # inserts first: a row inserted and then deleted since the snapshot leaves nothing
            steps = sp.statements(rel, "insert") + sp.statements(rel, "delete")
        else:
            # windows and aggregates recompute what the changes touch from the inputs as they are
            steps = sp.statements(rel, "update", locks=False)
        st.steps[(rel, appends)] = steps
    return steps


def run_steps(cur: Any, steps: list[Step]) -> None:
    """Run trigger-body steps as a trigger function does (`install._plpgsql`), from a client."""
    for step in steps:
        if isinstance(step, Branch):
            cur.execute(step.test)
            run_steps(cur, step.then if cur.fetchone()[0] else step.otherwise)
        else:
            cur.execute(step)


__all__ = ["UNAPPLIED", "Staged", "abandon", "backfill", "catch_up", "clean_stale", "cleanup", "detach", "finish",
           "leftovers", "pending", "rounds", "run_steps", "stale", "switch_lock", "tag"]
