"""The project's real dbt models under the `materialized_view` materialization: deployed once per module
with `dbt run`, then the defining property (every model equals a full evaluation of its SQL after
every batch), redeploy under load, and unsupported shapes failing `dbt run`."""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.deploy import PROJECT_DIR, DbtFailed, run_dbt
from tests.fixtures import maintained

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def dbt(dsn: str, tmp: Path, *args: str, vars: dict | None = None, project: Path | None = None) -> None:
    run_dbt(list(args), dsn=dsn, vars=vars, project_dir=project, target_path=tmp / "target", log_path=tmp / "logs")


@pytest.fixture(scope="module")
def deployed(module_db, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dbt")
    dbt(module_db.dsn, tmp, "run")
    return module_db, tmp


def models(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("select relation, sql from sentinel_ivm.models order by relation").fetchall()


def reset(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        relations = [r for r, _ in models(conn)]
    maintained.reset(dsn, relations)


def mismatches(conn: psycopg.Connection) -> dict[str, int]:
    return maintained.mismatches(conn, models(conn))


COLS = "txn_id, card_id, customer_id, merchant_id, merchant_category, amount, currency, channel, country, " \
       "lat, lon, device_id, event_time"
PLACES = [None, ("US", 0.0, 179.9), ("FJ", 0.0, -179.9), ("FR", 48.85, 2.35), ("US", 40.71, -74.0),
          ("FR", 48.86, 2.36), ("DE", None, None)]
AMOUNTS = ["1.00", "5.00", "5.01", "40.00", "499.99", "500.00", "2000.00", "2000.01", "9000.00"]

txn = st.tuples(
    st.sampled_from(["c1", "c2", "c3"]),
    st.sampled_from([0, 1, 15, 30, 59, 60, 61, 90, 120, 300, 600, 601, 1800, 3600, 3601, 5400, 7200]),
    st.sampled_from(PLACES),
    st.sampled_from(AMOUNTS),
    st.sampled_from([None, "d1", "d2"]),
    st.sampled_from(["grocery", "electronics", None]),
)


def rows_of(stream: list[tuple]) -> list[tuple]:
    out = []
    for i, (card, sec, place, amount, device, cat) in enumerate(stream):
        country, lat, lon = place if place else (None, None, None)
        out.append((f"t{i % 37:02d}", card, "u" + card, "m1", cat, amount, "USD", "pos", country, lat, lon,
                    device, T0 + timedelta(seconds=sec)))
    return out


def insert(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"insert into fraud.transactions ({COLS}) values ({', '.join(['%s'] * 13)}) "
                        "on conflict do nothing", rows)


@settings(max_examples=int(os.environ.get("SENTINEL_IVM_EXAMPLES", "20")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=st.lists(txn, min_size=1, max_size=45), data=st.data())
def test_every_project_model_equals_full_evaluation(deployed, stream, data):
    db, _ = deployed
    reset(db.dsn)
    rows = rows_of(stream)
    rows = maintained.arrival_order(data, rows, when=12)
    with psycopg.connect(db.dsn) as conn:
        i = 0
        while i < len(rows):
            size = data.draw(st.integers(1, 10))
            insert(conn, rows[i:i + size])
            conn.commit()
            assert mismatches(conn) == {}
            i += size


def test_unchanged_redeploy_is_cheap_and_changes_nothing(deployed):
    db, tmp = deployed
    reset(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        insert(conn, rows_of([("c1", s, None, "2500.00", None, None) for s in (0, 1, 2, 3)]))
        before = conn.execute("select relation, installed_at from sentinel_ivm.models order by 1").fetchall()
    dbt(db.dsn, tmp, "run")
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("select relation, installed_at from sentinel_ivm.models order by 1").fetchall() == before
        assert mismatches(conn) == {}


@pytest.mark.parametrize("threads, more", [(1, {}), (4, {"velocity_min_txns": 3, "card_testing_min_txns": 4})])
def test_redeploy_with_changed_var_under_concurrent_load(deployed, threads, more):
    """A thread keeps inserting while `dbt run --vars` changes a threshold (with dbt threads, three
    models' at once, which take turns): nothing lost, nothing doubled."""
    db, tmp = deployed
    reset(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        has_log = conn.execute("select to_regclass('sentinel_alerts.change_log') is not null").fetchone()[0]
        seq0 = conn.execute("select coalesce(max(seq), 0) from sentinel_alerts.change_log").fetchone()[0] if has_log else 0
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def writer() -> None:
        try:
            with psycopg.connect(db.loader_dsn) as conn:
                b = 0
                while not stop.is_set():
                    insert(conn, [(f"w{b}-{j}", f"c{j % 5}", None, "m1", "atm", f"{1500 + (b * 37 + j) % 1000}.00",
                                   "USD", "atm", "US", None, None, None, T0 + timedelta(seconds=b * 3 + j))
                                  for j in range(20)])
                    conn.commit()
                    written[0] += 20
                    b += 1
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        dbt(db.dsn, tmp, "run", "--threads", str(threads), vars={"high_value_min_amount": 2300, **more})
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    try:
        with psycopg.connect(db.dsn) as conn:
            n = conn.execute("select count(*) from fraud.transactions").fetchone()[0]
            assert n == written[0], conn.execute("select left(txn_id, 2), count(*) from fraud.transactions group by 1").fetchall()
            assert mismatches(conn) == {}
            # the online deploys left no capture trigger, and their tables went after each model's commit
            assert maintained.online_leftovers(conn) == (0, 0)
            hv = conn.execute("select count(*) from fraud.flagged_transactions where rule = 'high_value'").fetchone()[0]
            assert hv == conn.execute("select count(*) from fraud.transactions where amount > 2300").fetchone()[0], (
                conn.execute("select f.txn_id, f.amount, f.reason from fraud.flagged_transactions f "
                             "where rule = 'high_value' and amount <= 2300 limit 3").fetchall(),
                conn.execute("select count(*) from fraud_intermediate.int_flags__high_value where amount <= 2300").fetchall(),
                conn.execute("select substr(sql, position('2300' in sql) - 40, 80) from sentinel_ivm.models "
                             "where relation like '%high_value'").fetchall())
            if has_log:
                # since the (empty) start, the change log nets out to exactly the current flagged rows
                net = conn.execute(
                    "select count(*) from (select alert_id, sum(case op when '+' then 1 else -1 end) as n "
                    "from sentinel_alerts.change_log where seq > %s group by 1) x where n = 1", (seq0,)).fetchone()[0]
                bad = conn.execute(
                    "select count(*) from (select alert_id, sum(case op when '+' then 1 else -1 end) as n "
                    "from sentinel_alerts.change_log where seq > %s group by 1) x where n not in (0, 1)",
                    (seq0,)).fetchone()[0]
                assert bad == 0
                assert net == conn.execute("select count(*) from fraud.flagged_transactions").fetchone()[0]
    finally:
        dbt(db.dsn, tmp, "run")  # back to the defaults for the module's other tests


def test_unsupported_model_fails_dbt_run_naming_model_and_construct(deployed, tmp_path):
    db, _ = deployed
    project = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    (project / "models" / "marts" / "bad_average.sql").write_text(
        "select card_id, avg(amount) as average_amount\nfrom {{ ref('stg_transactions') }}\ngroup by card_id\n")
    with pytest.raises(DbtFailed, match=r"bad_average.*(?i:avg)"):
        dbt(db.dsn, tmp_path, "run", "-s", "bad_average", project=project)


def test_window_group_reads_of_the_source_are_index_only(deployed):
    """Every read the rules' window group makes of the cards' earlier rows, the shared one and each
    member's exact one, takes only the columns the windows read: on the rules' source, whose
    per-card index carries them, each is an index-only scan (no heap row fetched once the
    visibility map has the pages)."""
    db, _tmp = deployed
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("vacuum analyze fraud.transactions")
    with psycopg.connect(db.dsn) as conn:
        fast = maintained.group_fast_statement(conn)
        conn.execute("create temp table __ivm_new as select * from fraud.transactions limit 0")
        conn.execute("set enable_seqscan = off")
        conn.execute("set enable_bitmapscan = off")
        plan = conn.execute(f"explain (format json) {fast}").fetchone()[0][0]["Plan"]
        conn.rollback()
    scans = []

    def walk(node: dict) -> None:
        if node.get("Relation Name") == "transactions":
            scans.append((node["Node Type"], node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    # the shared read and an exact read for each window member but the first-row one
    assert len(scans) >= 6, scans
    assert set(scans) == {("Index Only Scan", "transactions_card_time_idx")}, scans


def test_an_aggregates_recompute_on_deletes_reads_the_touched_groups_not_the_whole_input(deployed):
    """Deletes reaching `flagged_minutely` (a late row that moves a flag) recompute the groups they
    touch: the model's rows found through its group-key index, one lookup a group, and the input's
    rows through its `event_time` index, one range per touched minute; neither reads a whole
    table. (Planned with sequential scans disabled: the old null-safe match could only be served
    by scanning both tables.)"""
    db, _tmp = deployed
    with psycopg.connect(db.dsn) as conn:
        src = "\n".join(r[0] for r in conn.execute(
            "select p.prosrc from pg_trigger t join pg_proc p on p.oid = t.tgfoid "
            "where t.tgrelid = 'fraud.flagged_transactions'::regclass and not t.tgisinternal"))
        stmts = [x for _, x in re.findall(r"execute (\$q\d*\$)(.*?)\1", src, re.S)
                 if re.search(r'(delete from|insert into) "fraud"\."flagged_minutely"', x) and "__ivm_old" in x]
        for t in ("__ivm_old", "__ivm_new"):  # an update's statements read both
            conn.execute(f"create temp table {t} as select * from fraud.flagged_transactions limit 0")
        conn.execute("set enable_seqscan = off")
        plans = ["\n".join(r[0] for r in conn.execute(f"explain {x}")) for x in stmts]
        conn.rollback()
    kinds = [p.split()[0] for p in plans]
    assert kinds.count("Delete") == kinds.count("Insert") >= 1 and set(kinds) == {"Delete", "Insert"}, plans
    for plan in plans:
        assert not re.search(r"Seq Scan on (flagged_minutely|flagged_transactions)\b", plan), plan
        if plan.startswith("Insert"):
            assert re.search(r"Index (Only )?Scan using \S+ on flagged_transactions", plan), plan


def test_general_path_reads_grow_with_the_late_keys_not_the_batch_or_history(deployed):
    """A batch with late rows sends their keys down each member's general path. Finding those keys
    is one hashed set over the new rows (not a scan of the new rows per key: quadratic in the
    batch), their rows copied once for all members, each of which groups only that copy (not the
    whole batch again); each key's row-count bound is one backward index scan of its last rows (not a
    bitmap of its whole history, then sorted), and its lookahead one forward scan of its next rows;
    the null-safe read for a null key is gated off for the others."""
    db, _tmp = deployed
    with psycopg.connect(db.dsn) as conn:
        stmts = maintained.group_statements(conn)
        conn.execute("create temp table __ivm_new as select * from fraud.transactions limit 0")
        for s in stmts:
            if s.startswith("create temp table"):
                conn.execute(s)
        slow = [s for s in stmts if s.startswith('insert into pg_temp."__ivm_s_')]
        keys = [s for s in stmts if re.match(r'(with .*)?insert into pg_temp."__ivm_k_', s, re.S)]
        fills = [s for s in stmts if s.startswith("with") and 'insert into pg_temp."__ivm_f_' in s]
        conn.execute("set enable_seqscan = off")
        slow_plans = ["\n".join(r[0] for r in conn.execute(f"explain {s}")) for s in slow]
        key_plans = ["\n".join(r[0] for r in conn.execute(f"explain {s}")) for s in keys]
        key_trees = [conn.execute(f"explain (format json) {s}").fetchone()[0][0]["Plan"] for s in keys]
        fill_plans = [conn.execute(f"explain (format json) {s}").fetchone()[0][0]["Plan"] for s in fills]
        conn.rollback()
    assert len(slow) == 1 and len(keys) == len(fills) >= 5
    for plan in slow_plans:
        assert "hashed SubPlan" in plan and not re.search(r"(?<!hashed )SubPlan \d+\)", plan), plan
    for plan in key_plans:
        assert "__ivm_s_" in plan and "__ivm_new" not in plan, plan
    limits = []

    def nodes(node: dict):
        yield node
        for c in node.get("Plans", []):
            yield from nodes(c)

    def walk(node: dict) -> None:
        # a limit over a read gated on a null key ("One-Time Filter: (... IS NULL)") is the null-safe one
        if node["Node Type"] == "Limit" and not any("IS NULL" in n.get("One-Time Filter", "") for n in nodes(node)):
            child = node["Plans"][0]
            limits.append((child["Node Type"], child.get("Relation Name"), child.get("Scan Direction")))
        for c in node.get("Plans", []):
            walk(c)

    for plan in fill_plans:
        walk(plan)
    bounded = [x for x in limits if x[1] == "transactions" or x[0] in ("Sort", "Result")]
    assert bounded, limits  # amount_spike and impossible_travel have row-count lookbacks
    assert {x[0] for x in bounded} <= {"Index Only Scan", "Index Scan"} and {x[2] for x in bounded} == {"Backward"}, limits
    # their lookahead (where a late row's influence ends) is one forward index scan of the next rows
    limits.clear()
    for plan in key_trees:
        walk(plan)
    ahead = [x for x in limits if x[1] == "transactions" or x[0] in ("Sort", "Result")]
    assert len(ahead) >= 2, limits
    assert {x[0] for x in ahead} <= {"Index Only Scan", "Index Scan"} and {x[2] for x in ahead} == {"Forward"}, limits
