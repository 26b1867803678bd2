"""The dbt project as a detection engineer uses it: its shape and defaults, then `dbt run` and
`dbt test` against a real PostgreSQL with the committed profile."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from tests.fixtures.maintained import differing_rows
from tests.fixtures.models import (
    INTERMEDIATE, MARTS, PROJECT, RULES, libpq_env, run_dbt,
)

CONTRACT_RULES = [
    "high_value", "velocity", "impossible_travel", "card_testing", "account_takeover",
    "amount_spike", "cross_border",
]


def documented_models() -> dict[str, dict]:
    docs = {}
    for path in (PROJECT / "models").rglob("_*__models.yml"):
        for model in yaml.safe_load(path.read_text())["models"]:
            docs[model["name"]] = model
    return docs


def test_project_defaults_are_designs():
    project = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())
    v = project["vars"]
    assert Decimal(str(v["high_value_min_amount"])) == Decimal("2000.00")
    assert (v["velocity_window_seconds"], v["velocity_min_txns"]) == (60, 4)
    assert (v["impossible_travel_min_km"], v["impossible_travel_max_kmh"]) == (100, 900)
    models = project["models"]["sentinel"]
    assert models["staging"]["+materialized"] == "ephemeral"
    for folder in ("intermediate", "marts"):
        assert "materialized_view" in models[folder]["+materialized"]
    assert models["intermediate"]["+schema"] == "intermediate"


def test_profiles_follow_the_agreed_targets():
    outputs = yaml.safe_load((PROJECT / "profiles.yml").read_text())["sentinel"]
    assert outputs["target"] == "postgres"
    pg, rw, mz = (outputs["outputs"][t] for t in ("postgres", "risingwave", "materialize"))
    assert pg["type"] == "sentinel" and pg["schema"] == "fraud" and pg["threads"] == 1
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                     ("password", "PGPASSWORD"), ("dbname", "PGDATABASE")):
        assert var in str(pg[key])
    assert "54329" in pg["port"] and "as_number" in pg["port"]
    assert rw["type"] == "risingwave" and "4566" in rw["port"] and "dev" in rw["dbname"]
    assert mz["type"] == "materialize" and "6875" in mz["port"] and "quickstart" in mz["cluster"]


def test_every_model_is_documented_and_every_rule_has_a_model():
    sql_models = {p.stem for p in (PROJECT / "models").rglob("*.sql")}
    docs = documented_models()
    assert sql_models == set(docs)
    for name, model in docs.items():
        assert model.get("description"), name
    assert RULES == CONTRACT_RULES
    assert {p.stem for p in (PROJECT / "models" / "intermediate").glob("*.sql")} == set(INTERMEDIATE)
    assert {p.stem for p in (PROJECT / "models" / "marts").glob("*.sql")} == set(MARTS)
    rule_tests = [
        test["accepted_values"]["arguments"]["values"]
        for col in docs["flagged_transactions"]["columns"] if col["name"] == "rule"
        for test in col["data_tests"] if isinstance(test, dict) and "accepted_values" in test
    ]
    assert rule_tests == [CONTRACT_RULES]


def test_thresholds_are_vars_not_literals():
    """A rule's numbers come from vars: no bare threshold literal in the rule models."""
    for name in INTERMEDIATE:
        sql = (PROJECT / "models" / "intermediate" / f"{name}.sql").read_text()
        code = re.sub(r"--[^\n]*", "", sql)
        for literal in ("2000", "900", "60 seconds", "6371"):
            assert literal not in code, (name, literal)


def _rows(count_from: int, t0: datetime) -> list[tuple]:
    """A few transactions that trip every rule once, on cards of their own."""
    rows = []
    n = count_from

    def add(card, amount, seconds, **extra):
        nonlocal n
        n += 1
        rows.append((
            f"dbt-{n:05d}", card, "m-1", extra.get("category", "grocery"), Decimal(amount),
            extra.get("country", "US"), extra.get("lat"), extra.get("lon"), extra.get("device"),
            t0 + timedelta(seconds=seconds),
        ))

    add("c-high", "2500.00", 0)
    for s in (0, 10, 20, 30):
        add("c-velocity", "12.00", s)
    add("c-travel", "30.00", 0, lat=40.7128, lon=-74.0060)
    add("c-travel", "30.00", 3600, lat=51.5074, lon=-0.1278, country="GB")
    for s in range(5):
        add("c-testing", "1.00", s * 30)
    for s in range(3):
        add("c-takeover", "40.00", s * 600, device="dev-1")
    add("c-takeover", "900.00", 2000, device="dev-2")
    for s in range(5):
        add("c-spike", "20.00", s * 600)
    add("c-spike", "400.00", 3100)
    for s, country in enumerate(("US", "CA", "GB")):
        add("c-border", "15.00", s * 600, country=country)
    return rows


def _late_rows(t0: datetime) -> list[tuple]:
    """Late and out-of-order events on the cards of _rows, plus a fresh batch."""
    return [
        # velocity: a late 5th transaction inside c-velocity's minute
        ("late-v", "c-velocity", "m-2", "grocery", Decimal("9.00"), "US", None, None, None,
         t0 + timedelta(seconds=5)),
        # impossible travel: a late London purchase moves the flag from 3600 s to 1800 s
        ("late-t", "c-travel", "m-3", "travel", Decimal("50.00"), "GB", 51.5080, -0.1280, None,
         t0 + timedelta(seconds=1800)),
        # account takeover: a late, earlier use of dev-2 means dev-2 was not new at 2000 s
        ("late-a", "c-takeover", "m-4", "grocery", Decimal("3.00"), "US", None, None, "dev-2",
         t0 + timedelta(seconds=100)),
        # cross border: a late change between the others
        ("late-c", "c-border", "m-5", "travel", Decimal("20.00"), "MX", None, None, None,
         t0 + timedelta(seconds=300)),
    ]


def assert_models_equal_their_sql(dsn: str, work: Path) -> None:
    """Every maintained model's table holds exactly what its compiled SQL gives now."""
    compiled = {p.stem: p.read_text() for p in (work / "target" / "compiled").rglob("*.sql")}
    with psycopg.connect(dsn) as conn:
        for name in INTERMEDIATE + MARTS:
            schema = "fraud_intermediate" if name in INTERMEDIATE else "fraud"
            table = f"{schema}.{name}"
            differ = differing_rows(conn, table, compiled[name])
            assert differ == 0, f"{table} differs from its SQL in {differ} rows"


def _insert(dsn: str, rows: list[tuple]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into fraud.transactions (txn_id, card_id, merchant_id, merchant_category, amount, "
            "country, lat, lon, device_id, event_time) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def test_dbt_run_and_dbt_test_pass_on_postgres(db, tmp_path):
    """`dbt run` deploys every model with the committed profile, every rule fires on the history,
    each maintained table equals its SQL before and after late rows, and `dbt test` passes."""
    env = libpq_env(db.dsn)
    t0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
    _insert(db.dsn, _rows(0, t0))
    run_dbt("run", work=tmp_path, env=env)  # the committed profile: adapter `sentinel`
    assert_models_equal_their_sql(db.dsn, tmp_path)
    with psycopg.connect(db.dsn) as conn:
        backfilled = {r for (r,) in conn.execute("select distinct rule from fraud.flagged_transactions")}
    assert backfilled == set(CONTRACT_RULES)
    # Rows that arrive after the deploy, some late, change the flags in their own transaction.
    _insert(db.dsn, [(f"late-{i}", "c-late", "m-1", "grocery", Decimal("3000.00"), "US",
                      None, None, None, t0) for i in range(2)])
    _insert(db.dsn, _late_rows(t0))
    assert_models_equal_their_sql(db.dsn, tmp_path)
    run_dbt("test", work=tmp_path, env=env)
    with psycopg.connect(db.dsn) as conn:
        fired = dict(conn.execute(
            "select rule, count(*) from fraud.flagged_transactions group by rule").fetchall())
        indexes = [d for (d,) in conn.execute(
            "select indexdef from pg_indexes where schemaname = 'fraud' and tablename = 'flagged_transactions'")]
        relkinds = dict(conn.execute(
            "select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('fraud', 'fraud_intermediate') and c.relkind in ('r', 'v', 'm')").fetchall())
    # The late events added (velocity), moved (impossible_travel) and removed (account_takeover) flags.
    assert set(fired) == set(CONTRACT_RULES) - {"account_takeover"}, fired
    assert (fired["high_value"], fired["velocity"], fired["impossible_travel"]) == (3, 2, 1)
    with psycopg.connect(db.dsn) as conn:
        (travel,) = conn.execute(
            "select txn_id from fraud.flagged_transactions where rule = 'impossible_travel'").fetchone()
    assert travel == "late-t"
    # one index on the key: the configured unique one, which also serves the materialization's matches
    assert [d for d in indexes if "(txn_id, rule)" in d] == [d for d in indexes if "UNIQUE" in d and "(txn_id, rule)" in d]
    assert len([d for d in indexes if "(txn_id, rule)" in d]) == 1, indexes
    with psycopg.connect(db.dsn) as conn:
        on_card = [d for (d,) in conn.execute(
            "select indexdef from pg_indexes where schemaname = 'fraud' and tablename = 'card_activity'")]
    # the materialization's unique key serves the configured one: no second copy to maintain
    assert len(on_card) == 1 and "UNIQUE" in on_card[0] and "(card_id)" in on_card[0], on_card
    for name in INTERMEDIATE + MARTS:
        assert relkinds.get(name) == "r", (name, relkinds.get(name))  # a table, never a view
