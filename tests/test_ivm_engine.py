"""The incremental engine's defining property, without dbt: after every batch, every maintained model
equals a from-scratch evaluation of its SQL. Models in tests/fixtures/ivm_models.py."""
from __future__ import annotations

import os
import re
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentinel.ivm import IvmUnsupported, deploy_model
from tests.fixtures import maintained
from tests.fixtures.ivm_models import all_models

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def deployed(module_db_collations):
    """A module database (with a bytewise default collation, and without) with the test models
    deployed once."""
    module_db = module_db_collations
    with psycopg.connect(module_db.dsn) as conn:
        conn.execute("create schema ivm_test")
        conn.execute("grant usage on schema ivm_test to sentinel_analyst")
        for name, rel, sql, key in all_models(module_db.dbname):
            deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key)
    return module_db


def reset(dsn: str) -> None:
    maintained.reset(dsn, [r for _, r, _, _ in all_models("x")])


def mismatches(conn: psycopg.Connection, dbname: str) -> dict[str, int]:
    return maintained.mismatches(conn, [(rel, sql) for _, rel, sql, _ in all_models(dbname)])


CARDS = ["c1", "c2", "c3"]
COORDS = [None, (0.0, 179.9), (0.0, -179.9), (48.85, 2.35), (40.71, -74.0), (48.86, 2.36)]
AMOUNTS = ["5.00", "999.99", "1000.00", "1000.01", "2000.00", "2000.01", "40.50"]

txn = st.tuples(
    st.sampled_from(CARDS),
    st.sampled_from([0, 1, 15, 30, 45, 59, 60, 61, 75, 90, 120, 121, 180, 300, 600, 1800, 3600]),  # seconds: ties, 60 s edges
    st.sampled_from(COORDS),
    st.sampled_from(AMOUNTS),
    st.sampled_from(["grocery", "atm", None]),
)


def insert(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "insert into fraud.transactions (txn_id, card_id, merchant_id, merchant_category, amount, lat, lon, "
            "event_time) values (%s, %s, 'm1', %s, %s, %s, %s, %s) on conflict do nothing",
            rows)


def rows_of(stream: list[tuple]) -> list[tuple]:
    out = []
    for i, (card, sec, coord, amount, cat) in enumerate(stream):
        lat, lon = coord if coord else (None, None)
        out.append((f"t{i % 23:02d}", card, cat, amount, lat, lon, T0 + timedelta(seconds=sec)))
    return out


@settings(max_examples=int(os.environ.get("SENTINEL_IVM_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(txn, min_size=1, max_size=40), data=st.data())
def test_models_equal_full_evaluation_after_every_batch(deployed, stream, data):
    reset(deployed.dsn)
    rows = rows_of(stream)
    rows = maintained.arrival_order(data, rows, when=6)
    with psycopg.connect(deployed.dsn) as conn:
        i = 0
        while i < len(rows):
            size = data.draw(st.integers(1, 8))
            insert(conn, rows[i:i + size])
            # mid-transaction: maintained in the same transaction that inserted the rows
            assert mismatches(conn, deployed.dbname) == {}
            conn.commit()
            i += size


def test_loader_role_insert_maintains_models(deployed):
    reset(deployed.dsn)
    with psycopg.connect(deployed.loader_dsn) as conn:
        insert(conn, [(f"l{i}", "c9", "atm", "2500.00", None, None, T0 + timedelta(seconds=i)) for i in range(5)])
    with psycopg.connect(deployed.dsn) as conn:
        assert conn.execute("select count(*) from ivm_test.velocity where card_id = 'c9'").fetchone()[0] == 2
        assert conn.execute("select count(*) from ivm_test.high_value where card_id = 'c9'").fetchone()[0] == 5
        assert mismatches(conn, deployed.dbname) == {}


def test_concurrent_writers_stay_correct(deployed):
    reset(deployed.dsn)

    def writer(k: int) -> None:
        with psycopg.connect(deployed.dsn) as conn:
            for b in range(10):
                insert(conn, [(f"w{k}-{b}-{j}", f"c{j % 2}", None, "2100.00", None, None,
                               T0 + timedelta(seconds=(b * 7 + j * 3 + k) % 100)) for j in range(5)])
                conn.commit()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(deployed.dsn) as conn:
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 150
        assert mismatches(conn, deployed.dbname) == {}


def test_repeatable_read_writer_gets_a_clear_error(deployed):
    with psycopg.connect(deployed.dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="READ COMMITTED"):
            insert(conn, [("rr1", "c1", None, "10.00", None, None, T0)])


@pytest.mark.parametrize("sql, construct", [
    ("select card_id, avg(amount) as a from fraud.transactions group by 1", "avg"),
    ("select txn_id, lead(amount) over (partition by card_id order by event_time) from fraud.transactions",
     "lead"),
    ("select distinct card_id from fraud.transactions", "DISTINCT"),
    ("select txn_id from fraud.transactions where event_time > now() - interval '1 hour'", "volatile function"),
    ("select a.txn_id from fraud.transactions a join fraud.transactions b on a.card_id = b.card_id",
     "self-join"),
    ("select card_id, count(*) from fraud.transactions group by 1 having count(*) > 2", "HAVING"),
    ("select txn_id, count(*) over (partition by card_id order by event_time "
     "rows between current row and 2 following) from fraud.transactions", "forward"),
])
def test_unsupported_shapes_name_the_construct(deployed, sql, construct):
    with psycopg.connect(deployed.dsn) as conn:
        with pytest.raises(IvmUnsupported, match="(?i)" + construct) as e:
            deploy_model(conn.cursor(), model="bad_model", relation="ivm_test.bad_model", sql=sql)
        assert "bad_model" in str(e.value)


def test_first_row_per_key_reads_the_model_not_the_history():
    """The first-row shape is recognised (its triggers never read a key's history); near misses are not."""
    from sentinel.ivm import plan
    from tests.fixtures.ivm_models import MODELS

    def top1(sql: str):
        return plan(sql.replace("{db}", "x"), model="m", relation="ivm_test.m")._info["top1"]

    first = MODELS["first_use"][1]
    assert top1(first) == ["amount", "card_id", "event_time", "txn_id"]
    assert top1(first.replace("use_number = 1", "use_number <= 1")) is not None
    assert top1(first.replace("use_number = 1", "use_number = 2")) is None  # the second use needs history
    assert top1(first.replace("select txn_id, card_id, amount, event_time\nfrom numbered",
                              "select txn_id, card_id, event_time\nfrom numbered")) is None  # amount not kept
    assert top1(MODELS["travel"][1]) is None


def test_window_group_reads_past_the_shared_rows_when_they_do_not_suffice(deployed):
    """In-order batches whose shared read (each card's last row) is not enough for a member: a
    partition seen only earlier, a located row further back, a burst longer than the read."""
    reset(deployed.dsn)
    t = [T0 + timedelta(seconds=s) for s in range(10)]
    paris, nyc = (48.85, 2.35), (40.71, -74.0)
    first = [
        ("g1", "c5", "grocery", "10.00", None, None, t[0]), ("g2", "c5", "atm", "10.00", None, None, t[1]),
        ("g3", "c5", "atm", "10.00", None, None, t[2]),
        ("p1", "c6", None, "10.00", *paris, t[0]), ("p2", "c6", None, "10.00", None, None, t[1]),
        ("p3", "c6", None, "10.00", None, None, t[2]),
        ("v1", "c7", None, "10.00", None, None, t[0]), ("v2", "c7", None, "10.00", None, None, t[1]),
        ("v3", "c7", None, "10.00", None, None, t[2]),
    ]
    second = [("g4", "c5", "grocery", "10.00", None, None, t[3]), ("p4", "c6", None, "10.00", *nyc, t[3]),
              ("v4", "c7", None, "10.00", None, None, t[3])]
    with psycopg.connect(deployed.dsn) as conn:
        insert(conn, first)
        conn.commit()
        insert(conn, second)
        conn.commit()
        assert conn.execute("select count(*) from ivm_test.first_category where card_id = 'c5'").fetchone()[0] == 2
        assert conn.execute("select txn_id from ivm_test.travel where card_id = 'c6'").fetchall() == [("p4",)]
        assert conn.execute("select txn_id from ivm_test.velocity where card_id = 'c7'").fetchall() == [("v4",)]
        assert mismatches(conn, deployed.dbname) == {}


def test_a_late_row_changes_the_outputs_as_far_as_the_frames_reach_and_no_further(deployed):
    """A late row changes the outputs of the rows whose frames reach back to it: the next three rows
    of a 3-row frame, the rows up to 60 s later of a 60 s range, and through a window over another
    window's output, the inner reach plus the outer one (bursts: the late row makes the next row
    quick, whose 120 s count then reaches a row past the inner reach). Rows past the reach are
    neither recomputed nor read."""
    reset(deployed.dsn)
    s = lambda x: T0 + timedelta(seconds=x)  # noqa: E731
    burst = [("b1", "c8", None, "10.00", None, None, s(100)), ("b2", "c8", None, "11.00", None, None, s(200)),
             ("b3", "c8", None, "12.00", None, None, s(210)), ("b4", "c8", None, "13.00", None, None, s(220))]
    spike = [(f"s{i}", "c9", None, a, None, None, s(100 + i)) for i, a in enumerate(["10.00", "10.00", "15.00", "50.00", "10.00", "40.00"])]
    steady = [(f"v{i:02d}", "c10", None, "1.00", None, None, s(1000 + i)) for i in range(40)]

    def bursts(conn):
        return conn.execute("select txn_id, quick_count from ivm_test.bursts where card_id = 'c8' order by 1").fetchall()

    def spikes(conn):
        return [r[0] for r in conn.execute("select txn_id from ivm_test.spike where card_id = 'c9' order by 1")]

    with psycopg.connect(deployed.dsn) as conn:
        insert(conn, burst + spike + steady)
        conn.commit()
        assert bursts(conn) == [("b4", 2)]
        assert spikes(conn) == ["s3"]
        assert conn.execute("select count(*) from ivm_test.velocity where card_id = 'c10'").fetchone()[0] == 37
        # b0 makes b2 quick (10 s after it), which adds to b4's count 20 s later: past b0's own reach
        # (its next two rows); s00 joins the frames of the next three rows (s0, s1, s2), not s3's
        # fetches by index in this transaction (the view also holds earlier ones not yet flushed)
        fetched = "select idx_tup_fetch from pg_stat_xact_user_tables where relid = 'ivm_test.velocity'::regclass"
        before = conn.execute(fetched).fetchone()[0]
        insert(conn, [("b0", "c8", None, "14.00", None, None, s(190)), ("s00", "c9", None, "1.00", None, None, s(99)),
                      ("v-late", "c10", None, "1.00", None, None, s(900))])
        velocity_reads = conn.execute(fetched).fetchone()[0] - before
        conn.commit()
        assert bursts(conn) == [("b3", 2), ("b4", 3)]
        assert spikes(conn) == ["s2", "s3"]  # s2's average falls below half its amount; s3's frame is as before
        assert mismatches(conn, deployed.dbname) == {}
    # v-late is 100 s before c10's rows: their 37 velocity rows are past its reach, not read; s00's
    # reach holds c9's three (s3, s4, s5)
    assert velocity_reads == 3, velocity_reads


NULLABLE = {
    "n_count": '''select id, k, t, count(*) over (
    partition by k order by t range between interval '60 seconds' preceding and current row) as n
from ivm_nulls.events''',
    "n_lag": '''select id, k, t, v, lag(v) over (partition by k order by t, id collate "C") as prev_v
from ivm_nulls.events''',
    "n_first": '''with numbered as (
    select id, k, t, v, row_number() over (partition by k order by t, id collate "C") as r
    from ivm_nulls.events
)
select id, k, t, v from numbered where r = 1''',
}


@pytest.fixture(scope="module")
def nullable(module_db):
    """Window models partitioned by a column that can be null (a partition of its own)."""
    with psycopg.connect(module_db.dsn) as conn:
        conn.execute("create schema ivm_nulls")
        conn.execute("create table ivm_nulls.events (id text primary key, k text, t timestamptz not null, v int)")
        for name, sql in NULLABLE.items():
            deploy_model(conn.cursor(), model=name, relation=f"ivm_nulls.{name}", sql=sql)
    return module_db


@settings(max_examples=int(os.environ.get("SENTINEL_IVM_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from([0, 10, 30, 59, 60, 61, 200])),
                       min_size=1, max_size=30), data=st.data())
def test_null_partition_keys_are_maintained(nullable, stream, data):
    models = [(f"ivm_nulls.{n}", sql) for n, sql in NULLABLE.items()]
    maintained.reset(nullable.dsn, [r for r, _ in models])
    with psycopg.connect(nullable.dsn) as conn:
        conn.execute("truncate ivm_nulls.events")
        conn.commit()
        rows = [(f"e{i:02d}", k, T0 + timedelta(seconds=s), i) for i, (k, s) in enumerate(stream)]
        rows = maintained.arrival_order(data, rows, when=2)
        i = 0
        while i < len(rows):
            size = data.draw(st.integers(1, 6))
            conn.cursor().executemany("insert into ivm_nulls.events values (%s, %s, %s, %s)", rows[i:i + size])
            conn.commit()
            assert maintained.mismatches(conn, models) == {}
            i += size


@pytest.fixture(scope="module")
def bucketed(module_db):
    """Aggregates over a table whose rows can be deleted and updated, whose time and key can be
    null: a delete recomputes the touched groups from their rows only, by time bucket (each
    bucket's time range, and the rows without a time for the null bucket) or by a plain key
    column (the rows with a touched value, and those without one for the null key)."""
    with psycopg.connect(module_db.dsn) as conn:
        conn.execute("create schema ivm_buckets")
        conn.execute("create table ivm_buckets.stamps (id int primary key, k text, t timestamptz, v int)")
        conn.execute("create index on ivm_buckets.stamps (t)")
        conn.execute("create index on ivm_buckets.stamps (k)")
        for name, sql in BUCKETED.items():
            deploy_model(conn.cursor(), model=name, relation=f"ivm_buckets.{name}", sql=sql)
    return module_db


BUCKETED = {
    "hourly": """select date_trunc('hour', t) as hour, k, count(*) as n, sum(v) as total, max(v) as top
from ivm_buckets.stamps
group by 1, 2""",
    "by_key": """with kept as (select k as key, v, t from ivm_buckets.stamps where v is distinct from 0)
select key, count(*) as n, sum(v) as total, min(t) as first_t, max(v) as top
from kept
group by key""",
}


@settings(max_examples=int(os.environ.get("SENTINEL_IVM_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["insert", "insert", "delete", "update"]), st.integers(0, 9),
                              st.sampled_from([None, 0, 59 * 60 + 59, 3600, 3601, 7200, 86400]),
                              st.sampled_from(["a", "b", None]), st.integers(-5, 5)),
                    min_size=1, max_size=25))
@example(ops=[("insert", 0, None, "a", 1), ("insert", 1, None, "a", 2), ("insert", 2, 3600, "a", 3),
              ("delete", 0, None, None, 0), ("update", 2, 3601, None, 4), ("update", 1, 7200, None, 5)])
@example(ops=[("insert", 0, 0, None, 1), ("insert", 1, 60, None, 2), ("insert", 2, 60, "a", 3),
              ("delete", 0, None, None, 0), ("update", 2, 60, None, 0)])
def test_aggregates_by_time_bucket_and_by_key_follow_deletes_and_updates(bucketed, ops):
    models = [(f"ivm_buckets.{name}", sql) for name, sql in BUCKETED.items()]
    with psycopg.connect(bucketed.dsn) as conn:
        conn.execute(f"truncate ivm_buckets.stamps, {', '.join(r for r, _ in models)}")
        conn.commit()
        for op, i, s, k, v in ops:
            t = None if s is None else T0 + timedelta(seconds=s)
            if op == "insert":
                conn.execute("insert into ivm_buckets.stamps values (%s, %s, %s, %s) on conflict do nothing", (i, k, t, v))
            elif op == "delete":
                conn.execute("delete from ivm_buckets.stamps where id = %s", (i,))
            else:
                conn.execute("update ivm_buckets.stamps set t = %s, v = %s where id = %s", (t, v, i))
            conn.commit()
            assert maintained.mismatches(conn, models) == {}, (op, i, s, k, v)



@pytest.mark.parametrize("model, index", [("hourly", "stamps_t_idx"), ("by_key", "stamps_k_idx")])
def test_an_aggregates_delete_recompute_reads_the_touched_groups_rows_through_the_inputs_index(bucketed, model, index):
    """A delete's recompute reads the input's rows of the touched groups only, through the index on
    the key it narrows by (a bucket's time range; a key column's touched values, the null key by
    `is null`): with 20,000 rows in 1,001 keys and 1,000 hours, a delete of three rows (one with a
    null key) reads tens of them. (Without the narrowing, the exact null-safe match is hashable
    only: a pass over the whole input.) The delete trigger's statements, run by hand, rolled back."""
    with psycopg.connect(bucketed.dsn) as conn:
        conn.execute("truncate ivm_buckets.stamps, ivm_buckets.hourly, ivm_buckets.by_key")
        conn.execute("insert into ivm_buckets.stamps select i, case when i %% 1001 > 0 then 'k' || (i %% 1001) end, "
                     "%s + (i %% 1000) * interval '1 hour' + (i %% 7) * interval '1 minute', i %% 5 "
                     "from generate_series(1, 20000) as i", (T0,))
        conn.execute("analyze ivm_buckets.stamps")
        src = "\n".join(r[0] for r in conn.execute(
            "select p.prosrc from pg_trigger t join pg_proc p on p.oid = t.tgfoid "
            "where t.tgrelid = 'ivm_buckets.stamps'::regclass and not t.tgisinternal and t.tgtype & 8 <> 0 "
            "and p.prosrc like %s", (f'%insert into "ivm_buckets"."{model}"%',)))
        stmts = [x for _, x in re.findall(r"execute (\$q\d*\$)(.*?)\1", src, re.S)
                 if f'"ivm_buckets"."{model}"' in x and "__ivm_old" in x]
        conn.execute("create temp table __ivm_old as select * from ivm_buckets.stamps where id in (1001, 2002, 3003) "
                     "or id in (select min(id) from ivm_buckets.stamps where k is null)")
        conn.execute("delete from ivm_buckets.stamps where id in (select id from __ivm_old)")  # triggers: the model's own
        conn.execute("analyze __ivm_old")
        plans = [conn.execute(f"explain (analyze, format json) {x}").fetchone()[0][0]["Plan"] for x in stmts]
        conn.rollback()

    def nodes(node: dict):
        yield node
        for c in node.get("Plans", []):
            yield from nodes(c)

    inserts = [p for p in plans if p.get("Operation") == "Insert"]
    assert len(plans) == 2 and len(inserts) == 1, plans
    reads = [n for n in nodes(inserts[0]) if n.get("Relation Name") == "stamps"]
    fetched = sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0) for n in reads)
    assert reads and not any(n["Node Type"] == "Seq Scan" for n in reads), reads
    assert any(n.get("Index Name") == index or index in str(n.get("Plans", "")) for n in reads), reads
    assert 0 < fetched < 200, fetched


@pytest.mark.parametrize("kind", ["scalar", "json"])
def test_a_switch_changes_only_the_rows_that_differ_as_multisets_and_by_their_text(deployed, kind):
    """The switch's diff (`install._apply_diff`) leaves the table equal to the new content row for
    row, text included (numeric 1.0 and 1.00, interval '1 day' and '24:00:00', -0 and 0 are equal
    to EXCEPT but not the same), with duplicates and nulls (a null first column too) paired off by
    their number, and changes no row it need not; also with a column of a type without equality
    (json)."""
    import collections

    from sentinel.ivm.install import _apply_diff

    j = ", j json" if kind == "json" else ""
    old = [("a", "1.0", "1 day", "0", 1), ("a", "1.0", "1 day", "0", 1), ("a", "1.0", "1 day", "0", 1),
           (None, None, None, None, 2), (None, None, None, None, 2), ("b", "2", "1 hour", "-0", 3),
           ("c", "3", "2 days", "1.5", 4), (None, "9", "1 day", "1", 6)]
    new = [("a", "1.0", "1 day", "0", 1), ("a", "1.00", "1 day", "0", 1), (None, None, None, None, 2),
           (None, None, None, None, 2), (None, None, None, None, 2), ("b", "2", "1 hour", "0", 3),
           ("c", "3", "48:00:00", "1.5", 4), ("d", "4", "1 day", "2", 5)]
    with psycopg.connect(deployed.dsn) as conn:
        conn.execute("create schema diff_t")
        for table, rows in (("diff_t.model", old), ("diff_t.fresh", new)):
            conn.execute(f"create table {table} (k text, n numeric, iv interval, f float8, i int{j})")
            with conn.cursor() as cur:
                cur.executemany(f"insert into {table} values (%s, %s::numeric, %s::interval, %s::float8, %s"
                                f"{', %s::json' if j else ''})", [r + (('{}',) if j else ()) for r in rows])
        text = "select row(t.*)::text from {} as t"
        before = collections.Counter(r[0] for r in conn.execute(text.format("diff_t.model")))
        wanted = collections.Counter(r[0] for r in conn.execute(text.format("diff_t.fresh")))
        cols = [("k", "text"), ("n", "numeric"), ("iv", "interval"), ("f", "double precision"), ("i", "integer")]
        deleted, inserted = _apply_diff(conn.cursor(), "diff_t.model", cols + ([("j", "json")] if j else []),
                                        "diff_t.fresh")
        after = collections.Counter(r[0] for r in conn.execute(text.format("diff_t.model")))
        conn.rollback()
    assert after == wanted
    assert (deleted, inserted) == (sum((before - wanted).values()), sum((wanted - before).values())) == (5, 5)


def _step_rows(step: int) -> list[tuple]:
    """Rows a writer commits at one step of an online deploy: new and late, ties, coordinates
    that make and move flags (so that flag models delete rows too)."""
    import random

    rnd = random.Random(step)
    return [(f"s{step}-{j}", rnd.choice(CARDS), rnd.choice(["grocery", "atm", None]), rnd.choice(AMOUNTS),
             *(rnd.choice(COORDS) or (None, None)), T0 + timedelta(seconds=rnd.choice([0, 30, 59, 60, 61, 90, 120])))
            for j in range(12)]


@pytest.mark.parametrize("name", ["velocity", "first_use", "spike", "minutely", "flagged", "flagged_by_rule"])
def test_an_online_redeploy_applies_every_change_written_while_it_builds(deployed, monkeypatch, name):
    """Redeployed online, a model's new content is built beside the live one while a writer goes
    on: rows committed before the backfill's snapshot (captured, and in the backfill), after it
    (applied by a catch-up round) and just before the switch (applied under the lock). Each is
    applied exactly once: every model equals its full evaluation afterwards, whatever shape (a
    window group member, a first row per key, an aggregate over the source, a union of flag
    models and an aggregate over it, whose inputs also delete rows), and nothing of the online
    deploy is left behind."""
    from sentinel.ivm import online

    from sentinel.ivm import group, install

    monkeypatch.setattr(online, "ROUND_ROWS", 0)  # a round for any pending change
    reset(deployed.dsn)
    model, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == name)
    steps: list[str] = []
    made_under_lock: list[str] = []  # SQL made (models planned, group statements) once writers are held
    for owner, attr in ((install, "plan"), (group.Group, "statements")):
        def counted(*a, _made=getattr(owner, attr), _attr=attr, **k):
            if steps and steps[-1] == "switch":
                made_under_lock.append(_attr)
            return _made(*a, **k)

        monkeypatch.setattr(owner, attr, counted)

    def write(step: str) -> None:
        steps.append(step)
        with psycopg.connect(deployed.loader_dsn) as w:
            insert(w, _step_rows(len(steps)))

    with psycopg.connect(deployed.dsn) as conn:
        insert(conn, _step_rows(0))
        conn.commit()
        result = deploy_model(conn.cursor(), model=model, relation=rel, sql="/* online */\n" + sql, unique_key=key,
                              connect=lambda: psycopg.connect(deployed.dsn), on_step=write)
        conn.commit()
        assert steps[:4] == ["captured", "snapshot", "backfilled", "catch-up round 1"] and steps[-1] == "switch", steps
        assert result.online is not None and len(result.online.rounds) >= 2 and all(result.online.rounds), result.online
        # dbt's log line: the seconds from the switch's lock request to its end
        assert re.search(r"captured changes, the last under the lock \(\d+\.\d\d s: lock wait \d+\.\d\d, "
                         r"catch-up \d+\.\d\d, table \d+\.\d\d, triggers \d+\.\d\d\)$", result.message()), result.message()
        # the group triggers' SQL (with this model) and the catch-up's statements were made before the lock
        assert made_under_lock == [], made_under_lock
        assert mismatches(conn, deployed.dbname) == {}
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 12 * len(steps) + 12
        # the switch dropped the capture triggers; the tables go after its commit, not under its lock
        assert maintained.online_leftovers(conn)[0] == 0 and maintained.online_leftovers(conn)[1] > 0
        online.finish(result.online)
        assert maintained.online_leftovers(conn) == (0, 0)
        deploy_model(conn.cursor(), model=model, relation=rel, sql=sql, unique_key=key)  # as it was
        conn.commit()


def _switch_lock_seen(dsn: str, key: int, *, granted: bool, timeout_s: float = 10.0) -> int:
    """How many connections hold (`granted`) or wait for the switch lock (online.SWITCH_CLASS, key),
    polled until there is one or `timeout_s` has passed."""
    import time

    from sentinel.ivm import online

    with psycopg.connect(dsn, autocommit=True) as watch:
        deadline = time.monotonic() + timeout_s
        while True:
            n = watch.execute("select count(*) from pg_locks where locktype = 'advisory' and granted = %s "
                              "and classid = %s and objid = %s and objsubid = 2",
                              (granted, online.SWITCH_CLASS, key)).fetchone()[0]
            if n or time.monotonic() > deadline:
                return n
            time.sleep(0.05)


def test_online_deploys_at_once_take_turns_and_writers_go_on_between_them(deployed):
    """Two models redeployed online at once (as dbt `threads` > 1 does): the second waits, before
    capturing anything, until the first has switched, and meanwhile holds no lock a writer needs
    (before, their backfills shared the cores and their switches queued on the source's lock, so
    writers were held from one switch to the end of the other). Both come out right."""
    import time

    from sentinel.ivm import online

    reset(deployed.dsn)
    models = {m[0]: m for m in all_models(deployed.dbname)}
    first, second = models["velocity"], models["spike"]
    second_steps: list[str] = []
    errors: list[BaseException] = []
    seen: dict[str, object] = {}

    def deploy(m, on_step) -> None:
        name, rel, sql, key = m
        try:
            with psycopg.connect(deployed.dsn) as conn:
                res = deploy_model(conn.cursor(), model=name, relation=rel, sql="/* at once */\n" + sql,
                                   unique_key=key, connect=lambda: psycopg.connect(deployed.dsn), on_step=on_step)
                conn.commit()
                online.finish(res.online)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    other = threading.Thread(target=deploy, args=(second, second_steps.append))

    def first_step(step: str) -> None:
        if step != "backfilled" or other.is_alive():
            return
        other.start()  # while the first holds its turn, between its backfill and its switch
        seen["waiting"] = _switch_lock_seen(deployed.dsn, 1, granted=False)  # the second, waiting for its turn
        seen["steps"] = list(second_steps)
        with psycopg.connect(deployed.loader_dsn) as w:
            w.execute("set statement_timeout = '10s'")  # a held writer fails here instead of hanging
            t = time.perf_counter()
            insert(w, _step_rows(1))
            w.commit()
            seen["write_s"] = time.perf_counter() - t

    with psycopg.connect(deployed.dsn) as conn:
        insert(conn, _step_rows(0))
        conn.commit()
    deploy(first, first_step)
    other.join(timeout=120)
    assert not other.is_alive() and not errors, errors
    assert seen["waiting"] == 1 and seen["steps"] == [], seen
    assert seen["write_s"] < 5, seen
    assert second_steps[:2] == ["captured", "snapshot"] and second_steps[-1] == "switch", second_steps
    with psycopg.connect(deployed.dsn) as conn:
        assert mismatches(conn, deployed.dbname) == {}
        assert maintained.online_leftovers(conn) == (0, 0)
        for name, rel, sql, key in (first, second):
            deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key)  # as they were
        conn.commit()


def test_an_online_deploy_that_waited_for_another_switch_catches_up_again_before_its_own(deployed, monkeypatch):
    """Its backfill done, an online deploy waits for the switch lock while another switch has it
    (one computed under the lock, say), writers going on; once it has its turn it applies what they
    wrote in a round of its own before taking the locks that hold writers, not under them."""
    import time

    from sentinel.ivm import online

    monkeypatch.setattr(online, "ROUND_ROWS", 0)  # a round for any pending change
    reset(deployed.dsn)
    name, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "velocity")
    steps: list[str] = []
    errors: list[BaseException] = []
    results = []

    def deploy() -> None:
        try:
            with psycopg.connect(deployed.dsn) as conn:
                res = deploy_model(conn.cursor(), model=name, relation=rel, sql="/* waited */\n" + sql,
                                   unique_key=key, connect=lambda: psycopg.connect(deployed.dsn),
                                   on_step=steps.append)
                conn.commit()
                online.finish(res.online)
                results.append(res)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    with psycopg.connect(deployed.dsn) as other:
        online.switch_lock(other.cursor())  # another switch has its turn
        t = threading.Thread(target=deploy)
        t.start()
        assert _switch_lock_seen(deployed.dsn, 0, granted=False), f"the deploy never waited for the switch lock: {steps}"
        waited_at = len(steps)
        with psycopg.connect(deployed.loader_dsn) as w:  # not held: the waiting deploy locks nothing yet
            w.execute("set statement_timeout = '10s'")
            insert(w, _step_rows(1))
            w.commit()
        time.sleep(0.1)
        other.rollback()
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    assert steps[waited_at:] == [f"catch-up round {len(results[0].online.rounds) - 1}", "switch"], (waited_at, steps)
    assert results[0].online.rounds[-2] == 12  # the writer's rows, before the lock
    with psycopg.connect(deployed.dsn) as conn:
        assert mismatches(conn, deployed.dbname) == {}
        deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key)  # as it was
        conn.commit()


def test_a_deploy_from_a_transaction_that_wrote_to_the_source_does_not_deadlock_with_another_switch(deployed):
    """A transaction that has inserted into the source and then deploys, while another deploy's
    switch has its turn and is about to lock the source: the first goes on (it does not wait for
    the turn, which would wait for its own writes), the other then gets the source."""
    import time

    from sentinel.ivm import online

    reset(deployed.dsn)
    name, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "velocity")
    errors: list[BaseException] = []

    def wrote_then_deploys() -> None:
        try:
            with psycopg.connect(deployed.dsn) as conn:
                insert(conn, _step_rows(0))
                deploy_model(conn.cursor(), model=name, relation=rel, sql="/* wrote first */\n" + sql, unique_key=key)
                conn.commit()
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    with psycopg.connect(deployed.dsn) as other:
        online.switch_lock(other.cursor())  # another deploy's switch has its turn
        t = threading.Thread(target=wrote_then_deploys)
        t.start()
        time.sleep(1)
        other.execute("set lock_timeout = '60s'")
        other.execute("lock table fraud.transactions in share row exclusive mode")  # waits for the first's commit
        other.rollback()
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    with psycopg.connect(deployed.dsn) as conn:
        assert mismatches(conn, deployed.dbname) == {}
        deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key)  # as it was
        conn.commit()


def test_a_transaction_that_has_switched_a_model_deploys_its_next_one_under_the_lock(deployed):
    """A transaction that has switched one model holds what writers and other switches wait for
    until it commits. Its next deploy is not made online: that would wait, on a connection
    PostgreSQL cannot see waiting for this transaction, for its turn behind an online deploy that
    waits for this transaction (here, for the source's lock): neither would ever go on."""
    from sentinel.ivm import online

    reset(deployed.dsn)
    models = {m[0]: m for m in all_models(deployed.dbname)}
    errors: list[BaseException] = []

    def deploy(conn, m, tag):
        name, rel, sql, key = m
        return deploy_model(conn.cursor(), model=name, relation=rel, sql=f"/* {tag} */\n" + sql, unique_key=key,
                            connect=lambda: psycopg.connect(deployed.dsn))

    def other_online() -> None:
        try:
            with psycopg.connect(deployed.dsn) as conn:
                res = deploy(conn, models["spike"], "the other")
                conn.commit()
                online.finish(res.online)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    with psycopg.connect(deployed.dsn) as conn:
        first = deploy(conn, models["velocity"], "first")  # switched: the source locked to the commit
        assert first.online is not None
        t = threading.Thread(target=other_online)
        t.start()
        assert _switch_lock_seen(deployed.dsn, 1, granted=True)  # the other has its turn, and waits for us
        conn.execute("set statement_timeout = '60s'")
        second = deploy(conn, models["flagged_by_rule"], "second")
        assert second.online is None
        conn.commit()
        online.finish(first.online)
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    with psycopg.connect(deployed.dsn) as conn:
        assert mismatches(conn, deployed.dbname) == {}
        assert maintained.online_leftovers(conn) == (0, 0)
        for name in ("velocity", "spike", "flagged_by_rule"):
            _n, rel, sql, key = models[name]
            deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key)  # as they were
        conn.commit()


def _assert_clean_and_maintained(conn: psycopg.Connection, dbname: str) -> None:
    """No capture trigger or table of an online deploy is left, and the models follow new rows."""
    assert maintained.online_leftovers(conn) == (0, 0)
    insert(conn, _step_rows(99))
    conn.commit()
    assert mismatches(conn, dbname) == {}


@pytest.mark.parametrize("fault", ["backfill", "switch"])
def test_a_failed_online_redeploy_leaves_the_model_and_no_capture_behind(deployed, monkeypatch, fault):
    """An online deploy that fails while it builds (here: its unique_key is not an output column,
    a clear error) or at the switch (a fault injected as the new triggers go in) removes its
    capture triggers and tables (at the switch, after rolling its transaction back, on another
    connection); the model stays as it was, maintained."""
    from sentinel.ivm import install

    reset(deployed.dsn)
    model, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "high_value")
    if fault == "switch":
        def broken(*_a, **_k):
            raise RuntimeError("injected fault")

        monkeypatch.setattr(install, "_install_triggers", broken)
    with psycopg.connect(deployed.dsn) as conn:
        insert(conn, _step_rows(0))
        conn.commit()
        with pytest.raises(IvmUnsupported if fault == "backfill" else RuntimeError,
                           match="unique_key column 'nope'" if fault == "backfill" else "injected"):
            deploy_model(conn.cursor(), model=model, relation=rel, sql="/* failing */\n" + sql,
                         unique_key=["nope"] if fault == "backfill" else key,
                         connect=lambda: psycopg.connect(deployed.dsn))
        conn.rollback()
        _assert_clean_and_maintained(conn, deployed.dbname)


def test_a_catch_up_round_reads_only_the_captured_changes_it_applies(deployed):
    """A round reads the capture table by its xid index from its snapshot's oldest transaction on,
    not the changes earlier rounds applied (a redeploy at 10.4M rows of history captures ~1.3M
    changes, which each round, and the switch under the lock, had scanned whole)."""
    from sentinel.ivm import online
    from sentinel.ivm.planner import plan

    reset(deployed.dsn)
    model, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "velocity")
    st = online.backfill(lambda: psycopg.connect(deployed.dsn), plan(sql, model=model, relation=rel, unique_key=key),
                         sql=sql, model=model, unique_key=key)
    (_input, cap), = st.caps
    try:
        cur = st.conn.cursor()
        with psycopg.connect(deployed.loader_dsn) as w:
            w.execute("insert into fraud.transactions (txn_id, card_id, merchant_id, amount, event_time) "
                      "select 'bulk-' || i, 'c' || (i %% 50), 'm1', 5, %s + i * interval '1 second' "
                      "from generate_series(1, 5000) as i", (T0,))
        read = []
        for step in (1, 2):
            with psycopg.connect(deployed.loader_dsn) as w:
                insert(w, _step_rows(step))
            assert online.pending(cur, st) == (5012 if step == 1 else 12)
            cur.execute("begin isolation level repeatable read")
            cur.execute("select pg_current_snapshot()::text")
            nxt = cur.fetchone()[0]
            # the session's scans of the capture table not yet reported (they grow within a transaction)
            scans = "select seq_scan, idx_tup_fetch from pg_stat_xact_user_tables where relid = %s::regclass"
            before = cur.execute(scans, (cap,)).fetchone()
            assert online.catch_up(cur, st) == (5012 if step == 1 else 12)
            after = cur.execute(scans, (cap,)).fetchone()
            read.append((after[0] - before[0], after[1] - before[1]))
            cur.execute("commit")
            st.snapshot = nxt
        # the second round: no pass over the table, and its 12 changes fetched once for each of its
        # two reads (deletes, inserts)
        assert read[1] == (0, 24), read
    finally:
        online.abandon(st)
    with psycopg.connect(deployed.dsn) as conn:
        assert maintained.online_leftovers(conn) == (0, 0)


@pytest.mark.parametrize("then", ["unchanged", "online"])
@pytest.mark.parametrize("end", ["killed", "not finished", "rolled back"])
def test_what_an_unfinished_online_deploy_leaves_goes_with_the_next_deploy_of_its_model(deployed, end, then):
    """A deploy killed between its backfill and its switch leaves capture triggers that would
    copy every write forever; one whose caller committed without `finish`, its tables; one whose
    caller rolled the switch back has its triggers back, which `finish` drops with the tables.
    The next `dbt run` finds what is left with no deploy holding the model's deploy lock, and
    drops it: the model unchanged (nothing else to do), or changed and built online (cleaned
    apart from its transaction, whose locks its backfill would wait for)."""
    from sentinel.ivm import online
    from sentinel.ivm.planner import plan

    reset(deployed.dsn)
    model, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "velocity")
    connect = lambda: psycopg.connect(deployed.dsn)  # noqa: E731
    with psycopg.connect(deployed.dsn) as conn:
        if end == "killed":
            st = online.backfill(connect, plan(sql, model=model, relation=rel, unique_key=key),
                                 sql=sql, model=model, unique_key=key)
            st.conn.close()  # no switch
        else:
            res = deploy_model(conn.cursor(), model=model, relation=rel, sql="/* again */\n" + sql, unique_key=key,
                               connect=connect)
            if end == "rolled back":
                conn.rollback()
                online.finish(res.online)
            else:
                conn.commit()
        triggers, tables = maintained.online_leftovers(conn)
        # a rolled-back switch's `finish` drops its capture (triggers back with the rollback) as well
        assert (triggers > 0, tables > 0) == {"killed": (True, True), "not finished": (False, True),
                                               "rolled back": (False, False)}[end]
        deployed_sql = "/* again */\n" + sql if end == "not finished" else sql
        if then == "unchanged":
            assert deploy_model(conn.cursor(), model=model, relation=rel, sql=deployed_sql, unique_key=key).action == "unchanged"
            conn.commit()
        else:
            res = deploy_model(conn.cursor(), model=model, relation=rel, sql="/* next */\n" + sql, unique_key=key,
                               connect=connect)
            conn.commit()
            assert res.action == "diffed" and res.online is not None, res
            online.finish(res.online)
        _assert_clean_and_maintained(conn, deployed.dbname)
        deploy_model(conn.cursor(), model=model, relation=rel, sql=sql, unique_key=key)  # as it was
        conn.commit()


def test_finish_leaves_the_tables_a_session_still_reads_to_the_next_deploy(deployed, monkeypatch):
    """A session reading the staging table when the deploy finishes (an analyst's open transaction,
    say) keeps `finish` from dropping it: after a short wait it gives up without failing the
    committed deploy, and the next deploy of the model drops what is left."""
    from sentinel.ivm import online

    monkeypatch.setattr(online, "FINISH_LOCK_TIMEOUT", "200ms")
    reset(deployed.dsn)
    model, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "velocity")
    with psycopg.connect(deployed.dsn) as conn, psycopg.connect(deployed.dsn) as reader:
        res = deploy_model(conn.cursor(), model=model, relation=rel, sql="/* read */\n" + sql, unique_key=key,
                           connect=lambda: psycopg.connect(deployed.dsn))
        conn.commit()
        reader.execute(f"select from {res.online.stage} limit 0")  # its transaction stays open
        online.finish(res.online)
        assert maintained.online_leftovers(conn) == (0, 3)  # the capture, the staging table, its watermarks
        reader.rollback()
        assert deploy_model(conn.cursor(), model=model, relation=rel, sql="/* read */\n" + sql,
                            unique_key=key).action == "unchanged"
        conn.commit()
        _assert_clean_and_maintained(conn, deployed.dbname)
        deploy_model(conn.cursor(), model=model, relation=rel, sql=sql, unique_key=key)  # as it was
        conn.commit()


def test_redeploy_drops_the_per_model_watermarks_of_earlier_builds(deployed):
    """Builds before plan version 13 kept a watermark table per window model; a model redeployed
    by this build (its fingerprint changed with the plan version) leaves none behind."""
    from sentinel.ivm.install import _legacy_watermark

    name, rel, sql, key = next(m for m in all_models(deployed.dbname) if m[0] == "third_big")
    legacy = _legacy_watermark(rel)
    with psycopg.connect(deployed.dsn) as conn:
        conn.execute(f"create table {legacy} (bucket int primary key, high timestamptz)")
        deploy_model(conn.cursor(), model=name, relation=rel, sql=sql, unique_key=key, force=True)
        assert conn.execute("select to_regclass(%s)", (legacy,)).fetchone()[0] is None


def test_window_group_members_share_one_sort_when_the_collation_is_bytewise(deployed):
    """The group's members read one sorted input: on a bytewise default collation their windows
    (partition by card_id order by event_time[, txn_id collate "C"]) sort nothing of their own; on
    another collation the tie-break is theirs to sort."""
    from sentinel.ivm.install import _bytewise_default

    with psycopg.connect(deployed.dsn) as conn:
        bytewise = _bytewise_default(conn.cursor())
        fast = maintained.group_fast_statement(conn)
        conn.execute("create temp table __ivm_new as select * from fraud.transactions limit 0")
        plan = conn.execute(f"explain (format json) {fast}").fetchone()[0][0]["Plan"]
        conn.rollback()
    # sorts right under a window partitioned by card_id alone; a first-row member's (its new rows
    # only, `__ivm_n`) is its own
    own_sorts = []

    def walk(node: dict) -> None:
        for child in node.get("Plans", []):
            if node["Node Type"] == "WindowAgg" and "Sort" in child["Node Type"]:
                keys = child.get("Sort Key", [])
                if (keys and keys[0].endswith("card_id") and not keys[0].startswith("__ivm_n_")
                        and not any("merchant" in k for k in keys[1:])):
                    own_sorts.append(keys)
            walk(child)

    walk(plan)
    assert (own_sorts == []) == bytewise, own_sorts


def test_an_earlier_builds_plain_lookup_index_beside_a_unique_one_goes_at_the_next_deploy(deployed):
    """Earlier builds made the model's lookup index plain even where a dbt config asked for a unique
    index on the same columns, so their tables kept two to maintain on every write. The next deploy
    drops the plain one, whether the model changed (a diff) or not, and so beside any other index
    that leads with its columns; a unique one of ours (the configured one) stays, and so does a lone
    one. An unchanged deploy with nothing to change runs no DDL: it does not wait for a writer."""
    from sentinel.ivm.install import _short, btree_indexes
    from tests.fixtures.ivm_models import MODELS

    rel, sql, key = MODELS["high_value"]
    sql = sql.format(db=deployed.dbname)
    mine = _short(rel, "loc")
    unique_cfg = [{"columns": ["txn_id"], "unique": True}]
    with psycopg.connect(deployed.dsn) as conn:
        cur = conn.cursor()

        def indexes() -> list[tuple[str, bool, list[str]]]:
            return [i for i in btree_indexes(cur, rel) if i[2][:1] == ["txn_id"]]

        def ours(unique: bool, other: str) -> None:
            cur.execute(f"drop index if exists ivm_test.{mine}")
            cur.execute(f"create {'unique ' if unique else ''}index {mine} on {rel} (txn_id)")
            cur.execute(other)

        def deploy(model_sql: str) -> str:
            return deploy_model(cur, model="high_value", relation=rel, sql=model_sql, unique_key=key,
                                indexes=unique_cfg).action

        dbt_key = f"create unique index if not exists high_value_dbt_key on {rel} (txn_id)"
        ours(False, dbt_key)  # as an earlier build left it
        assert len(indexes()) == 2
        assert deploy(sql) == "unchanged"
        assert indexes() == [("high_value_dbt_key", True, ["txn_id"])]
        ours(False, dbt_key)
        changed = sql + "\n-- a comment: the same content, deployed again"
        assert deploy(changed) == "diffed"
        assert indexes() == [("high_value_dbt_key", True, ["txn_id"])]
        cur.execute("drop index ivm_test.high_value_dbt_key")
        # beside a longer plain index that leads with its columns, a plain one of ours goes too ...
        ours(False, f"create index high_value_wide on {rel} (txn_id, amount)")
        deploy(sql)
        assert indexes() == [("high_value_wide", False, ["txn_id", "amount"])]
        # ... but a unique one of ours stays: it enforces what the config asks
        ours(True, "select 1")
        deploy(changed)
        assert sorted(indexes()) == [("high_value_wide", False, ["txn_id", "amount"]), (mine, True, ["txn_id"])]
        # alone, a plain one of ours stays
        cur.execute("drop index ivm_test.high_value_wide")
        ours(False, "select 1")
        deploy(sql)
        assert indexes() == [(mine, False, ["txn_id"])]
        conn.commit()
        # nothing to change: an unchanged deploy does not wait for a writer holding the table
        with psycopg.connect(deployed.dsn) as writer:
            writer.execute(f"lock table {rel} in row exclusive mode")
            cur.execute("set local lock_timeout = '2s'")
            assert deploy(sql) == "unchanged"
            conn.rollback()
