"""Install a planned model: its table, its content (backfill or diff), its triggers, its registry row.

Runs inside the caller's transaction (dbt's), on any DB-API cursor with `%s` parameters. Input
writers are held by a SHARE ROW EXCLUSIVE lock on the source tables upstream of the model while
the new content is put in place, so a redeploy under load loses nothing and counts nothing twice;
with `connect`, the content is built online beforehand (`online.py`) and the lock holds writers
only for the switch.
"""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.ivm import group, online
from sentinel.ivm.planner import Branch, IvmUnsupported, P, Plan, Step, _cols, _multiset_delete, _q, _qi, plan

EVENTS = {"insert": "i", "delete": "d", "update": "u"}
# a statement trigger's transition tables, by event
TRANSITION_TABLES = {"insert": f"new table as {P}new", "delete": f"old table as {P}old",
                     "update": f"old table as {P}old new table as {P}new"}
# An aggregate's rows are updated in place on every batch: room on each page keeps the updates
# HOT (no new index entries); measured about 25% cheaper for card_activity than full pages.
AGGREGATE_FILLFACTOR = 60


@dataclass
class DeployResult:
    """What a deploy did, for dbt's log line."""

    relation: str
    shape: str
    action: str  # unchanged | created | recreated | diffed
    inserted: int = 0
    deleted: int = 0
    online: online.Staged | None = None  # built online: its backfill and catch-up rounds

    def message(self) -> str:
        msg = f"{self.action} {self.shape}"
        if self.action == "diffed":
            msg += f" (+{self.inserted} -{self.deleted})"
        if self.online is not None:
            msg += (f"; online: backfill {self.online.backfill_s:.1f} s, then "
                    f"{' + '.join(str(n) for n in self.online.rounds)} captured changes, the last under the lock")
            if self.online.switch_s:
                # from the lock request to the switch's end: how long writers were held, at most
                # (and the commit, which dbt makes after its grants and docs)
                parts = ", ".join(f"{k} {v:.2f}" for k, v in self.online.switch_s.items())
                msg += f" ({sum(self.online.switch_s.values()):.2f} s: {parts})"
        return msg


def deploy_model(cur: Any, *, model: str, relation: str, sql: str, unique_key: list[str] | None = None,
                 force: bool = False, connect: Callable[[], Any] | None = None,
                 on_step: Callable[[str], None] = lambda _msg: None,
                 indexes: list[dict] | None = None) -> DeployResult:
    """Create or update a maintained model so that it equals its SQL and stays so.

    With `connect` (new connections to the same database, as the same role), the new content is
    built online (`online.py`): writers are held only while the last captured changes are applied
    and the tables switched, not for the model's whole evaluation (`on_step` hears its steps). Without
    it, for a model that joins inputs, or when this transaction holds locks (`_holds_locks`: it has
    written to a table or switched a model; the online steps would wait for it), it is computed
    under the lock. A failed online deploy rolls this
    transaction back before removing its capture triggers. After committing an online deploy,
    the caller calls `online.finish(result.online)`, which drops its capture and staging tables
    (left alone, the next deploy of the model drops them). `indexes` (dbt index configs): a unique
    one on exactly the columns the model's rows are looked up by is made as that lookup's index
    (`_ensure_indexes`), instead of a second index on the same columns."""
    p = plan(sql, model=model, relation=relation, unique_key=unique_key)
    reg = _registry(cur, relation)
    kind = _relkind(cur, relation)
    if online.leftovers(cur, relation):
        # a killed online deploy's capture (it would cost writers forever), an unfinished one's tables
        if connect is not None and not _holds_locks(cur):
            online.clean_stale(connect, relation)  # apart: this transaction's locks would hold up its backfill
        elif online.stale(cur, relation):
            online.cleanup(cur, relation)
    if (not force and reg and reg["fingerprint"] == p.fingerprint and kind == "r"
            and _triggers_present(cur, p)):
        _ensure_indexes(cur, p, indexes or [])
        return DeployResult(relation, p.shape, "unchanged")
    for rel in p.inputs:
        k = _relkind(cur, rel)
        if k is None:
            raise IvmUnsupported(model, f"its input {rel} does not exist")
        if k not in ("r", "p"):
            raise IvmUnsupported(model, f"its input {rel} is a view, not a table",
                                 "make the input model ephemeral or materialized_view")
    roots = _roots(cur, p.inputs)
    for joined in p.joined:
        shared = [set(_roots(cur, [g])) for g in joined]
        for i in range(len(shared)):
            for j in range(i + 1, len(shared)):
                if shared[i] & shared[j]:
                    raise IvmUnsupported(
                        model, f"a join of {joined[i]} and {joined[j]}, which change in the same statement "
                        f"(both derive from {', '.join(sorted(shared[i] & shared[j]))})",
                        "carry the columns through the upstream model instead of joining back")
    staged = None
    if connect is not None and not p.joined and not _holds_locks(cur):
        staged = online.backfill(connect, p, sql=sql, model=model, unique_key=unique_key, on_step=on_step,
                                 on_staged=lambda st: _prepare_groups(cur, p, sql, st.plan.columns))
    try:
        result = _switch(cur, p, sql=sql, reg=reg, kind=kind, roots=roots, staged=staged, on_step=on_step,
                         indexes=indexes or [])
    except BaseException:
        if staged is not None:
            # this transaction's locks go first: the capture triggers are dropped on another connection
            cur.connection.rollback()
            online.abandon(staged)
        raise
    if staged is not None:
        # releases the model's deploy lock; a deploy that starts before the caller commits the
        # switch waits for it at the capture triggers it would drop
        staged.conn.close()
        result.online = staged
    return result


def _switch(cur: Any, p: Plan, *, sql: str, reg: dict | None, kind: str | None, roots: list[str],
            staged: online.Staged | None, on_step: Callable[[str], None], indexes: list[dict]) -> DeployResult:
    """Under the lock: the new content (computed, or the staged one caught up), the table, the triggers."""
    model, relation = p.model, p.relation
    # One switch at a time, waited for before anything that holds writers (`online.SWITCH_CLASS`);
    # an online deploy that waited for another's catches up again first, while writers go on. Not
    # in a transaction that holds locks (`_holds_locks`: it has written to a table, or holds the
    # switch lock already): a switch holding the switch lock could wait for its writes, and it for
    # the switch lock (a deadlock; without that lock the two table lock requests wait in one queue,
    # which PostgreSQL reorders).
    if not _holds_locks(cur) and online.switch_lock(cur) > 0.05 and staged is not None:
        online.rounds(staged, on_step)
    marks = [("asked", time.perf_counter())]  # the switch's steps, for an online deploy's report
    if staged is not None:
        on_step("switch")
    # Hold writers: upstream sources first (sorted, one order for everyone), then the global lock.
    for rel in sorted(set(roots) | set(p.inputs)):
        cur.execute(f"lock table {_q(rel)} in share row exclusive mode")
    cur.execute("select sentinel_ivm.lock_all()")
    marks.append(("lock wait", time.perf_counter()))
    if reg:
        _drop_triggers(cur, relation, reg["inputs"])
    if staged is not None:
        staged.rounds.append(online.catch_up(cur, staged))
        marks.append(("catch-up", time.perf_counter()))
        staged.round_s.append(marks[-1][1] - marks[-2][1])
        tmp = staged.stage
    else:
        tmp = f"pg_temp.{P}next"
        cur.execute(f"drop table if exists {tmp}")
        cur.execute(f"create temp table {P}next on commit drop as {p._tree.sql('postgres')}")
    new_cols = _columns(cur, tmp)
    p.columns = output_columns(model, new_cols, p.locator)
    old_cols = _columns(cur, relation) if kind == "r" else None
    result = DeployResult(relation, p.shape, "created")
    dependents: list[dict] = []
    if old_cols == new_cols:
        result.action = "diffed"
        result.deleted, result.inserted = _apply_diff(cur, relation, new_cols, tmp)
    else:
        if kind is not None:
            dependents = _dependents(cur, relation)
            word = "table" if kind == "r" else ("view" if kind == "v" else "materialized view" if kind == "m" else "table")
            cur.execute(f"drop {word} {_q(relation)} cascade")
            result.action = "recreated"
        schema = relation.split(".")[0]
        cur.execute(f"create schema if not exists {_qi(schema)}")
        cols_ddl = ", ".join(f"{_qi(c)} {t}" for c, t in new_cols)
        storage = f" with (fillfactor = {AGGREGATE_FILLFACTOR})" if p.shape == "aggregate" else ""
        cur.execute(f"create table {_q(relation)} ({cols_ddl}){storage}")
        cur.execute(f"insert into {_q(relation)} select * from {tmp}")
        result.inserted = cur.rowcount
    marks.append(("table", time.perf_counter()))
    if staged is not None:
        online.detach(cur, relation)  # its tables go after the commit (`online.finish`)
    else:
        cur.execute(f"drop table {tmp}")
    if p.shape == "aggregate" and result.action == "diffed":
        cur.execute(f"alter table {_q(relation)} set (fillfactor = {AGGREGATE_FILLFACTOR})")
    _ensure_indexes(cur, p, indexes)
    _install_triggers(cur, p)
    cur.execute(
        "insert into sentinel_ivm.models (relation, model, shape, inputs, roots, columns, locator, sql, fingerprint) "
        "values (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "on conflict (relation) do update set model = excluded.model, shape = excluded.shape, "
        "inputs = excluded.inputs, roots = excluded.roots, columns = excluded.columns, locator = excluded.locator, "
        "sql = excluded.sql, fingerprint = excluded.fingerprint, refreshed_at = now(), "
        "installed_at = case when sentinel_ivm.models.fingerprint = excluded.fingerprint "
        "then sentinel_ivm.models.installed_at else now() end",
        (relation, model, p.shape, p.inputs, sorted(roots), p.columns, p.locator, sql, p.fingerprint))
    if p.shape == "window" or (reg and reg["shape"] == "window"):
        _install_groups(cur, sorted(set(p.inputs) | set(reg["inputs"] if reg else [])))
    # Dependents lost their triggers with the dropped table: rebuild them from their registered SQL.
    for dep in dependents:
        deploy_model(cur, model=dep["model"], relation=dep["relation"], sql=dep["sql"],
                     unique_key=dep["locator"] if dep["shape"] == "linear" else None, force=True)
    marks.append(("triggers", time.perf_counter()))
    if staged is not None:
        staged.switch_s = {name: round(t - marks[i][1], 3) for i, (name, t) in enumerate(marks[1:])}
    return result


def drop_model(cur: Any, relation: str) -> None:
    """Remove a model's triggers, functions and registry row (the table is the caller's)."""
    reg = _registry(cur, relation)
    if reg:
        _drop_triggers(cur, relation, reg["inputs"])
        cur.execute("delete from sentinel_ivm.models where relation = %s", (relation,))
        _install_groups(cur, reg["inputs"])


# ----- pieces -----------------------------------------------------------------------------

def output_columns(model: str, cols: list[tuple[str, str]], locator: list[str]) -> list[str]:
    """The model's output column names, checked: distinct, and holding its unique_key."""
    names = [c for c, _ in cols]
    if len(set(names)) != len(names):
        raise IvmUnsupported(model, "duplicate output column names")
    for c in locator:
        if c not in names:
            raise IvmUnsupported(model, f"unique_key column {c!r} is not an output column")
    return names


def _holds_locks(cur: Any) -> bool:
    """Whether this transaction holds a lock that another connection's deploy step may wait for:
    more than ACCESS SHARE on a table that is not its own temporary one (it wrote to a table, or
    switched a model already), or the switch lock. Then the deploy's steps stay in this
    transaction: on a connection of their own they would wait for it (the capture's table locks,
    a stale deploy's cleanup), or for their turn (`online.SWITCH_CLASS`) behind a switch that
    waits for it, which PostgreSQL cannot see as a deadlock; and its switch does not wait for the
    switch lock behind a switch that may wait for it (`_switch`)."""
    cur.execute("select exists (select from pg_locks l left join pg_class c on c.oid = l.relation "
                "where l.pid = pg_backend_pid() and l.granted and ("
                "(l.locktype = 'relation' and l.mode <> 'AccessShareLock' and c.relpersistence is distinct from 't') "
                "or (l.locktype = 'advisory' and l.classid = %s and l.objid = 0 and l.objsubid = 2)))",
                (online.SWITCH_CLASS,))
    return bool(cur.fetchone()[0])


def _registry(cur: Any, relation: str) -> dict | None:
    cur.execute("select to_regclass('sentinel_ivm.models') is not null")
    if not cur.fetchone()[0]:
        raise IvmUnsupported(relation, "the schema sentinel_ivm is missing",
                             "apply sql/postgres (run `sentinel up`) before `dbt run`")
    cur.execute("select model, relation, shape, inputs, roots, locator, sql, fingerprint "
                "from sentinel_ivm.models where relation = %s", (relation,))
    row = cur.fetchone()
    if row is None:
        return None
    keys = ["model", "relation", "shape", "inputs", "roots", "locator", "sql", "fingerprint"]
    return dict(zip(keys, row))


def _dependents(cur: Any, relation: str) -> list[dict]:
    cur.execute("select relation from sentinel_ivm.models where %s = any(inputs) order by relation", (relation,))
    return [_registry(cur, r[0]) for r in cur.fetchall()]


def _relkind(cur: Any, relation: str) -> str | None:
    cur.execute("select c.relkind::text from pg_class c where c.oid = to_regclass(%s)", (_q(relation),))
    row = cur.fetchone()
    return row[0] if row else None


def _columns(cur: Any, relation: str) -> list[tuple[str, str]]:
    cur.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute "
        "where attrelid = %s::regclass and attnum > 0 and not attisdropped order by attnum", (_q(relation),))
    return [(r[0], r[1]) for r in cur.fetchall()]


def _roots(cur: Any, inputs: list[str]) -> list[str]:
    roots: set[str] = set()
    for rel in inputs:
        cur.execute("select roots from sentinel_ivm.models where relation = %s", (rel,))
        row = cur.fetchone()
        roots.update(row[0] if row else [rel])
    return sorted(roots)


# types (format_type) whose default equality is identity: equal values have the same text
_EQUAL_IS_SAME = re.compile(r"(text|character varying(\(\d+\))?|character\(\d+\)|bigint|integer|smallint|boolean|"
                            r"timestamp(\(\d\))? with(out)? time zone|date|uuid|bytea|numeric\(\d+,\d+\))$")


def _apply_diff(cur: Any, relation: str, cols: list[tuple[str, str]], tmp: str) -> tuple[int, int]:
    """Make the table (columns `cols`: name, type) equal the new content `tmp` with the fewest row
    changes (multiset difference).

    Two hashed EXCEPT ALLs find the rows that differ, each way, in one pass over the two tables
    each (a redeploy's switch does this under the lock: 0.17-0.22 s for a table of 51,000 flag
    rows with 400 changed, against 0.61-0.83 s for `multiset_diff`, which numbers every row of
    both); only the rows to go are then matched with the table's. Types whose default equality is
    not identity (numeric 1.0 = 1.00, interval '1 day' = '24 hours', float -0 = 0) or that have
    none (json) are compared by their text."""
    names = [n for n, _ in cols]
    exact = ", ".join(_qi(n) if _EQUAL_IS_SAME.match(t) else f"{_qi(n)}::text as {_qi(n)}" for n, t in cols)
    typed = ", ".join(_qi(n) if _EQUAL_IS_SAME.match(t) else f"{_qi(n)}::{t}" for n, t in cols)
    for table, minus, left in ((f"{P}gone", tmp, _q(relation)), (f"{P}come", _q(relation), tmp)):
        cur.execute(f"create temp table {table} on commit drop as "
                    f"select {exact} from {left} except all select {exact} from {minus}")
    deleted = 0
    cur.execute(f"select exists (select from {P}gone)")
    if cur.fetchone()[0]:
        # the table's candidates: its rows whose first column is one a row to go has (hashed; the
        # null value by `is null`, which the locator match of `_multiset_delete` would miss)
        k = _qi(names[0])
        candidates = (f"{P}m.{k} in (select d.{k} from {P}d as d) "
                      f"or ({P}m.{k} is null and exists (select from {P}d as d where d.{k} is null))")
        cur.execute(_multiset_delete(relation, names, [], f"select {typed} from {P}gone", candidates=candidates))
        deleted = cur.rowcount
    cur.execute(f"insert into {_q(relation)} ({_cols(names)}) select {typed} from {P}come")
    inserted = cur.rowcount
    cur.execute(f"drop table {P}gone, {P}come")
    return deleted, inserted


def _short(relation: str, tag: str) -> str:
    h = hashlib.sha1(relation.encode()).hexdigest()[:8]
    base = relation.split(".")[-1][:40]
    return f"ivm_{base}_{h}_{tag}"


def btree_indexes(cur: Any, relation: str) -> list[tuple[str, bool, list[str]]]:
    """`relation`'s valid plain btree indexes (no expressions, no predicate): (name, unique, key
    columns in order; an `include`d column is not one, as the index cannot be searched by it)."""
    cur.execute(
        "select c.relname::text, i.indisunique, array(select a.attname::text from "
        "unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) with ordinality k(n, o) "
        "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n order by k.o) "
        "from pg_index i join pg_class c on c.oid = i.indexrelid join pg_am am on am.oid = c.relam "
        "where i.indrelid = to_regclass(%s) and am.amname = 'btree' and i.indexprs is null "
        "and i.indpred is null and i.indisvalid order by 1", (_q(relation),))
    return [(name, unique, list(cols)) for name, unique, cols in cur.fetchall()]


def index_columns(index: dict) -> list[str]:
    """The columns of a dbt index config (`columns` is a name or a list of them)."""
    cols = index.get("columns")
    return [cols] if isinstance(cols, str) else list(cols or [])


def _ensure_indexes(cur: Any, p: Plan, indexes: list[dict] = ()) -> None:
    """The model's own index, made equal to what the table needs, with DDL only where it changes
    (an unchanged deploy calls this too, and must not wait on writers for nothing).

    An aggregate's: unique on its group keys (the upserts' conflict target). Else the one on the
    columns its rows are looked up by (the locator), which any index leading with those columns
    serves as well: none is made when the table has such an index, and a plain one of ours goes
    when another index serves (an earlier build made it plain beside a configured unique one, so
    such tables maintained two on every write: `flagged_transactions`' `(txn_id, rule)`). Ours is
    unique when a dbt config (`indexes`) asks for a unique index on exactly those columns, so
    that dbt finds it made (`sentinel_index_covered`) rather than adding a second; a unique one
    of ours is kept, as it is the one that enforces that."""
    existing = btree_indexes(cur, p.relation)
    if p.shape == "aggregate":
        key = _short(p.relation, "key")
        if not any(name == key for name, _u, _c in existing):
            cur.execute(f"create unique index if not exists {_qi(key)} on {_q(p.relation)} ({_cols(p.group_keys)}) nulls not distinct")
        return
    if not p.locator:
        return
    mine = _short(p.relation, "loc")
    ours = [unique for name, unique, _c in existing if name == mine]
    served = any(name != mine and cols[:len(p.locator)] == p.locator for name, _u, cols in existing)
    if served and ours and not ours[0]:
        cur.execute(f"drop index {_qi(p.relation.split('.')[0])}.{_qi(mine)}")
    elif not served and not ours:
        unique = any(i.get("unique") and i.get("type") in (None, "btree") and index_columns(i) == p.locator
                     for i in indexes)
        cur.execute(f"create {'unique ' if unique else ''}index if not exists {_qi(mine)} on {_q(p.relation)} ({_cols(p.locator)})")


def _in_group(p: Plan) -> bool:
    """Whether appends to `p`'s input reach it through its input's window group."""
    return len(p.inputs) == 1 and group.member(p, p.inputs[0]) is not None


def _func_name(relation: str, source: str, event: str) -> str:
    h = hashlib.sha1(f"{relation}|{source}".encode()).hexdigest()[:10]
    name = relation.split(".")[-1][:32]
    return "sentinel_ivm." + _qi(f"m_{name}_{h}_{EVENTS[event]}")


def _trigger_name(relation: str, event: str) -> str:
    h = hashlib.sha1(relation.encode()).hexdigest()[:10]
    return f"ivm_{relation.split('.')[-1][:32]}_{h}_{EVENTS[event]}"


def _install_triggers(cur: Any, p: Plan) -> None:
    # Maintenance that joins inputs reads rows other writers may be changing: it runs alone.
    lock = "lock_all" if p.joined else "lock"
    grouped = _in_group(p)
    for source in p.inputs:
        for event in EVENTS:
            if grouped and event == "insert":
                continue  # the input's group trigger maintains it
            stmts = p.statements(source, event)
            fn = _func_name(p.relation, source, event)
            check = {"insert": f"{P}new", "delete": f"{P}old", "update": f"{P}new"}[event]
            _statement_trigger(cur, source, event, _trigger_name(p.relation, event), fn, stmts,
                               check=check, lock=lock)


def _statement_trigger(cur: Any, rel: str, event: str, name: str, fn: str, steps: list[Step], *, check: str,
                       lock: str) -> None:
    """(Re)create trigger `name`: after `event` on `rel`, for each statement, `fn` runs `steps` (under
    sentinel_ivm.<lock>(), as the function's owner) when its transition table `check` has rows."""
    # EXECUTE plans each statement for the current statistics and batch size: a plan cached
    # while the tables were small would scan them whole forever after.
    cur.execute(
        f"create or replace function {fn}() returns trigger\n"
        f"language plpgsql security definer set search_path = pg_catalog, pg_temp as $ivm$\n"
        f"declare {P}test boolean;\n"
        f"begin\n"
        f"    if not exists (select from {check}) then return null; end if;\n"
        f"    perform sentinel_ivm.{lock}();\n{_plpgsql(steps)}\n    return null;\nend\n$ivm$")
    cur.execute(f"revoke all on function {fn}() from public")
    refs = TRANSITION_TABLES[event]
    cur.execute(f"drop trigger if exists {_qi(name)} on {_q(rel)}")
    cur.execute(f"create trigger {_qi(name)} after {event} on {_q(rel)} referencing {refs} "
                f"for each statement execute function {fn}()")


def _plpgsql(steps: list[Step], indent: str = "    ") -> str:
    """A trigger function's body: each statement planned on each call; temp tables created once per session."""
    head = "create temp table if not exists "
    lines = []
    for step in steps:
        if isinstance(step, Branch):
            lines.append(f"{indent}execute {_dollar(step.test)} into {P}test;")
            lines.append(f"{indent}if {P}test then")
            lines.append(_plpgsql(step.then, indent + "    ") or f"{indent}    null;")
            if step.otherwise:
                lines.append(f"{indent}else")
                lines.append(_plpgsql(step.otherwise, indent + "    "))
            lines.append(f"{indent}end if;")
            continue
        stmt = step.strip()
        if stmt.startswith(head):
            name = stmt[len(head):].split(" ", 1)[0]
            lines.append(f"{indent}if to_regclass({_dollar('pg_temp.' + name)}) is null then "
                         f"execute {_dollar(stmt)}; end if;")
        else:
            lines.append(f"{indent}execute {_dollar(stmt)};")
    return "\n".join(lines)


def _dollar(text: str) -> str:
    tag = "$q$"
    n = 0
    while tag in text:
        n += 1
        tag = f"$q{n}$"
    return f"{tag}{text}{tag}"


def _legacy_watermark(relation: str) -> str:
    """The per-model watermark table that builds before plan version 13 kept for a window model
    (now a group keeps its members' watermarks, and other window models have none)."""
    h = hashlib.sha1(relation.encode()).hexdigest()[:10]
    return f"sentinel_ivm.wm_{relation.split('.')[-1][:40]}_{h}"


def _drop_triggers(cur: Any, relation: str, inputs: list[str]) -> None:
    cur.execute(f"drop table if exists {_q(_legacy_watermark(relation))}")
    for source in inputs:
        if _relkind(cur, source) is None:
            continue
        for event in EVENTS:
            cur.execute(f"drop trigger if exists {_qi(_trigger_name(relation, event))} on {_q(source)}")
            cur.execute(f"drop function if exists {_func_name(relation, source, event)}()")


def _triggers_present(cur: Any, p: Plan) -> bool:
    cur.execute("select count(*) from pg_trigger where tgname = any(%s) and not tgisinternal",
                ([_trigger_name(p.relation, e) for e in EVENTS],))
    return cur.fetchone()[0] == (len(EVENTS) - _in_group(p)) * len(p.inputs)


# ----- window groups ----------------------------------------------------------------------

def _install_groups(cur: Any, inputs: list[str]) -> None:
    """(Re)build the window-group triggers of `inputs` from the registered models (see group.py):
    one trigger per input and (partition, order) columns maintains its members on inserts and
    keeps the group's watermarks; a group without members goes, with its watermarks."""
    for rel in inputs:
        if _relkind(cur, rel) is None:
            continue
        cur.execute("select tgname from pg_trigger where tgrelid = %s::regclass and tgname like 'ivm\\_group\\_%%'",
                    (_q(rel),))
        present = {r[0] for r in cur.fetchall()}
        keep = set()
        for key, order, wm, insert_steps, update_steps in _group_sql(cur, rel, _window_models(cur, rel)):
            tag = _group_tag(rel, key, order)
            keep |= {f"ivm_group_{tag}_i", f"ivm_group_{tag}_u"}
            if f"ivm_group_{tag}_i" not in present:
                # a new group: its watermarks from the input as it is (writers are held)
                cur.execute(f"drop table if exists {_q(wm)}")
                cur.execute(f"create table {_q(wm)} as {group.watermark_init(rel, key, order)}")
                cur.execute(f"alter table {_q(wm)} add primary key (bucket)")
            for event, steps in (("i", insert_steps), ("u", update_steps)):
                fn = f"sentinel_ivm.{_qi(f'g_{rel.split(chr(46))[-1][:32]}_{tag}_{event}')}"
                _statement_trigger(cur, rel, "insert" if event == "i" else "update", f"ivm_group_{tag}_{event}",
                                   fn, steps, check=f"{P}new", lock="lock")
        for tg in sorted(present - keep):
            cur.execute("select p.oid::regprocedure::text from pg_trigger t join pg_proc p on p.oid = t.tgfoid "
                        "where t.tgrelid = %s::regclass and t.tgname = %s", (_q(rel), tg))
            fn = cur.fetchone()[0]
            cur.execute(f"drop trigger {_qi(tg)} on {_q(rel)}")
            cur.execute(f"drop function if exists {fn}")
            if tg.endswith("_i"):
                cur.execute("select format('%%I.%%I', schemaname, tablename) from pg_tables "
                            "where schemaname = 'sentinel_ivm' and tablename like %s", (f"wmg\\_%\\_{tg[10:-2]}",))
                for (wm,) in cur.fetchall():
                    cur.execute(f"drop table {wm}")


def _window_models(cur: Any, rel: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """The registered window models over `rel` alone: (relation, model, sql, columns), by relation
    (in Python's order, whatever the database's collation: `_prepare_groups` lists them too)."""
    cur.execute("select relation, model, sql, columns from sentinel_ivm.models "
                "where shape = 'window' and inputs = array[%s]::text[]", (rel,))
    return sorted((relation, model, sql, tuple(columns)) for relation, model, sql, columns in cur.fetchall())


# The window groups' trigger SQL by everything it is made from. Planning the members and making a
# group's statements takes ~150 ms of Python for this project's six: an online deploy makes them
# before it takes the lock (`_prepare_groups`), and the switch, holding writers, finds them here.
_GROUP_SQL: dict[tuple, list[tuple[str, str, str, list[Step], list[Step]]]] = {}


def _group_sql(cur: Any, rel: str, models: list[tuple[str, str, str, tuple[str, ...]]]
               ) -> list[tuple[str, str, str, list[Step], list[Step]]]:
    """Per window group of `models` (`_window_models`) on `rel`: (partition key, order, watermark
    table, insert trigger steps, update trigger steps)."""
    columns = tuple(_columns(cur, rel))
    bytewise = _bytewise_default(cur)
    memo = (rel, columns, bytewise, tuple(models))
    made = _GROUP_SQL.get(memo)
    if made is None:
        plans = []
        for relation, model, sql, cols in models:
            p = plan(sql, model=model, relation=relation)
            p.columns = list(cols)
            plans.append(p)
        made = []
        for (key, order), members in group.groups(plans, rel).items():
            g = group.Group(rel, members, list(columns), bytewise_default=bytewise)
            made.append((key, order, g.wm, g.statements(), [g.watermark_update()]))
        if len(_GROUP_SQL) >= 16:
            _GROUP_SQL.clear()
        _GROUP_SQL[memo] = made
    return made


def _prepare_groups(cur: Any, p: Plan, sql: str, columns: list[str]) -> None:
    """Make, ahead of the switch, the group SQL of `p`'s input as it will be once `p` (a window
    model of `sql` with output `columns`) is registered."""
    if p.shape != "window" or len(p.inputs) != 1:
        return
    rel = p.inputs[0]
    models = [m for m in _window_models(cur, rel) if m[0] != p.relation]
    models.append((p.relation, p.model, sql, tuple(columns)))
    _group_sql(cur, rel, sorted(models))


def _bytewise_default(cur: Any) -> bool:
    """Whether the database's default collation orders text bytewise, as COLLATE "C" does (the
    embedded engine's: initdb --no-locale)."""
    cur.execute("select (datlocprovider = 'c' and datcollate in ('C', 'POSIX')) "
                "or (datlocprovider = 'b' and datlocale in ('C', 'POSIX')) "
                "from pg_database where datname = current_database()")
    return bool(cur.fetchone()[0])


def _group_tag(rel: str, key: str, order: str) -> str:
    return hashlib.sha1(f"{rel}|{key}|{order}".encode()).hexdigest()[:10]
