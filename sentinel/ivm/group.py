"""Window groups: the per-key window models over one input, maintained together on appends.

Maintained one by one, every window model over `fraud.transactions` would find the batch's keys,
check them against its watermark and read each key's recent rows through the per-card index: a
descent of the index per key and model, the largest part of the cost. The models of a group share
that work. One trigger per input runs one statement for the whole batch:

1. the batch's keys with their t0 (first new order value) and, per member, whether a new row
   passes the member's input filter and pushed filter (`__ivm_h<i>`: else that member has
   nothing to do for the key);
2. "in order" against the group's watermark, the highest order value per key bucket that the
   input has had (`sentinel_ivm.wmg_*`);
3. one backward read per key of its last rows before t0 (as many as its members need, ties
   included), with only the columns the members' windows read (the others are null: those old
   rows' own outputs are never kept);
4. per member, whether those rows suffice (enough rows passing its filter for its row-count frame,
   reaching back past its interval, or the key's whole history), else an exact read for the key;
5. per member, its own SQL over those rows and the new rows of its keys, the outputs from t0 on
   inserted into its table. The members' rows come from one CTE sorted once (`__ivm_all`, see
   `Group._shared_input`), so windows in that order sort nothing of their own.

Keys that are not in order go to each member's general path (`planner._WindowSql.general`).
A member is a window model with one window select over one input, reached from the input
through row-wise selects (projections and filters), whose partition and order columns are input
columns: with a bounded lookback (`rows N preceding`, `lag`, `range '<interval>' preceding`), the
shared rows usually suffice; with an unbounded one (`row_number()`), only when they are the key's
whole past, else the key's past is read for it (still no model read or diff).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from sentinel.ivm.buckets import LOCK_CLASS, bucket_sql
from sentinel.ivm.planner import (DIALECT, P, Branch, Plan, Step, _cols, _create_temp, _pop_ctes, _q, _qi,
                                  _substitute, _temp_table, _tname, _WindowSql, input_chain)


@dataclass
class Member:
    """A window model's part in its input's group."""

    plan: Plan
    key: str  # the input's partition column
    order: str  # the input's order column
    filters: list[str]  # the input filter on the way to the window, over the input's columns
    pushed: str | None  # the pushed output filter, over the input's columns
    rows: int  # row-count lookback (0: none)
    interval: str | None  # interval lookback
    needed: set[str]  # input columns the window reads from earlier rows
    unbounded: bool = False  # the window reads the key's whole past (`row_number()`, unbounded frames)
    first_row: bool = False  # a first-row-per-key model (see `Group._first_rows`)
    subkeys: list[str] = field(default_factory=list)  # first row per key: the partition's other input columns
    # the windows' ORDER BY after the order column, as (input column, COLLATE "C"); None when they
    # differ or order by anything else (the member then sorts its input itself)
    tiebreak: tuple[tuple[str, bool], ...] | None = None

    def group_key(self) -> tuple[str, str]:
        return self.key, self.order


def member(p: Plan, rel: str) -> Member | None:
    """`p`'s part in the group of input `rel`, or None when it is maintained on its own."""
    info = p._info
    if p.shape != "window" or p.inputs != [rel] or len(info["scopes"]) != 1:
        return None
    top1 = bool(info.get("top1"))
    lb = info["lookbacks"][0]
    if len(info["keys"]) != 1 and not top1:
        return None
    tree = p._tree
    ctes = {c.alias: c.this for c in (tree.args["with_"].expressions if tree.args.get("with_") else [])}
    scope = tree if not info["scope"] else ctes[info["scope"]]
    chain = input_chain(ctes, scope, rel)
    if chain is None:
        return None
    mapping, filters = chain

    def column(e: exp.Expression) -> str | None:
        sub = _substitute(e, mapping)
        return sub.name if isinstance(sub, exp.Column) else None

    key = column(info["keys"][0])
    order = column(info["order"])
    subkeys = [column(k) for k in info["keys"][1:]]
    if key is None or order is None or None in subkeys:
        return None
    if top1:
        # the partition's other columns must be non-null on the way in (they are matched with =)
        nonnull = set()
        for f in filters:
            neg = f.this if isinstance(f, exp.Not) else f
            if (isinstance(neg, exp.Is) and (neg is not f or neg.args.get("negate"))
                    and isinstance(neg.this, exp.Column) and isinstance(neg.expression, exp.Null)):
                nonnull.add(neg.this.name)
        if not set(subkeys) <= nonnull:
            return None
        return Member(plan=p, key=key, order=order, filters=[f.sql(DIALECT) for f in filters], pushed=None,
                      rows=1, interval=None, needed={key, order, *subkeys, *(c.name for f in filters for c in f.find_all(exp.Column))},
                      first_row=True, subkeys=subkeys)
    needed = {key, order}
    for f in filters:
        needed |= {c.name for c in f.find_all(exp.Column)}
    for w in scope.find_all(exp.Window):
        parts = [*(w.args.get("partition_by") or []), *((w.args.get("order") or exp.Order(expressions=[])).expressions)]
        parts += [a for k, a in w.this.args.items() if isinstance(a, exp.Expression)]
        for part in parts:
            for c in part.find_all(exp.Column):
                sub = _substitute(c, mapping)
                if sub is None:
                    return None
                needed |= {x.name for x in sub.find_all(exp.Column)}
    tiebreaks = set()
    for w in scope.find_all(exp.Window):
        tail: list[tuple[str, bool]] | None = []
        for o in w.args["order"].expressions[1:]:
            e, c_collate = o.this, False
            if isinstance(e, exp.Collate) and e.expression.name == "C":
                e, c_collate = e.this, True
            sub = _substitute(e, mapping) if isinstance(e, exp.Column) else None
            if o.args.get("desc") or o.args.get("nulls_first") or not isinstance(sub, exp.Column):
                tail = None
                break
            tail.append((sub.name, c_collate))
        tiebreaks.add(None if tail is None else tuple(tail))
    pushed = None
    if info.get("pushed"):
        sub = _substitute(sqlglot.parse_one(info["pushed"], read=DIALECT), mapping)
        pushed = sub.sql(DIALECT) if sub is not None else None
    return Member(plan=p, key=key, order=order, filters=[f.sql(DIALECT) for f in filters], pushed=pushed,
                  rows=0 if lb.unbounded else lb.rows, interval=None if lb.unbounded else lb.interval,
                  unbounded=lb.unbounded, needed=needed, tiebreak=tiebreaks.pop() if len(tiebreaks) == 1 else None)


COLLATE_C = ' collate "C"'


def watermark_name(rel: str, key: str, order: str) -> str:
    """The group's watermark table; its name ends with the group's tag (as its triggers' names)."""
    h = hashlib.sha1(f"{rel}|{key}|{order}".encode()).hexdigest()[:10]
    return f"sentinel_ivm.wmg_{rel.split('.')[-1][:40]}_{h}"


def watermark_init(rel: str, key: str, order: str) -> str:
    return (f"select {bucket_sql(_qi(key))} as bucket, max({_qi(order)}) as high from {_q(rel)} group by 1")


class Group:
    """The insert trigger body of one input's window group."""

    def __init__(self, rel: str, members: list[Member], columns: list[tuple[str, str]], *,
                 bytewise_default: bool = False, watermark: str | None = None) -> None:
        """`watermark`: the group's watermark table, if not its own (`watermark_name`): an online
        deploy's group of its staging table alone."""
        self.rel = rel
        self.members = members
        self.columns = columns  # the input's (name, type), in order
        # the database's default collation orders text bytewise, as COLLATE "C" does
        self.bytewise_default = bytewise_default
        self.key, self.order = members[0].group_key()
        self.wm = watermark or watermark_name(rel, self.key, self.order)
        self.needed = set().union(*(m.needed for m in members))  # the input columns the windows read

    def statements(self, *, locks: bool = True) -> list[Step]:
        """The group trigger's body; `locks=False`: without the key-bucket locks (for members' tables
        that no trigger maintains)."""
        new = f"{P}new"
        k, t = _qi(self.key), _qi(self.order)
        lock = (f"select pg_advisory_xact_lock({LOCK_CLASS}, {P}b.b) from (select distinct "
                f"{bucket_sql(k)} as b from {new} order by 1) as {P}b")
        # The keys the fast statement leaves (`__ivm_fast` false: a null key, or a new row at or
        # below its bucket's watermark, which is raised only after this) with all their new rows,
        # copied once for every member's general path, which then reads those few rows instead of
        # grouping the whole batch per member (with 1 % of a 10,000-row batch late: ~6 ms a member).
        # The keys are one uncorrelated set (a hashed subplan), not a scan of the new rows per
        # key: that had cost a 10,000-row batch with a late row ~3 s per member.
        slow_new = _temp_table("s", self.wm, *(f"{c} {typ}" for c, typ in self.columns))
        general: list[Step] = [
            _create_temp(slow_new, f"select * from {new}"),
            f"insert into {slow_new} select {P}n.* from {new} as {P}n where {P}n.{k} is null or {P}n.{k} in "
            f"(select {P}l.{k} from {new} as {P}l inner join {_q(self.wm)} as {P}w "
            f"on {P}w.bucket = {bucket_sql(P + 'l.' + k)} where {P}l.{t} <= {P}w.high)",
        ]
        for m in self.members:
            general += _WindowSql(m.plan, self.rel, slow_new, appended=True).general()
        general.append(f"delete from {slow_new}")
        return [*([lock] if locks else []), Branch(self.fast(), general), self.watermark_update()]

    def watermark_update(self) -> str:
        """Raise each touched bucket's watermark to the highest order value of its new rows."""
        k, t = _qi(self.key), _qi(self.order)
        return (f"insert into {_q(self.wm)} (bucket, high) select {bucket_sql(k)}, max({t}) from {P}new group by 1 "
                f"on conflict (bucket) do update set high = greatest({_q(self.wm)}.high, excluded.high)")

    def fast(self) -> str:
        """The statement that maintains every member for the in-order keys; selects whether any key is not."""
        k, t = _qi(self.key), _qi(self.order)
        ms = list(enumerate(self.members))

        def hit(m: Member) -> str:
            conds = [*m.filters, *([m.pushed] if m.pushed else [])]
            return " and ".join(f"({c})" for c in conds) or "true"

        def passing(m: Member) -> str:
            return f" filter (where {' and '.join(f'({x})' for x in m.filters)})" if m.filters else ""

        hits = ", ".join(f"coalesce(bool_or({hit(m)}), false) as {P}h{i}" for i, m in ms)
        r = "greatest(1, " + ", ".join(f"case when {P}g.{P}h{i} then {m.rows} else 0 end" for i, m in ms) + ")"
        any_hit = " or ".join(f"{P}h{i}" for i, _ in ms)
        cols = [c for c, _ in self.columns]
        read_cols = ", ".join(f"{P}s.{_qi(c)}" for c in cols if c in self.needed)
        counts = "".join(f", count(*){passing(m)} as {P}f{i}" for i, m in ms if m.rows)
        ok = []
        for i, m in ms:
            if m.first_row:
                # first row per key: its partitions seen in the shared rows already have their first row
                ok.append(f"{P}gk.{P}h{i} as {P}s{i}, {P}gk.{P}h{i} as {P}a{i}, null::{dict(self.columns)[self.order]} as {P}lo{i}")
                continue
            # The shared rows suffice when they are the key's whole past (fewer than it asked for),
            # or hold the member's rows-th row passing its filter and reach back past its interval
            # (for an unbounded member, only the whole past does).
            enough = []
            if m.rows:
                enough.append(f"coalesce({P}ws.{P}f{i}, 0) >= {m.rows}")
            if m.interval:
                enough.append(f"{P}ws.{P}tmin <= {P}gk.{P}t0 - {m.interval}")
            suff = f"coalesce({P}ws.{P}n, 0) < {P}gk.{P}r" + (f" or ({' and '.join(enough)})" if enough else "")
            # an interval-only member reads the shared rows from t0 - interval on (else all of them)
            lo = f"{P}gk.{P}t0 - {m.interval}" if m.interval and not m.rows else f"null::{dict(self.columns)[self.order]}"
            ok.append(f"{P}gk.{P}h{i} and ({suff}) as {P}s{i}, {P}gk.{P}h{i} as {P}a{i}, {lo} as {P}lo{i}")
        uses_new = ", ".join(f"{P}o.{P}a{i} as {P}u{i}" for i, _ in ms)
        ctes = [
            # 1. the keys, each member's interest in them, 2. in order or not
            f"{P}g as materialized (select {k} as {P}k0, min({t}) as {P}t0, {hits} from {P}new group by 1)",
            f"{P}gk as materialized (select {P}g.*, ({P}g.{P}t0 <= {P}w.high) is not true and {P}g.{P}k0 is not null "
            f"as {P}fast, {r} as {P}r "
            f"from {P}g left join {_q(self.wm)} as {P}w on {P}w.bucket = {bucket_sql(P + 'g.' + P + 'k0')})",
            # 3. the shared read: each key's last rows before t0, ties included
            f"{P}w as materialized (select {P}kk.{P}k0, {read_cols} "
            f"from (select * from {P}gk where {P}fast and ({any_hit}) order by {P}k0) as {P}kk cross join lateral "
            f"(select {read_cols} from {_q(self.rel)} as {P}s where {P}s.{k} = {P}kk.{P}k0 and {P}s.{t} < {P}kk.{P}t0 "
            f"order by {P}s.{t} desc fetch first {P}kk.{P}r rows with ties) as {P}s)",
            # 4. per key and member: do the shared rows suffice
            f"{P}ws as materialized (select {P}k0, count(*) as {P}n, min({t}) as {P}tmin{counts} from {P}w group by 1)",
            f"{P}ok as materialized (select {P}gk.{P}k0, {P}gk.{P}t0, {', '.join(ok)} "
            f"from {P}gk left join {P}ws on {P}ws.{P}k0 = {P}gk.{P}k0 where {P}gk.{P}fast)",
            # the new rows, marked with the members they go to
            f"{P}nu as materialized (select {P}n.*, {uses_new} from {P}new as {P}n "
            f"inner join {P}ok as {P}o on {P}o.{P}k0 = {P}n.{k})",
        ]
        if any(not m.first_row for m in self.members):
            ctes.append(self._shared_input())
        for i, m in ms:
            ctes += self._first_rows(i, m) if m.first_row else self._member(i, m)
        return "with " + ",\n".join(ctes) + f"\nselect exists (select from {P}gk where not {P}fast)"

    def sort_order(self) -> tuple[list[str], set[str]]:
        """The shared input's order: the key, the order column, then the tie-break columns most
        members' windows use (a member whose windows order the same way needs no sort of its own:
        PostgreSQL keeps a materialized CTE's order); and the columns relabelled COLLATE "C" for it."""
        tails = [m.tiebreak for m in self.members if not m.first_row and m.tiebreak is not None]
        tail = max(tails, key=tails.count) if tails else ()
        cols, relabel = [self.key, self.order], set()
        for c, c_collate in tail:
            if c_collate and not self.bytewise_default:
                break  # the column's own order is not COLLATE "C": the members sort the rest themselves
            cols.append(c)
            if c_collate:
                relabel.add(c)
        return cols, relabel

    def _shared_input(self) -> str:
        """`__ivm_all`: every window member's input rows in one sorted CTE, each marked with the
        members it goes to (`__ivm_u<i>`): the shared rows, the exact reads (each for its member
        alone), and the new rows. The earlier rows (shared and exact) carry only the columns the
        windows read, the others null (their own outputs are never kept), so that each read of them
        can be index-only. With the database's collation bytewise, the tie-break columns are
        relabelled COLLATE "C" (the same order and equality), so `col COLLATE "C"` in a window is
        the CTE's own order."""
        order, relabel = self.sort_order()
        win = [(i, m) for i, m in enumerate(self.members) if not m.first_row]

        def cols(alias: str, null_unneeded: bool = False) -> str:
            out = []
            for c, typ in self.columns:
                ref = f"null::{typ}" if null_unneeded and c not in self.needed else f"{alias}.{_qi(c)}"
                out.append(f"{ref}{COLLATE_C if c in relabel else ''} as {_qi(c)}")
            return ", ".join(out)

        flags = ", ".join(f"{P}u{i}" for i, _ in win)
        t = _qi(self.order)
        # a shared row goes to a member whose shared rows suffice, from its lower bound on
        uses = {i: f"({P}o.{P}s{i} and ({P}o.{P}lo{i} is null or {P}w.{t} >= {P}o.{P}lo{i}))" for i, _ in win}
        parts = [f"select {cols(P + 'w', True)}, {', '.join(f'{u} as {P}u{i}' for i, u in uses.items())} "
                 f"from {P}w inner join {P}ok as {P}o on {P}o.{P}k0 = {P}w.{P}k0 where {' or '.join(uses.values())}"]
        for i, m in win:
            mine = ", ".join(f"{'true' if j == i else 'false'} as {P}u{j}" for j, _ in win)
            parts.append(f"select {cols(P + 'x', True)}, {mine} from (select * from {P}ok where {P}a{i} and not {P}s{i} "
                         f"order by {P}k0) as {P}o cross join lateral ({self._exact_read(m)}) as {P}x")
        parts.append(f"select {cols(P + 'n')}, {flags} from {P}nu as {P}n")
        return (f"{P}all as materialized (select * from ({' union all '.join(parts)}) as {P}a "
                f"order by {', '.join(_qi(c) for c in order)})")

    def _exact_read(self, m: Member) -> str:
        """The rows a member needs of a key the shared read did not cover, read for it alone (of
        its columns, the planner reads only those `_shared_input` keeps)."""
        k, t = _qi(self.key), _qi(self.order)
        f = "".join(f" and ({x})" for x in m.filters)
        base = f"select {P}x.* from {_q(self.rel)} as {P}x where {P}x.{k} = {P}o.{P}k0 and {P}x.{t} < {P}o.{P}t0"
        if m.unbounded:
            return f"{base}{f} offset 0"
        if m.rows and not m.interval:
            return f"{base}{f} order by {P}x.{t} desc fetch first {m.rows} rows with ties"
        bounds = [f"{P}o.{P}t0 - {m.interval}"] if m.interval else []
        if m.rows:
            bounds.append(f"(select min({P}p.{P}t) from (select {P}y.{t} as {P}t from {_q(self.rel)} as {P}y "
                          f"where {P}y.{k} = {P}o.{P}k0 and {P}y.{t} < {P}o.{P}t0{f} order by {P}y.{t} desc "
                          f"limit {m.rows}) as {P}p)")
        return f"{base}{f} and {P}x.{t} >= least({', '.join(bounds)}) offset 0"

    def _first_rows(self, i: int, m: Member) -> list[str]:
        """A first-row-per-key member: in order, a partition of the key (the key plus `subkeys`)
        keeps its first row if it had any row before t0. It had one when the shared rows show one
        (no lookup), and had none when they are the key's whole past or the model has no row for it
        (one lookup). Its new first row is its first new row."""
        k = _qi(self.key)
        subs = [_qi(c) for c in m.subkeys]
        p = m.plan
        out_subs = [_qi(c) for c in p._info["out_keys"][1:]]
        f_new = "".join(f" and ({x})" for x in m.filters)
        group_by = ", ".join(str(n + 1) for n in range(len(subs) + 1))
        seen = " and ".join([f"{P}w.{P}k0 = {P}p.{P}k0"] + [f"{P}w.{c} = {P}p.{P}d{n}" for n, c in enumerate(subs)])
        w_pass = "".join(f" and ({x})" for x in _qualify(m.filters, f"{P}w"))
        probe = " and ".join([f"{P}m.{_qi(p._info['out_keys'][0])} = {P}p.{P}k0"]
                             + [f"{P}m.{c} = {P}p.{P}d{n}" for n, c in enumerate(out_subs)])
        pairs = f"{P}p{i}"
        unseen = f"{P}v{i}"
        news = f"{P}q{i}"
        src = f"{P}in{i}"
        match = " and ".join([f"{P}q.{P}k0 = {P}n.{k}"] + [f"{P}q.{P}d{n} = {P}n.{c}" for n, c in enumerate(subs)])
        out = [
            f"{pairs} as materialized (select {', '.join([f'{k} as {P}k0'] + [f'{c} as {P}d{n}' for n, c in enumerate(subs)])} "
            f"from {P}nu where {P}u{i}{f_new} group by {group_by})",
            # the partitions the shared rows do not show (usually few), then those without a first row
            f"{unseen} as materialized (select {P}p.* from {pairs} as {P}p where not exists (select from {P}w where {seen}{w_pass}))",
            f"{news} as materialized (select {P}p.* from {unseen} as {P}p "
            f"inner join {P}gk on {P}gk.{P}k0 = {P}p.{P}k0 left join {P}ws on {P}ws.{P}k0 = {P}p.{P}k0 "
            f"where coalesce({P}ws.{P}n, 0) < {P}gk.{P}r "
            f"or (select 1 from {_q(p.relation)} as {P}m where {probe} limit 1) is null)",
            f"{src} as (select {_cols([c for c, _ in self.columns], P + 'n')} from {P}nu as {P}n "
            f"where {P}n.{P}u{i} and exists (select from {news} as {P}q where {match}))",
        ]
        tree, ctes = self._renamed(i, m, src)
        out += ctes
        out.append(f"{P}ins{i} as (insert into {_q(p.relation)} ({_cols(p.columns)}) "
                   f"select {_cols(p.columns, P + 'f')} from ({tree.sql(DIALECT)}) as {P}f returning 1)")
        return out

    def _renamed(self, i: int, m: Member, src: str) -> tuple[exp.Expression, list[str]]:
        """The member's final select and its CTEs (renamed `__ivm_m<i>_<name>`), the input replaced by `src`."""
        tree = m.plan._tree.copy()
        own = _pop_ctes(tree)
        names = {c.alias: f"{P}m{i}_{c.alias}" for c in own}

        def rename(node: exp.Expression) -> None:
            for tb in list(node.find_all(exp.Table)):
                if _tname(tb) == self.rel:
                    alias = tb.alias_or_name
                    tb.replace(exp.Table(this=exp.to_identifier(src), alias=exp.TableAlias(this=exp.to_identifier(alias))))
                elif not tb.db and tb.name in names:
                    alias = tb.alias_or_name
                    tb.replace(exp.Table(this=exp.to_identifier(names[tb.name]),
                                         alias=exp.TableAlias(this=exp.to_identifier(alias))))

        ctes = []
        for c in own:
            body = c.this.copy()
            rename(body)
            ctes.append(f"{names[c.alias]} as not materialized ({body.sql(DIALECT)})")
        rename(tree)
        return tree, ctes

    def _member(self, i: int, m: Member) -> list[str]:
        """A member's CTEs: its input (shared rows, exact reads, new rows), its own SQL over it
        (CTEs renamed), and the insert of its outputs from t0 on."""
        src = f"{P}in{i}"
        out = [f"{src} as (select {_cols([c for c, _ in self.columns])} from {P}all where {P}u{i})"]
        p = m.plan
        tree, ctes = self._renamed(i, m, src)
        out += ctes
        ok = (f"{P}o.{P}a{i} and {P}f.{_qi(p._info['out_keys'][0])} = {P}o.{P}k0 "
              f"and {P}f.{_qi(p._info['out_order'])} >= {P}o.{P}t0")
        out.append(f"{P}ins{i} as (insert into {_q(p.relation)} ({_cols(p.columns)}) "
                   f"select {_cols(p.columns, P + 'f')} from ({tree.sql(DIALECT)}) as {P}f "
                   f"where exists (select from {P}ok as {P}o where {ok}) returning 1)")
        return out


def _qualify(filters: list[str], alias: str) -> list[str]:
    """Filters over the input's columns, their columns qualified with `alias`."""
    out = []
    for f in filters:
        e = sqlglot.parse_one(f, read=DIALECT)
        for c in e.find_all(exp.Column):
            c.set("table", exp.to_identifier(alias))
        out.append(e.sql(DIALECT))
    return out


def groups(plans: list[Plan], rel: str) -> dict[tuple[str, str], list[Member]]:
    """The groups of input `rel` among `plans`, by (partition column, order column)."""
    out: dict[tuple[str, str], list[Member]] = {}
    for p in sorted(plans, key=lambda x: x.relation):
        m = member(p, rel)
        if m is not None:
            out.setdefault(m.group_key(), []).append(m)
    return out


__all__ = ["Group", "Member", "groups", "member", "watermark_init", "watermark_name"]
