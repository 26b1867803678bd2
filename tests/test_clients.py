"""Real Postgres-wire clients as the read-only role sentinel_analyst, the way BI tools connect:
psycopg 3, psycopg2, asyncpg (named prepared statements), pg8000, SQLAlchemy + pandas, and JDBC
(Debian's PostgreSQL driver, a few lines of Java compiled here). Each lists the fraud relations
through information_schema, runs the dashboard's queries, and is refused every write."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from fixtures.bi import MARTS, load_live_marts, panel_queries
from test_dashboard import grafana_expand

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
LIST_RELATIONS = (
    "select table_name, table_type from information_schema.tables "
    "where table_schema = 'fraud' order by table_name"
)
# What a read-only role must be refused, whatever the client: a write to the source, to a mart,
# and creating objects (permanent and temporary).
WRITES = (
    "insert into fraud.transactions (txn_id, card_id, merchant_id, amount, event_time) "
    "values ('analyst-1', 'c', 'm', 1.00, now())",
    "update fraud.flagged_transactions set reason = 'x'",
    "delete from fraud.card_activity",
    "create table fraud.analyst_scratch (x int)",
    "create temporary table analyst_scratch (x int)",
)
REFUSED_SQLSTATES = {"42501", "25006"}  # insufficient_privilege, read_only_sql_transaction


@pytest.fixture(scope="module")
def live(module_db):
    return load_live_marts(module_db)


@pytest.fixture(scope="module")
def queries(live) -> dict[str, str]:
    """The dashboard's panel SQL, expanded over the live data's time range."""
    start, end = live.start - timedelta(minutes=1), live.end + timedelta(minutes=1)
    return {p["title"]: grafana_expand(t["rawSql"], start=start, end=end) for p, t in panel_queries()}


@pytest.fixture(scope="module")
def expected(module_db, queries) -> dict:
    """What each query returns through psycopg as the owner: the reference every client must match."""
    with psycopg.connect(module_db.dsn, autocommit=True) as conn:
        relations = conn.execute(LIST_RELATIONS).fetchall()
        rows = {title: len(conn.execute(sql).fetchall()) for title, sql in queries.items()}
    empty = [title for title, n in rows.items() if not n]
    assert not empty, f"panels with no rows over live data: a client returning nothing would match them: {empty}"
    return {"relations": [tuple(r) for r in relations], "rows": rows}


def params(db) -> dict:
    parts = conninfo_to_dict(db.analyst_dsn)
    return {"host": parts.get("host", "127.0.0.1"), "port": int(parts.get("port", 5432)), "user": parts["user"],
            "password": parts["password"], "dbname": parts["dbname"]}


def check_relations(relations: list[tuple]) -> None:
    names = {name for name, _ in relations}
    assert {"transactions", *MARTS} <= names, names


def test_psycopg3(module_db, queries, expected) -> None:
    with psycopg.connect(module_db.analyst_dsn, autocommit=True) as conn:
        relations = [tuple(r) for r in conn.execute(LIST_RELATIONS).fetchall()]
        check_relations(relations)
        assert relations == expected["relations"]
        for title, sql in queries.items():
            assert len(conn.execute(sql).fetchall()) == expected["rows"][title], title
        for statement in WRITES:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(statement)
            assert info.value.sqlstate in REFUSED_SQLSTATES, (statement, info.value.sqlstate)
        # Even a client that asks for a read-write transaction cannot write.
        with pytest.raises(psycopg.Error) as info:
            with conn.transaction():
                conn.execute("set transaction read write")
                conn.execute(WRITES[0])
        assert info.value.sqlstate in REFUSED_SQLSTATES


def test_psycopg2(module_db, queries, expected) -> None:
    import psycopg2

    conn = psycopg2.connect(module_db.analyst_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(LIST_RELATIONS)
            assert [tuple(r) for r in cur.fetchall()] == expected["relations"]
            for title, sql in queries.items():
                cur.execute(sql)
                assert len(cur.fetchall()) == expected["rows"][title], title
            for statement in WRITES:
                with pytest.raises(psycopg2.Error) as info:
                    cur.execute(statement)
                assert info.value.pgcode in REFUSED_SQLSTATES, (statement, info.value.pgcode)
    finally:
        conn.close()


def test_asyncpg_named_prepared_statements(module_db, queries, expected) -> None:
    import asyncpg

    p = params(module_db)

    async def run() -> None:
        conn = await asyncpg.connect(host=p["host"], port=p["port"], user=p["user"], password=p["password"],
                                     database=p["dbname"])
        try:
            relations = await conn.fetch(LIST_RELATIONS)
            assert [tuple(r) for r in relations] == expected["relations"]
            prepared = []  # held: asyncpg deallocates a statement once its object is collected
            for i, (title, sql) in enumerate(queries.items()):
                statement = await conn.prepare(sql, name=f"sentinel_panel_{i}")
                prepared.append(statement)
                first = await statement.fetch()
                again = await statement.fetch()  # the named statement is reused, not re-parsed
                assert len(first) == len(again) == expected["rows"][title], title
            names = {r["name"] for r in await conn.fetch("select name from pg_prepared_statements")}
            assert {f"sentinel_panel_{i}" for i in range(len(queries))} <= names
            # A parameterised statement, as BI tools send their filters.
            by_rule = await conn.prepare(
                "select count(*) from fraud.flagged_transactions where rule = $1", name="sentinel_by_rule")
            assert await by_rule.fetchval("high_value") >= 1
            for statement in WRITES:
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.execute(statement)
                assert info.value.sqlstate in REFUSED_SQLSTATES, (statement, info.value.sqlstate)
        finally:
            await conn.close()

    asyncio.run(run())


def test_pg8000(module_db, queries, expected) -> None:
    import pg8000.native

    p = params(module_db)
    conn = pg8000.native.Connection(p["user"], host=p["host"], port=p["port"], password=p["password"],
                                    database=p["dbname"])
    try:
        assert [tuple(r) for r in conn.run(LIST_RELATIONS)] == expected["relations"]
        for title, sql in queries.items():
            assert len(conn.run(sql)) == expected["rows"][title], title
        for statement in WRITES:
            with pytest.raises(pg8000.native.DatabaseError) as info:
                conn.run(statement)
            assert info.value.args[0]["C"] in REFUSED_SQLSTATES, (statement, info.value.args[0])
    finally:
        conn.close()


def test_sqlalchemy_and_pandas(module_db, queries, expected) -> None:
    import pandas as pd
    import sqlalchemy as sa

    p = params(module_db)
    url = sa.URL.create("postgresql+psycopg", username=p["user"], password=p["password"], host=p["host"],
                        port=p["port"], database=p["dbname"])
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            views = pd.read_sql(sa.text(LIST_RELATIONS), conn)
            assert list(views.columns) == ["table_name", "table_type"]
            assert [tuple(r) for r in views.itertuples(index=False)] == expected["relations"]
            for title, sql in queries.items():
                frame = pd.read_sql(sa.text(sql), conn)
                assert len(frame) == expected["rows"][title], title
            alerts = pd.read_sql(sa.text(queries["Latest alerts"]), conn)
            assert {"time", "txn_id", "rule", "reason"} <= set(alerts.columns)
            assert str(alerts["time"].dtype).startswith("datetime64")
        for statement in WRITES:
            with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as info:
                conn.execute(sa.text(statement))
            assert info.value.orig.sqlstate in REFUSED_SQLSTATES, statement
    finally:
        engine.dispose()


JAVA_CLIENT = """
import java.nio.file.*;
import java.sql.*;
import java.util.*;

// Lists the fraud relations, runs each query file given, tries each write; one line per result.
public class SentinelJdbc {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2];
        try (Connection conn = DriverManager.getConnection(url, user, password)) {
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery(new String(Files.readAllBytes(Paths.get(args[3]))))) {
                while (rs.next()) System.out.println("relation\\t" + rs.getString(1) + "\\t" + rs.getString(2));
            }
            for (String path : Files.readAllLines(Paths.get(args[4]))) {
                String sql = new String(Files.readAllBytes(Paths.get(path)));
                try (PreparedStatement ps = conn.prepareStatement(sql); ResultSet rs = ps.executeQuery()) {
                    int n = 0, cols = rs.getMetaData().getColumnCount();
                    while (rs.next()) { n++; for (int c = 1; c <= cols; c++) rs.getObject(c); }
                    System.out.println("rows\\t" + path + "\\t" + n);
                }
            }
            for (String sql : Files.readAllLines(Paths.get(args[5]))) {
                try (Statement st = conn.createStatement()) {
                    st.execute(sql);
                    System.out.println("write\\tALLOWED\\t" + sql);
                } catch (SQLException e) {
                    System.out.println("write\\t" + e.getSQLState() + "\\t" + sql);
                }
            }
        }
    }
}
"""


def test_jdbc(module_db, queries, expected, tmp_path: Path) -> None:
    if not JDBC_JAR.exists() and not os.environ.get("CI"):  # CI installs it (scripts/test.sh): no skip there
        pytest.skip(f"{JDBC_JAR} is absent: apt-get install libpostgresql-jdbc-java (scripts/test.sh does)")
    javac, java = shutil.which("javac"), shutil.which("java")
    assert javac and java, "a JDK (javac, java) is needed for the JDBC test"
    (tmp_path / "SentinelJdbc.java").write_text(JAVA_CLIENT)
    subprocess.run([javac, "-cp", str(JDBC_JAR), "-d", str(tmp_path), str(tmp_path / "SentinelJdbc.java")],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "relations.sql").write_text(LIST_RELATIONS)
    paths = {}
    for i, (title, sql) in enumerate(queries.items()):
        path = tmp_path / f"panel_{i}.sql"
        path.write_text(sql)
        paths[str(path)] = title
    (tmp_path / "queries.txt").write_text("\n".join(paths))
    (tmp_path / "writes.txt").write_text("\n".join(WRITES))
    p = params(module_db)
    url = f"jdbc:postgresql://{p['host']}:{p['port']}/{p['dbname']}"
    result = subprocess.run(
        [java, "-cp", f"{JDBC_JAR}:{tmp_path}", "SentinelJdbc", url, p["user"], p["password"],
         str(tmp_path / "relations.sql"), str(tmp_path / "queries.txt"), str(tmp_path / "writes.txt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [tuple(f[1:]) for f in lines if f[0] == "relation"] == expected["relations"]
    counts = {paths[f[1]]: int(f[2]) for f in lines if f[0] == "rows"}
    assert counts == expected["rows"]
    refused = [f[1] for f in lines if f[0] == "write"]
    assert len(refused) == len(WRITES) and set(refused) <= REFUSED_SQLSTATES, result.stdout
