"""The same models compile for RisingWave and Materialize, and every compiled statement parses in
that dialect (sqlglot). No server runs here: the compile uses no connection at all
(`--no-populate-cache`, `--no-introspect`), which the unroutable hosts below prove."""
from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from tests.fixtures.models import INTERMEDIATE, MARTS, compile_offline, libpq_env

NOWHERE = {
    "RISINGWAVE_HOST": "127.0.0.1", "RISINGWAVE_PORT": "1",
    "MZ_HOST": "127.0.0.1", "MZ_PORT": "1",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, dict[str, str]]:
    out = {}
    for target in ("risingwave", "materialize"):
        out[target] = compile_offline(target, work=tmp_path_factory.mktemp(f"dbt-{target}"), env=NOWHERE)
    return out


def code(sql: str) -> str:
    """The SQL without its comments."""
    return re.sub(r"--[^\n]*", "", sql).lower()


def parse(sql: str, dialect: str) -> exp.Expression:
    statements = sqlglot.parse(sql, read=dialect, error_level=sqlglot.ErrorLevel.RAISE)
    assert len([s for s in statements if s is not None]) == 1
    return statements[0]


@pytest.mark.parametrize("target", [
    pytest.param("risingwave", marks=pytest.mark.risingwave),
    pytest.param("materialize", marks=pytest.mark.materialize),
])
@pytest.mark.parametrize("model", INTERMEDIATE + MARTS)
def test_model_compiles_to_a_materialized_view_in_the_dialect(compiled, target, model):
    sql = compiled[target][model]
    tree = parse(sql, target)
    assert isinstance(tree, (exp.Select, exp.Union))
    # What the adapter's materialized_view materialization sends, parsed as one statement.
    ddl = parse(f"create materialized view fraud.{model} as {sql}", target)
    assert isinstance(ddl, exp.Create)
    tables = {t.name for t in tree.find_all(exp.Table)}
    assert "transactions" in tables or tables & set(INTERMEDIATE) or "flagged_transactions" in tables


@pytest.mark.risingwave
@pytest.mark.materialize
def test_dialect_differences_land_where_the_macros_say(compiled):
    for target in ("risingwave", "materialize"):
        for model, sql in compiled[target].items():
            assert "collate" not in code(sql), (target, model)  # bytewise by default, no COLLATE there
            assert "to_char" not in code(sql), (target, model)  # formats only timestamps there
            assert "radians" not in code(sql), (target, model)
    velocity_rw = code(compiled["risingwave"]["int_flags__velocity"])
    assert re.search(r"range between interval '60 seconds' preceding and current row", velocity_rw)
    # Materialize has RANGE frames only as the default frame: a correlated count instead.
    velocity_mz = code(compiled["materialize"]["int_flags__velocity"])
    assert "range between" not in velocity_mz
    assert "- interval '60 seconds'" in velocity_mz
    # Materialize has no primary key: staging keeps the first arrival of each txn_id.
    assert "distinct on (txn_id)" in compiled["materialize"]["int_flags__high_value"]
    assert "distinct on" not in compiled["risingwave"]["int_flags__high_value"]


def test_postgres_compiles_design_rules_literally(tmp_path, engine):
    """DESIGN.md's exact constructs reach PostgreSQL: the velocity frame, the bytewise tie-break,
    R = 6371.0 (compiled offline; the DSN only names the database)."""
    from tests.fixtures.models import write_profiles

    profiles = write_profiles(tmp_path / "profiles", adapter_type="postgres")
    env = libpq_env(engine.admin_dsn)
    compiled = compile_offline("postgres", work=tmp_path, profiles_dir=profiles, env=env)
    assert "range between interval '60 seconds' preceding and current row" in compiled["int_flags__velocity"]
    travel = compiled["int_flags__impossible_travel"]
    assert 'order by event_time, txn_id collate "C"' in travel
    assert "6371.0" in travel
    for model in INTERMEDIATE + MARTS:
        parse(compiled[model], "postgres")
