"""Derive the delta SQL that keeps a model's table current from the model's own compiled SQL.

A model is classified into one of three shapes (see dbt/README.md, "Incremental maintenance"):
linear (select/project/filter/union all, joins with one changing side), per-key window
(backward-looking frames over `partition by K order by T`), or aggregate (group by with
count/sum/min/max). For each input relation the planner emits the statements a statement-level
trigger runs, reading the transition table in place of the input. Anything else is rejected with
an `IvmUnsupported` naming the model and the construct.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from sentinel.ivm.buckets import LOCK_CLASS, bucket_sql

DIALECT = "postgres"
PLAN_VERSION = "23"

# Names the generated SQL introduces; a model's own names never start with this prefix.
P = "__ivm_"

_VOLATILE = {
    "now", "random", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
    "timeofday", "current_timestamp", "current_date", "current_time", "localtime",
    "localtimestamp", "gen_random_uuid", "nextval", "setseed", "txid_current", "uuid_generate_v4",
}
_FORWARD_WINDOW_FUNCS = {"lead", "ntile", "percent_rank", "cume_dist", "last_value", "nth_value"}
_UNBOUNDED_WINDOW_FUNCS = {"row_number", "rank", "dense_rank", "first_value"}


class IvmUnsupported(Exception):
    """The model's SQL has a construct the materialization cannot maintain incrementally."""

    def __init__(self, model: str, construct: str, hint: str = "") -> None:
        self.model = model
        self.construct = construct
        msg = f"model {model!r} cannot be maintained incrementally: {construct}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


@dataclass(frozen=True)
class Branch:
    """A step of a trigger body taken only when `test` (a select of one boolean) is true."""

    test: str
    then: list
    otherwise: list = field(default_factory=list)


Step = str | Branch


@dataclass(frozen=True)
class Lookback:
    """How far before t0 a per-key window recomputation must read its inputs."""

    interval: str | None = None  # range frames: t0 - interval
    rows: int = 0  # rows frames / lag: the N-th earlier row of the key
    unbounded: bool = False  # the key's whole history (row_number, unbounded frames)


@dataclass
class Plan:
    """What the deployer needs: shape, inputs, the columns that locate rows, the trigger SQL."""

    model: str
    relation: str  # schema.table of the model's table
    shape: str  # linear | window | aggregate
    inputs: list[str]  # schema.table of every relation the model reads
    joined: list[list[str]] = field(default_factory=list)  # inputs joined in one select
    locator: list[str] = field(default_factory=list)  # columns indexed to find model rows
    group_keys: list[str] = field(default_factory=list)  # aggregate: unique key of the table
    columns: list[str] = field(default_factory=list)  # output columns (set by the deployer)
    fingerprint: str = ""
    _tree: exp.Expression | None = None
    _info: dict = field(default_factory=dict)

    def statements(self, relation: str, event: str, *, locks: bool = True) -> list[Step]:
        """SQL a trigger on `relation` runs for `event` ('insert'|'delete'|'update'), in order.

        The transition tables are visible as `__ivm_new` and `__ivm_old`; recompute shapes read an
        update's old and new rows as one delta. `locks=False`: without the key-bucket locks (for a
        table no trigger maintains: an online deploy's staging table).
        """
        if self.shape == "linear":
            if event == "insert":
                return [self._linear_insert(relation, f"{P}new")]
            if event == "delete":
                return [self._linear_delete(relation, f"{P}old")]
            return [self._linear_delete(relation, f"{P}old"), self._linear_insert(relation, f"{P}new")]
        if self.shape == "window":
            steps = self._window_recompute(relation, _delta_name(event), locks=locks)
        elif self.shape == "aggregate":
            if event == "insert":
                return [self._aggregate_merge(relation, f"{P}new")]
            steps = self._aggregate_recompute(relation, _delta_name(event))
        else:
            raise AssertionError(self.shape)
        if event != "update":
            return steps
        both = f"(select * from {P}old union all select * from {P}new)"
        return _map_steps(steps, lambda x: x.replace(f"{P}oldnew", both))

    # ----- linear -------------------------------------------------------------------------
    def _linear_insert(self, relation: str, delta: str) -> str:
        q = _derive(self._tree, relation, delta)
        return f"insert into {_q(self.relation)} ({_cols(self.columns)})\n{q}"

    def _linear_delete(self, relation: str, delta: str) -> str:
        q = _derive(self._tree, relation, delta)
        return _multiset_delete(self.relation, self.columns, self.locator, q)

    # ----- window -------------------------------------------------------------------------
    def _window_recompute(self, relation: str, delta: str, *, locks: bool = True) -> list[Step]:
        """Recompute each affected key from its t0 and apply the diff. (Appends to a model that is
        a member of its input's window group take the group's fast path instead: `group.py`.)"""
        w = _WindowSql(self, relation, delta)
        return [*([w.lock_keys()] if locks else []), *w.general()]

    # ----- aggregate ----------------------------------------------------------------------
    def _aggregate_merge(self, relation: str, delta: str) -> str:
        q = _derive(self._tree, relation, delta)
        sets = []
        for col, kind in self._info["agg_cols"].items():
            c, t = _qi(col), f"{_q(self.relation)}.{_qi(col)}"
            if kind == "count":
                sets.append(f"{c} = {t} + excluded.{c}")
            elif kind == "sum":
                sets.append(f"{c} = coalesce({t} + excluded.{c}, {t}, excluded.{c})")
            elif kind == "min":
                sets.append(f"{c} = least({t}, excluded.{c})")
            elif kind == "max":
                sets.append(f"{c} = greatest({t}, excluded.{c})")
        action = f"do update set {', '.join(sets)}" if sets else "do nothing"
        # Groups in key order: concurrent writers lock shared groups in one order (no deadlock).
        return (f"insert into {_q(self.relation)} ({_cols(self.columns)})\n"
                f"select * from ({q}) as {P}a order by {_cols(self.group_keys, P + 'a')}\n"
                f"on conflict ({_cols(self.group_keys)}) {action}")

    def _aggregate_recompute(self, relation: str, delta: str) -> list[str]:
        """Deletes reach an aggregate: recompute the groups they touch from the inputs.

        Groups are matched null-safely in forms the planner serves without comparing every pair
        (`is not distinct from` is neither indexable nor hashable: a nested loop over the whole
        table per touched group, ~3 s at 137,000 groups): the table's rows through its group-key
        index, one lookup per touched group; the inputs' rows narrowed to the touched groups by one
        group key where its shape allows (`_touched_rows`), matched exactly in one hashed semi-join."""
        dq = _derive(self._tree, relation, delta)
        gk = self.group_keys
        gsel = ", ".join(f"x.{_qi(c)} as {P}g{i}" for i, c in enumerate(gk))
        touched_cte = f"{P}g as (select distinct {gsel} from ({dq}) as x)"
        rel = _q(self.relation)
        match = " and ".join(_eq(f"{P}m.{_qi(c)}", f"{P}g.{P}g{i}") for i, c in enumerate(gk))
        delete = (f"with {touched_cte}\ndelete from {rel} as {P}t using (select {P}x.ctid from {P}g cross join lateral "
                  f"(select {P}m.ctid from {rel} as {P}m where {match} offset 0) as {P}x) as {P}d "
                  f"where {P}t.ctid = {P}d.ctid")
        tree = self._tree.copy()
        ctes = _pop_ctes(tree)
        gexprs: list[exp.Expression] = self._info["group_exprs"]
        narrowed = self._touched_rows(tree, ctes, relation)
        cond = " and ".join(_eq_hash(f"{P}g.{P}g{i}", f"({e.sql(DIALECT)})") for i, e in enumerate(gexprs))
        tree.where(f"exists (select from {P}g where {cond})", dialect=DIALECT, copy=False)
        head = [touched_cte]
        if narrowed:
            head.append(narrowed)
            for node in [*(c.this for c in ctes), tree]:
                _replace_inputs(node, relation, f"{P}in", set())
        body = ",\n".join(head + [c.sql(DIALECT) for c in ctes])
        insert = f"with {body}\ninsert into {_q(self.relation)} ({_cols(self.columns)})\n{tree.sql(DIALECT)}"
        return [delete, insert]

    def _touched_rows(self, tree: exp.Select, ctes: list[exp.CTE], relation: str) -> str | None:
        """A CTE `__ivm_in` of the input's rows in the touched groups, narrowed by one group key, so
        that recomputing the groups reads their rows, not the whole input. A superset of the groups'
        rows (the exact match stays on the model's select); a null key's rows by `c is null`.
        - a key `date_trunc('<unit>', c)` of an input column c (preferred: a time index): each
          touched bucket's rows by a range of c;
        - else a key that is an input column c: the rows whose c is a touched value, a semi-join
          that the planner serves with an index on c (one lookup a value) or, without one, with
          one hashed pass, as before.
        None for any other shape."""
        chain = input_chain({c.alias: c.this for c in ctes}, tree, relation)
        if chain is None:
            return None
        src = f"select {P}i.* from {_q(relation)} as {P}i"
        keys = [(f"{P}g{i}", _substitute(g, chain[0])) for i, g in enumerate(self._info["group_exprs"])]
        for gk, e in keys:
            if not (isinstance(e, exp.TimestampTrunc) and isinstance(e.this, exp.Column)
                    and isinstance(e.args.get("unit"), exp.Var)):
                continue
            width = _BUCKET_WIDTHS.get(e.args["unit"].name.lower())
            if width is None:
                continue
            # one range scan per distinct bucket (disjoint: no row twice); a semi-join on a range
            # is not served by an index (the planner unique-ifies only on equalities)
            c = f"{P}i.{_qi(e.this.name)}"
            return (f"{P}in as (select {P}i.* from (select distinct {gk} as {P}v from {P}g where {gk} is not null) as {P}b "
                    f"cross join lateral ({src} where {c} >= {P}b.{P}v and {c} < {P}b.{P}v + interval '{width}' offset 0) as {P}i"
                    f"\nunion all {src} where {c} is null and exists (select from {P}g where {gk} is null))")
        for gk, e in keys:
            if isinstance(e, exp.Column):
                c = f"{P}i.{_qi(e.name)}"
                return (f"{P}in as ({src} where {c} in (select {gk} from {P}g)"
                        f"\nunion all {src} where {c} is null and exists (select from {P}g where {gk} is null))")
        return None


# date_trunc units whose bucket [v, v + width) holds exactly the values truncated to v
_BUCKET_WIDTHS = {"second": "1 second", "minute": "1 minute", "hour": "1 hour", "day": "1 day",
                  "week": "1 week", "month": "1 month", "quarter": "3 months", "year": "1 year"}


class _WindowSql:
    """The SQL that keeps a per-key window model current, for one input relation and delta: the
    affected keys with their t0 (first new order value), each key's inputs read from its lower
    bound, the model recomputed from t0, and the multiset difference with the model's rows there.
    A null key is a partition of its own: keys are matched null-safely.
    """

    def __init__(self, p: Plan, relation: str, delta: str, *, appended: bool | None = None) -> None:
        """`delta`: the transition table (`__ivm_new`, `__ivm_old`) or a table of some of its rows;
        `appended`: whether it holds inserted rows (by default, whether it is `__ivm_new`)."""
        info = p._info
        self.p = p
        self.relation = relation
        self.delta = delta
        appended = delta == f"{P}new" if appended is None else appended
        self.top1 = info["top1"] if appended else None
        tree: exp.Select = p._tree.copy()
        ctes = _pop_ctes(tree)
        self.reach = _reaching(ctes, relation)
        self.scope_path = info["scope"]  # cte name or "" for the main select
        names = [c.alias for c in ctes]
        cut = names.index(self.scope_path) if self.scope_path else len(ctes)
        # the CTEs upstream of the window, over the delta
        self.deltas: list[exp.CTE] = []
        for cte in ctes[:cut]:
            if cte.alias in self.reach:
                d = cte.this.copy()
                _replace_inputs(d, relation, delta, self.reach)
                self.deltas.append(_cte(P + "d_" + cte.alias, d))
        scope = tree if self.scope_path == "" else next(c.this for c in ctes if c.alias == self.scope_path)
        src: exp.Expression = scope.args["from_"].this
        self.alias = src.alias_or_name
        where = scope.args.get("where")
        self.where = where.this.sql(DIALECT) if where else None
        self.keys = [k.sql(DIALECT) for k in info["keys"]]
        self.t = info["order"].sql(DIALECT)
        d_src = exp.Subquery(this=exp.select("*").from_(src.copy()))
        _replace_inputs(d_src, relation, delta, self.reach)
        self.d_src = _as_alias(d_src.this.args["from_"].this, self.alias).sql(DIALECT)
        self.o_src = _as_alias(src.copy(), self.alias).sql(DIALECT)
        self.kcols = [f"{P}k{i}" for i in range(len(self.keys))]
        self.key_match = " and ".join(_eq(k, f"{P}kk.{c}") for k, c in zip(self.keys, self.kcols))
        self.out_keys = info["out_keys"]
        self.out_t = info["out_order"]
        self.lbs: list[Lookback] = info["lookbacks"]
        # whether a key's recomputation stops where its new rows' influence ends (`_until`): not
        # for a first row per key, `row_number()` or an unbounded frame
        self.bounded = not (self.top1 or any(x.unbounded for x in self.lbs))
        # Session temp tables (one set per model and column layout): the affected keys, the
        # recomputed rows from each key's t0 on, and the model's current rows there.
        self.k_tab, self.f_tab, self.o_tab = (_temp_table(x, p.fingerprint, *p.columns) for x in "kfo")

    # --- pieces ---
    def _with(self, ctes: list[str]) -> str:
        return ("with " + ",\n".join(ctes) + "\n") if ctes else ""

    def _delta_ctes(self) -> list[str]:
        return [c.sql(DIALECT) for c in self.deltas]

    def _keys_select(self) -> str:
        """Affected keys of the delta with their t0 and t1 (the lowest and highest order value of
        their new rows)."""
        sel = ", ".join(f"{k} as {c}" for k, c in zip(self.keys, self.kcols))
        wh = f" where {self.where}" if self.where else ""
        return (f"select {sel}, min({self.t}) as {P}t0, max({self.t}) as {P}t1 from {self.d_src}{wh} "
                f"group by {', '.join(str(i + 1) for i in range(len(self.kcols)))}")

    def _model_over(self, restricted: str, head: list[str]) -> tuple[str, str]:
        """(with-prefix, final select) of the model, its window input replaced by `restricted`."""
        tree: exp.Select = self.p._tree.copy()
        ctes = self._model_ctes(tree)
        scope = tree if self.scope_path == "" else next(c.this for c in ctes if c.alias == self.scope_path)
        scope.args["from_"].set("this", exp.Subquery(this=sqlglot.parse_one(restricted, read=DIALECT),
                                                     alias=exp.TableAlias(this=exp.to_identifier(self.alias))))
        return self._with(head + [c.sql(DIALECT) for c in ctes]), tree.sql(DIALECT)

    def _model_ctes(self, tree: exp.Expression | None = None) -> list[exp.CTE]:
        """The model's CTEs, popped off `tree` (a copy of the model's by default), those that
        read the input inlined where they are used."""
        ctes = _pop_ctes(tree if tree is not None else self.p._tree.copy())
        for cte in ctes:
            if cte.alias in self.reach:
                cte.set("materialized", False)
        return ctes

    def _since(self, base: str) -> str:
        """The lower bound of the inputs a key's recomputation from `base` reads ('' = all)."""
        if any(x.unbounded for x in self.lbs):
            return ""  # the key's whole history
        return f" and {self.t} >= {self._reach(base, before=True)}"

    def _until(self, base: str) -> str | None:
        """The highest order value whose outputs a new (or removed) input row of the key at `base`
        can change: its own and its peers', and those of the rows whose frames reach back to it
        (the next `rows` rows, `interval` later). None: the outputs of all later rows (an unbounded
        frame, `row_number()`, a first row per key)."""
        return self._reach(base, before=False) if self.bounded else None

    def _reach(self, base: str, *, before: bool) -> str:
        """How far the windows reach from `base`: back, the earliest input the outputs from `base`
        on read (each outer window reads the inner one's output from `base` - its interval; the
        inner one then reads its interval and its `rows` earlier rows before that); forward, the
        latest output an input at `base` changes (the inner window's outputs up to its interval
        and its next `rows` rows later, each outer window's up to its interval after those)."""
        inner, outer = self.lbs[0], [x.interval for x in self.lbs[1:] if x.interval]
        sign, pick = ("-", "least") if before else ("+", "greatest")
        if before:
            for interval in reversed(outer):
                base = f"({base}) - {interval}"
        bounds = [base]
        if inner.interval:
            bounds.append(f"({base}) {sign} {inner.interval}")
        if inner.rows:
            # the farthest of the key's `rows` rows nearest to base: one index scan (fewer rows:
            # the key's first or last; none: null, which least() and greatest() ignore). Rows
            # tied with base are at or before it, so the forward bound covers them.
            bounds += self._key_rows(base, inner.rows, before=before)
        reach = f"{pick}({', '.join(bounds)})"
        if not before:
            for interval in outer:
                reach = f"({reach}) + {interval}"
        return reach

    def _key_rows(self, base: str, n: int, *, before: bool) -> list[str]:
        """The order value of the farthest of the key's `n` input rows nearest to `base` (strictly
        before or after it), as two subqueries, one of which finds the rows. Matched with plain
        equality for a key without nulls: the null-safe match is an OR, which the planner serves
        with a bitmap of the key's whole history, then sorted (at 10M rows, 0.2 ms a key). A key
        with a null takes the null-safe read, gated off for all others."""
        extra = f" and ({self.where})" if self.where else ""
        agg, cmp, direction = ("min", "<", " desc") if before else ("max", ">", "")

        def rows(match: str) -> str:
            return (f"(select {agg}({P}p.{P}t) from (select {self.t} as {P}t from {self.o_src} where {match}{extra} "
                    f"and {self.t} {cmp} ({base}) order by {self.t}{direction} limit {n}) as {P}p)")

        plain = " and ".join(f"{k} = {P}kk.{c}" for k, c in zip(self.keys, self.kcols))
        any_null = " or ".join(f"{P}kk.{c} is null" for c in self.kcols)
        return [rows(plain), rows(f"({any_null}) and {self.key_match}")]

    def _since_t0(self, alias: str, keys: str, *, form: str) -> str:
        """The rows of `alias` from their key's t0 in `keys` (to its t1 when bounded), null keys
        matching, in the `form` an index ('index') or a hash join ('hash') serves."""
        eq = {"index": _eq, "hash": _eq_hash}[form]
        t = f"{alias}.{_qi(self.out_t)}"
        return " and ".join([eq(f"{alias}.{_qi(c)}", f"{keys}.{k}") for c, k in zip(self.out_keys, self.kcols)]
                            + [f"{t} >= {keys}.{P}t0"] + ([f"{t} <= {keys}.{P}t1"] if self.bounded else []))

    def lock_keys(self) -> str:
        """Lock the buckets of the delta's keys, in bucket order, before anything reads them: a
        concurrent writer of the same keys waits for this transaction's commit, and a later
        statement here sees every earlier commit of these keys (READ COMMITTED)."""
        wh = f" where {self.where}" if self.where else ""
        return (f"{self._with(self._delta_ctes())}select pg_advisory_xact_lock({LOCK_CLASS}, {P}b.b) "
                f"from (select distinct {bucket_sql(self.keys[0])} as b from {self.d_src}{wh} order by 1) as {P}b")

    # --- the general path ---
    def general(self) -> list[Step]:
        """Recompute each affected key of the delta from its t0 and apply the difference."""
        keys_query = self._with(self._delta_ctes()) + self._keys_select()
        k_tab, f_tab, o_tab = self.k_tab, self.f_tab, self.o_tab
        top1 = self.top1
        if top1:
            # First row per key over appended rows: the new first is among the current first (the
            # model's row) and the new rows, so the key's history is never read.
            need = _cols(top1)
            current = " and ".join(_eq(f"{P}m.{_qi(c)}", f"{P}kk.{k}") for c, k in zip(self.out_keys, self.kcols))
            restricted = (
                f"select {need} from {self.d_src} union all "
                f"select {_cols(top1, P + 'x')} from {k_tab} as {P}kk cross join lateral "
                f"(select {_cols(top1, P + 'm')} from {_q(self.p.relation)} as {P}m where {current} offset 0) as {P}x")
            head = self._delta_ctes()  # the new rows of the window's input
        else:
            # the outputs up to t1 need no input after it (frames look back)
            upto = f" and {self.t} <= {P}kk.{P}t1" if self.bounded else ""
            # `offset 0` keeps each lateral read a per-key index scan: flattened into a join, the
            # planner may hash the whole input instead, a cost that grows with history. Keys in
            # order, restated outside, let the window sort each key's few rows (an incremental
            # sort) instead of sorting all of them.
            restricted = (
                f"select {_qi(self.alias)}.* from (select * from {k_tab} order by {', '.join(self.kcols)}) as {P}kk "
                f"cross join lateral (select * from {self.o_src} where {self.key_match}"
                f"{self._since(P + 'kk.' + P + 't0')}{upto} offset 0) as {_qi(self.alias)} "
                f"where " + " and ".join(_eq(f"{_qi(self.alias)}.{k}", f"{P}kk.{c}") for k, c in zip(self.keys, self.kcols)))
            head = []
        prefix, final = self._model_over(restricted, head)
        cols = self.p.columns
        rel = _q(self.p.relation)
        # the recomputed rows of the affected keys from their t0 on (earlier ones cannot change), to
        # their t1 when bounded (later ones do not either)
        fill = (f"{prefix}insert into {f_tab} select {P}f.* from ({final}) as {P}f "
                f"where exists (select from {k_tab} as {P}kk where {self._since_t0(P + 'f', P + 'kk', form='hash')})")
        old = (f"insert into {o_tab} select {P}x.* from {k_tab} as {P}kk cross join lateral "
               f"(select {P}f.ctid, {P}f.* from {rel} as {P}f where "
               f"{self._since_t0(P + 'f', P + 'kk', form='index')} offset 0) as {P}x")
        # Two statements, delete then insert: downstream triggers see each kind separately.
        delete, insert = multiset_diff(self.p.relation, cols, f"table {o_tab}", f"table {f_tab}")
        keys_insert = f"insert into {k_tab} {keys_query}"
        if self.bounded:
            # t1 becomes the last order value the key's new rows can change the outputs of: later
            # rows of the key keep theirs, so they are neither recomputed nor read
            kk = f"{P}kk"
            ctes = self._delta_ctes() + [c.sql(DIALECT) for c in self._model_ctes()]
            keys_insert = (f"{self._with(ctes)}"
                           f"insert into {k_tab} select {_cols(self.kcols, kk)}, {kk}.{P}t0, "
                           f"{self._until(kk + '.' + P + 't1')} from ({self._keys_select()}) as {kk}")
        return [
            _create_temp(k_tab, keys_query),
            _create_temp(f_tab, f"select * from {rel}"),
            _create_temp(o_tab, f"select ctid as {P}ctid, * from {rel}"),
            keys_insert,
            fill,
            old,
            # in-order input leaves no model rows at or after t0: the fresh rows are the whole change
            Branch(f"select exists (select from {o_tab})", [delete, insert],
                   [Branch(f"select exists (select from {f_tab})", [
                       f"insert into {rel} ({_cols(cols)}) select {_cols(cols)} from {f_tab}"])]),
            f"delete from {k_tab}", f"delete from {f_tab}", f"delete from {o_tab}",
        ]


# ----- planning ---------------------------------------------------------------------------

def plan(sql: str, *, model: str, relation: str, unique_key: list[str] | None = None) -> Plan:
    """Parse and classify a model's compiled SQL; raise IvmUnsupported for what cannot be maintained."""
    try:
        tree = sqlglot.parse_one(sql, read=DIALECT)
    except sqlglot.errors.ParseError as e:
        raise IvmUnsupported(model, f"SQL the planner cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, (exp.Select, exp.Union)):
        raise IvmUnsupported(model, f"a {tree.key} statement (expected a select)")
    _strip_catalog(tree)
    _reject_common(tree, model)
    ctes = {c.alias: c.this for c in (tree.args.get("with_").expressions if tree.args.get("with_") else [])}
    inputs = sorted({_tname(t) for t in tree.find_all(exp.Table) if _tname(t) not in ctes and t.name not in ctes})
    if not inputs:
        raise IvmUnsupported(model, "no input relation")
    p = Plan(model=model, relation=relation, shape="linear", inputs=inputs, _tree=tree)
    windows = list(tree.find_all(exp.Window))
    aggs = [a for a in tree.find_all(exp.AggFunc) if not a.find_ancestor(exp.Window)]
    groups = list(tree.find_all(exp.Group))
    if windows:
        if aggs or groups:
            raise IvmUnsupported(model, "window functions combined with aggregation",
                                 "split them into two models")
        _plan_window(p, tree, ctes, model)
    elif aggs or groups:
        _plan_aggregate(p, tree, ctes, model)
    else:
        _plan_linear(p, tree, ctes, model)
    p.locator = list(unique_key or []) if p.shape == "linear" else p.locator
    p.fingerprint = hashlib.sha256(
        "\x00".join([PLAN_VERSION, sql, relation, ",".join(unique_key or [])]).encode()).hexdigest()[:32]
    return p


def _reject_common(tree: exp.Expression, model: str) -> None:
    w = tree.args.get("with_")
    if w is not None and w.args.get("recursive"):
        raise IvmUnsupported(model, "WITH RECURSIVE")
    for node in tree.walk():
        if isinstance(node, exp.Union) and node.args.get("distinct"):
            raise IvmUnsupported(model, "UNION (distinct)", "use UNION ALL")
        if isinstance(node, (exp.Intersect, exp.Except)):
            raise IvmUnsupported(model, node.key.upper())
        if isinstance(node, exp.Select) and node.args.get("distinct"):
            raise IvmUnsupported(model, "SELECT DISTINCT")
        if isinstance(node, exp.Limit) or isinstance(node, exp.Offset):
            raise IvmUnsupported(model, "LIMIT/OFFSET")
        if isinstance(node, exp.Having):
            raise IvmUnsupported(model, "HAVING", "filter in a downstream model")
        if isinstance(node, (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime, exp.Rand)):
            raise IvmUnsupported(model, f"the volatile function {node.sql(DIALECT)}",
                                 "its value changes without any insert")
        if isinstance(node, (exp.Anonymous, exp.Func)):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in _VOLATILE:
                raise IvmUnsupported(model, f"the volatile function {name}()",
                                     "its value changes without any insert")
        if isinstance(node, exp.Join) and node.side in ("RIGHT", "FULL"):
            raise IvmUnsupported(model, f"{node.side} JOIN", "use an inner or left join")
        if isinstance(node, exp.Subquery) and not isinstance(node.parent, (exp.From, exp.Join, exp.Union)) \
                and node.find(exp.Table):
            raise IvmUnsupported(model, "a subquery in an expression", "join instead")
        if isinstance(node, (exp.Exists, exp.In)) and node.find(exp.Select):
            raise IvmUnsupported(model, "a subquery in an expression (EXISTS/IN)", "join instead")
        if isinstance(node, exp.Order) and isinstance(node.parent, exp.Select) and node.parent.parent is None:
            node.pop()  # a top-level ORDER BY does not change a table's contents


def _plan_linear(p: Plan, tree: exp.Expression, ctes: dict, model: str) -> None:
    for rel in p.inputs:
        reach = _reaching_map(ctes, rel)
        for sel in tree.find_all(exp.Select):
            sources = _sources(sel)
            hits = [s for s in sources if _reaches(s, rel, reach)]
            if len(hits) > 1:
                raise IvmUnsupported(model, f"a self-join of {rel}")
            for j in sel.args.get("joins") or []:
                if j.side == "LEFT" and _reaches(j.this, rel, reach):
                    raise IvmUnsupported(model, f"{rel} on the right side of a LEFT JOIN",
                                         "the changing input must be the preserved side")
    for sel in tree.find_all(exp.Select):
        sources = _sources(sel)
        if len(sources) < 2:
            continue
        per_source = [{rel for rel in p.inputs if _reaches(s, rel, _reaching_map(ctes, rel))} for s in sources]
        for i in range(len(per_source)):
            for j in range(i + 1, len(per_source)):
                for a in per_source[i]:
                    for b in per_source[j]:
                        if a != b:
                            p.joined.append([a, b])


def _plan_window(p: Plan, tree: exp.Expression, ctes: dict, model: str) -> None:
    p.shape = "window"
    if len(p.inputs) != 1:
        raise IvmUnsupported(model, f"window functions over {len(p.inputs)} inputs ({', '.join(p.inputs)})",
                             "a per-key window model reads one input")
    if not isinstance(tree, exp.Select):
        raise IvmUnsupported(model, "a window model ending in UNION ALL", "union in a downstream model")
    if any(sel.args.get("joins") for sel in tree.find_all(exp.Select)):
        raise IvmUnsupported(model, "a join in a window model", "join in an upstream or downstream model")
    windows = list(tree.find_all(exp.Window))
    scope_ids = {id(w.find_ancestor(exp.Select)) for w in windows}
    order_names = list(ctes) + [""]
    bodies = dict(ctes, **{"": tree})
    scope_names = [n for n in order_names if id(bodies[n]) in scope_ids]
    if len(scope_names) != len(scope_ids):
        raise IvmUnsupported(model, "window functions inside a nested subquery", "put them in a CTE")
    for n in scope_names:
        frm = bodies[n].args.get("from_")
        if frm is None or not isinstance(frm.this, (exp.Table, exp.Subquery)):
            raise IvmUnsupported(model, "a window over something other than a table or CTE")
    keys: list[str] | None = None
    order = None
    per_scope: dict[str, Lookback] = {n: Lookback() for n in scope_names}
    partitions = set()
    for w in windows:
        fn = w.this
        fname = (fn.name if isinstance(fn, exp.Anonymous) else fn.sql_name()).lower()
        text = w.sql(DIALECT)
        if fname in _FORWARD_WINDOW_FUNCS:
            raise IvmUnsupported(model, f"{fname}() looks forward or at the whole partition: {text}")
        part = w.args.get("partition_by") or []
        if not part:
            raise IvmUnsupported(model, f"a window without PARTITION BY: {text}")
        if not all(isinstance(k, exp.Column) for k in part):
            raise IvmUnsupported(model, f"PARTITION BY an expression: {text}", "compute it as a column upstream")
        ordered = (w.args.get("order") or exp.Order(expressions=[])).expressions
        if not ordered:
            raise IvmUnsupported(model, f"a window without ORDER BY (it sees the whole partition): {text}")
        if ordered[0].args.get("desc"):
            raise IvmUnsupported(model, f"ORDER BY ... DESC in a window: {text}")
        t = ordered[0].this
        if not isinstance(t, exp.Column):
            raise IvmUnsupported(model, f"a window ordered by an expression: {text}")
        names = [c.name for c in part]
        partitions.add(tuple(names))
        keys = names if keys is None else [k for k in keys if k in names]
        if order is None:
            order = t
        elif t.name != order.name:
            raise IvmUnsupported(model, f"windows ordered by different columns ({order.name}, {t.name})")
        n = next(n for n in scope_names if bodies[n] is w.find_ancestor(exp.Select))
        per_scope[n] = _merge(per_scope[n], _lookback(w, fname, model, text))
    if not keys:
        raise IvmUnsupported(model, "windows partitioned by columns with nothing in common")
    # A finer partition, or a row-count lookback after another window, needs the key's whole history.
    if len(partitions) > 1 or any(per_scope[n].rows for n in scope_names[1:]):
        per_scope = {n: Lookback(unbounded=True) for n in scope_names}
    out = _output_names(tree, model)
    missing = [k for k in keys if k not in out] + ([order.name] if order.name not in out else [])
    if missing:
        raise IvmUnsupported(model, f"the window's partition/order column(s) {', '.join(missing)} are not in the output",
                             "select them under the same name")
    p.locator = list(keys) + [order.name]
    p._info = dict(scope=scope_names[0], scopes=scope_names, keys=[exp.column(k) for k in keys],
                   order=_unqualify(order), lookbacks=[per_scope[n] for n in scope_names],
                   out_keys=list(keys), out_order=order.name,
                   top1=_first_row_columns(tree, ctes, scope_names, windows, out))
    if len(scope_names) == 1:
        p._info["pushed"] = _pushed_filter(tree, ctes, scope_names[0])


def _conjuncts(e: exp.Expression | None) -> list[exp.Expression]:
    if e is None:
        return []
    if isinstance(e, exp.Paren):
        return _conjuncts(e.this)
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def _pushed_filter(tree: exp.Select, ctes: dict, scope_name: str) -> str | None:
    """The conjuncts of the filters after the window that read only columns the window's input row
    passes through, rewritten over that input's columns; None when there are none.

    Every output row of an appended row passes them, so a new row failing them has no output: in
    order, a key none of whose new rows passes them cannot gain an output row.
    """
    scope = tree if not scope_name else ctes[scope_name]
    levels: list[exp.Select] = []
    cur: exp.Expression = tree
    while cur is not scope:
        own = cur.copy()
        own.set("with_", None)  # the select itself, not the CTEs it carries
        if not isinstance(cur, exp.Select) or cur.args.get("joins") or cur.args.get("group") \
                or own.find(exp.Window) or cur.args.get("distinct"):
            return None
        frm = cur.args.get("from_")
        if frm is None or not isinstance(frm.this, exp.Table) or frm.this.db or frm.this.name not in ctes:
            return None
        levels.append(cur)
        cur = ctes[frm.this.name]

    below = levels[1:] + [scope]  # the select whose outputs each level reads
    maps = [_projection(s) for s in below]
    pushed = []
    for i, level in enumerate(levels):
        where = level.args.get("where")
        for c in _conjuncts(where.this if where else None):
            if c.find(exp.Window, exp.AggFunc, exp.Subquery, exp.Select):
                continue
            e = c.copy()
            ok = True
            for sel, m in zip(below[i:], maps[i:]):
                if m is None:
                    continue
                for col in list(e.find_all(exp.Column)):
                    sub = m.get(col.name)
                    if sub is None or sub.find(exp.Window, exp.AggFunc, exp.Subquery):
                        ok = False
                        break
                    col.replace(sub.copy())
                if not ok:
                    break
            if ok:
                for col in e.find_all(exp.Column):
                    col.set("table", None)
                pushed.append(e)
    if not pushed:
        return None
    return " and ".join(f"({c.sql(DIALECT)})" for c in pushed)


def _projection(sel: exp.Select) -> dict[str, exp.Expression] | None:
    """A select's output names and their expressions over its source; None for `select *`."""
    if any(isinstance(x, exp.Star) or (isinstance(x, exp.Column) and isinstance(x.this, exp.Star))
           for x in sel.expressions):
        return None  # select *: names pass through unchanged
    return {x.alias_or_name: x.unalias() for x in sel.expressions}


def _substitute(e: exp.Expression, mapping: dict[str, exp.Expression] | None) -> exp.Expression | None:
    """`e` with each column replaced by its expression in `mapping` (None: unchanged, unqualified);
    None when a column is missing or maps to a window, aggregate or subquery."""
    e = e.copy()
    for col in list(e.find_all(exp.Column)):
        if mapping is None:
            col.set("table", None)
            continue
        sub = mapping.get(col.name)
        if sub is None or sub.find(exp.Window, exp.AggFunc, exp.Subquery):
            return None
        if col is e:
            return sub.copy()
        col.replace(sub.copy())
    return e


def _row_wise(sel: exp.Expression) -> bool:
    """A select that maps each row of its one source to at most one row."""
    if not isinstance(sel, exp.Select):
        return False
    own = sel.copy()
    own.set("with_", None)
    frm = sel.args.get("from_")
    return (frm is not None and isinstance(frm.this, exp.Table) and not sel.args.get("joins")
            and not sel.args.get("group") and not sel.args.get("distinct") and not sel.args.get("having")
            and not own.find(exp.Window, exp.AggFunc))


def input_chain(ctes: dict, scope: exp.Select, rel: str) -> tuple[dict[str, exp.Expression] | None, list[exp.Expression]] | None:
    """How a window's input derives from `rel` through row-wise selects: (the input's columns as
    expressions over `rel`'s columns, None meaning `rel`'s own; the filters on the way, the
    window select's own where included, over `rel`'s columns), or None for any other shape."""
    levels: list[exp.Select] = []
    cur = scope.args["from_"].this
    while not (isinstance(cur, exp.Table) and _tname(cur) == rel):
        if not (isinstance(cur, exp.Table) and not cur.db and cur.name in ctes and _row_wise(ctes[cur.name])):
            return None
        levels.append(ctes[cur.name])
        cur = ctes[cur.name].args["from_"].this
    mapping: dict[str, exp.Expression] | None = None
    filters: list[exp.Expression] = []

    def add(where: exp.Expression | None) -> bool:
        for c in _conjuncts(where.this if where else None):
            e = _substitute(c, mapping)
            if e is None:
                return False
            filters.append(e)
        return True

    for sel in reversed(levels):
        if not add(sel.args.get("where")):
            return None
        proj = _projection(sel)
        if proj is not None:
            new = {}
            for name, e in proj.items():
                sub = _substitute(e, mapping)
                if sub is not None:
                    new[name] = sub
            mapping = new
    if not add(scope.args.get("where")):
        return None
    return mapping, filters


def _first_row_columns(tree: exp.Select, ctes: dict, scope_names: list[str], windows: list[exp.Window],
                       out: list[str]) -> list[str] | None:
    """The window input's columns, when the model keeps the first row per key and passes them on.

    The shape: a CTE numbering rows with row_number() only, read by the final select that keeps
    `rank = 1` and outputs, unchanged, every column the CTE reads. Then the model's own rows are
    each key's current first row, and appended input can only replace them.
    """
    if len(scope_names) != 1 or not scope_names[0]:
        return None
    name = scope_names[0]
    scope = ctes[name]
    if any(w.this.sql_name().lower() != "row_number" for w in windows) or scope.args.get("joins"):
        return None
    frm = tree.args.get("from_")
    if tree.args.get("joins") or frm is None or not isinstance(frm.this, exp.Table) or frm.this.name != name:
        return None
    ranks = [x.alias for x in scope.expressions if isinstance(x, exp.Alias) and isinstance(x.this, exp.Window)]
    where = tree.args.get("where")
    cond = where.this if where else None
    if not (len(ranks) == 1 and isinstance(cond, (exp.EQ, exp.LTE)) and isinstance(cond.this, exp.Column)
            and cond.this.name == ranks[0] and isinstance(cond.expression, exp.Literal)
            and cond.expression.this == "1"):
        return None
    if not all(isinstance(x, exp.Column) for x in tree.expressions):
        return None
    passed = {x.name for x in scope.expressions if isinstance(x, exp.Column)}
    read = sorted({c.name for c in scope.find_all(exp.Column)} - set(ranks))
    if not set(read) <= passed or not set(read) <= set(out):
        return None
    return read


def _lookback(w: exp.Window, fname: str, model: str, text: str) -> Lookback:
    spec = w.args.get("spec")
    if fname == "lag":
        off = w.this.args.get("offset")
        if off is None:
            return Lookback(rows=1)
        if not (isinstance(off, exp.Literal) and not off.is_string):
            raise IvmUnsupported(model, f"lag() with a non-literal offset: {text}")
        return Lookback(rows=int(off.this))
    if fname in _UNBOUNDED_WINDOW_FUNCS:
        return Lookback(unbounded=True)
    if spec is None:
        return Lookback(unbounded=True)
    end, end_side = spec.args.get("end"), spec.args.get("end_side")
    if (end_side or "").lower() == "following" or str(end).upper() == "UNBOUNDED":
        raise IvmUnsupported(model, f"a frame that looks forward: {text}")
    start, side = spec.args.get("start"), (spec.args.get("start_side") or "").lower()
    if side == "following":
        raise IvmUnsupported(model, f"a frame that looks forward: {text}")
    if str(start).upper() == "UNBOUNDED":
        return Lookback(unbounded=True)
    if str(start).upper() == "CURRENT ROW":
        return Lookback()
    if spec.args.get("kind", "").lower() == "rows":
        if isinstance(start, exp.Literal) and not start.is_string:
            return Lookback(rows=int(start.this))
        raise IvmUnsupported(model, f"a ROWS frame with a non-literal offset: {text}")
    if spec.args.get("kind", "").lower() == "range":
        if isinstance(start, exp.Interval):
            return Lookback(interval=start.sql(DIALECT))
        raise IvmUnsupported(model, f"a RANGE frame whose offset is not an interval: {text}")
    raise IvmUnsupported(model, f"the window frame {text}")


def _merge(a: Lookback, b: Lookback) -> Lookback:
    if a.interval and b.interval and a.interval != b.interval:
        interval = f"greatest({a.interval}, {b.interval})"
    else:
        interval = a.interval or b.interval
    return Lookback(interval=interval, rows=max(a.rows, b.rows), unbounded=a.unbounded or b.unbounded)


def _plan_aggregate(p: Plan, tree: exp.Expression, ctes: dict, model: str) -> None:
    p.shape = "aggregate"
    if len(p.inputs) != 1:
        raise IvmUnsupported(model, f"an aggregate over {len(p.inputs)} inputs", "aggregate one input per model")
    if not isinstance(tree, exp.Select) or not tree.args.get("group"):
        raise IvmUnsupported(model, "aggregation outside the final select's GROUP BY")
    for body in ctes.values():
        if body.find(exp.AggFunc) or body.find(exp.Group):
            raise IvmUnsupported(model, "aggregation inside a CTE", "aggregate in the final select")
    if any(sel.args.get("joins") for sel in tree.find_all(exp.Select)):
        raise IvmUnsupported(model, "a join in an aggregate model", "join in an upstream model")
    proj = tree.expressions
    gexprs: list[exp.Expression] = []
    for g in tree.args["group"].expressions:
        if isinstance(g, exp.Literal) and not g.is_string:
            gexprs.append(proj[int(g.this) - 1].unalias())
        elif isinstance(g, exp.Column) and not g.table and any(x.alias == g.name for x in proj):
            gexprs.append(next(x for x in proj if x.alias == g.name).unalias())
        else:
            gexprs.append(g)
    gsql = [g.sql(DIALECT) for g in gexprs]
    group_cols: dict[str, exp.Expression] = {}
    agg_cols: dict[str, str] = {}
    for x in proj:
        name = x.alias_or_name
        e = x.unalias()
        if e.sql(DIALECT) in gsql:
            group_cols[name] = e
            continue
        inner = e.this if isinstance(e, exp.Filter) else e
        kind = {exp.Count: "count", exp.Sum: "sum", exp.Min: "min", exp.Max: "max"}.get(type(inner))
        if kind is None:
            raise IvmUnsupported(model, f"the output {x.sql(DIALECT)}",
                                 "only group keys and count/sum/min/max (with FILTER) are maintained; "
                                 "compute averages and ratios in a view or downstream model")
        if isinstance(inner, exp.Count) and inner.args.get("this") is not None and isinstance(inner.this, exp.Distinct):
            raise IvmUnsupported(model, f"count(distinct ...): {x.sql(DIALECT)}")
        agg_cols[name] = kind
    if len(group_cols) != len(gexprs):
        raise IvmUnsupported(model, "a GROUP BY expression that is not selected as an output column")
    p.group_keys = list(group_cols)
    p.locator = list(group_cols)
    p._info = dict(agg_cols=agg_cols, group_exprs=[group_cols[c] for c in group_cols])


# ----- SQL rewriting helpers --------------------------------------------------------------

def _map_steps(steps: list[Step], fn) -> list[Step]:
    """`steps` with `fn` applied to every statement, branch tests included."""
    return [Branch(fn(s.test), _map_steps(s.then, fn), _map_steps(s.otherwise, fn)) if isinstance(s, Branch)
            else fn(s) for s in steps]


def _delta_name(event: str) -> str:
    return {"insert": f"{P}new", "delete": f"{P}old", "update": f"{P}oldnew"}[event]


def _strip_catalog(tree: exp.Expression) -> None:
    """dbt qualifies relations with the database name; keep schema.table so SQL survives renames."""
    for t in tree.find_all(exp.Table):
        if t.args.get("catalog") is not None:
            t.set("catalog", None)


def _tname(t: exp.Table) -> str:
    return f"{t.db}.{t.name}" if t.db else t.name


def _reaching_map(ctes: dict, rel: str) -> set[str]:
    reach: set[str] = set()
    for name, body in ctes.items():  # CTEs only refer to earlier ones
        for t in body.find_all(exp.Table):
            if (not t.db and t.name in reach) or _tname(t) == rel:
                reach.add(name)
                break
    return reach


def _reaching(ctes: list[exp.CTE], rel: str) -> set[str]:
    return _reaching_map({c.alias: c.this for c in ctes}, rel)


def _reaches(node: exp.Expression, rel: str, reach: set[str]) -> bool:
    return any(_tname(t) == rel or (not t.db and t.name in reach) for t in node.find_all(exp.Table))


def _sources(sel: exp.Select) -> list[exp.Expression]:
    out = []
    if sel.args.get("from_"):
        out.append(sel.args["from_"].this)
    out.extend(j.this for j in sel.args.get("joins") or [])
    return out


def _replace_inputs(node: exp.Expression, rel: str, delta: str, reach: set[str]) -> None:
    """Point references to `rel` at the transition table and CTEs over it at their delta copies."""
    for t in list(node.find_all(exp.Table)):
        if _tname(t) == rel:
            alias = t.alias_or_name
            t.replace(exp.to_table(delta, alias=exp.TableAlias(this=exp.to_identifier(alias))))
        elif not t.db and t.name in reach:
            alias = t.alias_or_name
            t.replace(exp.Table(this=exp.to_identifier(P + "d_" + t.name),
                                alias=exp.TableAlias(this=exp.to_identifier(alias))))


def _derive(tree: exp.Expression, rel: str, delta: str) -> str:
    """The model's SQL over the delta of `rel`: rel -> transition table, union branches without it -> empty."""
    t = tree.copy()
    with_ = t.args.get("with_")
    ctes = list(with_.expressions) if with_ else []
    reach = _reaching(ctes, rel)
    for u in list(t.find_all(exp.Union)):
        for side in ("this", "expression"):
            branch = u.args.get(side)
            inner = branch.this if isinstance(branch, exp.Subquery) else branch
            if isinstance(inner, exp.Select) and not _reaches(inner, rel, reach):
                inner.where("false", copy=False)
    for t_ in list(t.find_all(exp.Table)):
        if _tname(t_) == rel:
            alias = t_.alias_or_name
            t_.replace(exp.Table(this=exp.to_identifier(delta), alias=exp.TableAlias(this=exp.to_identifier(alias))))
    return t.sql(DIALECT)


def _eq(a: str, b: str) -> str:
    """a equals b, nulls equal (written so that an index on a serves the a = b part)."""
    return f"({a} = {b} or ({a} is null and {b} is null))"


def _eq_hash(a: str, b: str) -> str:
    """a equals b, nulls equal, as one hashable equality (one-element arrays compare nulls equal)."""
    return f"array[{a}] = array[{b}]"


def _temp_table(kind: str, *identity: str) -> str:
    """The name of a session temp table of `kind` for what `identity` names (a model or group and
    its column layout: a changed layout gets a table of its own)."""
    tag = hashlib.sha256("\x00".join(identity).encode()).hexdigest()[:16]
    return f"pg_temp.{_qi(P + kind + '_' + tag)}"


def _create_temp(name: str, query: str) -> str:
    """A session temp table shaped like `query`'s result, emptied at commit."""
    name = name.removeprefix("pg_temp.")
    return f"create temp table if not exists {name} on commit delete rows as {query} with no data"


def _pop_ctes(tree: exp.Expression) -> list[exp.CTE]:
    w = tree.args.get("with_")
    if w is None:
        return []
    tree.set("with_", None)
    return list(w.expressions)


def _cte(name: str, body: exp.Expression) -> exp.CTE:
    return exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(name)))


def _as_alias(src: exp.Expression, alias: str) -> exp.Expression:
    if isinstance(src, exp.Table):
        src.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    elif isinstance(src, exp.Subquery):
        src.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return src


def _unqualify(c: exp.Column) -> exp.Column:
    c = c.copy()
    c.set("table", None)
    return c


def _output_names(tree: exp.Expression, model: str) -> list[str]:
    sel = tree
    while isinstance(sel, exp.Union):
        sel = sel.this
    names = []
    for x in sel.expressions:
        if isinstance(x, exp.Star) or (isinstance(x, exp.Column) and isinstance(x.this, exp.Star)):
            return _star_names(tree, sel, model)
        names.append(x.alias_or_name)
    return names


def _star_names(tree: exp.Expression, sel: exp.Select, model: str) -> list[str]:
    """Names behind `select *` from a CTE chain (enough to find the partition/order columns)."""
    with_ = tree.args.get("with_")
    ctes = {c.alias: c.this for c in (with_.expressions if with_ else [])}
    src = sel.args["from_"].this
    if isinstance(src, exp.Table) and src.name in ctes:
        return _output_names_of(ctes, ctes[src.name], model)
    if isinstance(src, exp.Subquery):
        return _output_names_of(ctes, src.this, model)
    return ["*"]


def _output_names_of(ctes: dict, sel: exp.Expression, model: str) -> list[str]:
    while isinstance(sel, exp.Union):
        sel = sel.this
    names = []
    for x in sel.expressions:
        if isinstance(x, exp.Star) or (isinstance(x, exp.Column) and isinstance(x.this, exp.Star)):
            src = sel.args["from_"].this
            if isinstance(src, exp.Table) and src.name in ctes:
                names.extend(_output_names_of(ctes, ctes[src.name], model))
            else:
                names.append("*")
        else:
            names.append(x.alias_or_name)
    return names


def _q(relation: str) -> str:
    return ".".join(_qi(p) for p in relation.split("."))


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cols(cols: list[str], alias: str | None = None) -> str:
    return ", ".join(f"{alias}.{_qi(c)}" if alias else _qi(c) for c in cols)


def _rowkey(cols: list[str], alias: str) -> str:
    """A row's value as text: equal rows (NULLs included) give equal keys, and text hashes."""
    return f"row({_cols(cols, alias)})::text"


def _numbered(cols: list[str], alias: str) -> str:
    """Select list numbering equal rows, so multisets compare with a hash join on (key, n)."""
    return (f"{alias}.*, {_rowkey(cols, alias)} as {P}r, "
            f"row_number() over (partition by {_rowkey(cols, alias)}) as {P}n")


def _match(cols: list[str], a: str, b: str) -> str:
    return f"{a}.{P}r = {b}.{P}r"


def multiset_diff(relation: str, cols: list[str], old_sql: str, fresh_sql: str) -> tuple[str, str]:
    """Two statements, delete then insert, that turn `relation`'s rows `old_sql` selects (each with
    its ctid as `__ivm_ctid`) into the rows `fresh_sql` selects, changing only rows that differ
    (as multisets: equal rows pair off by their number among equals)."""
    numbered = (f"with {P}old_n as (select {_numbered(cols, 'o')} from ({old_sql}) as o),\n"
                f"{P}fresh_n as (select {_numbered(cols, 'f')} from ({fresh_sql}) as f)\n")
    same = f"{_match(cols, 'f', 'o')} and f.{P}n = o.{P}n"
    delete = (f"{numbered}delete from {_q(relation)} as {P}t using {P}old_n as o\n"
              f"where {P}t.ctid = o.{P}ctid and not exists (select from {P}fresh_n as f where {same})")
    insert = (f"{numbered}insert into {_q(relation)} ({_cols(cols)})\n"
              f"select {_cols(cols, 'f')} from {P}fresh_n as f\n"
              f"where not exists (select from {P}old_n as o where {same})")
    return delete, insert


def _multiset_delete(relation: str, cols: list[str], locator: list[str], delta_sql: str,
                     candidates: str | None = None) -> str:
    """Delete one model row per delta row (full-row match), finding candidates by the locator, or
    by `candidates` (a condition on the model's rows `__ivm_m`, which may read the delta `__ivm_d`)."""
    loc = " and ".join(f"{P}m.{_qi(c)} = d.{_qi(c)}" for c in locator) or "true"
    if candidates is None:
        candidates = (f"exists (select from (select distinct {_cols(locator, 'd0') if locator else '1'} "
                      f"from {P}d as d0) as d where {loc})")
    return (
        f"with {P}d as ({delta_sql}),\n"
        f"{P}d_n as (select {_numbered(cols, 'd')} from {P}d as d),\n"
        f"{P}m_n as (select {_numbered(cols, 'x')} from "
        f"(select {P}m.ctid as {P}ctid, {P}m.* from {_q(relation)} as {P}m "
        f"where {candidates}) as x)\n"
        f"delete from {_q(relation)} as {P}t using {P}m_n as o, {P}d_n as f\n"
        f"where {P}t.ctid = o.{P}ctid and {_match(cols, 'f', 'o')} and f.{P}n = o.{P}n")
