"""The Grafana dashboard "Sentinel — live fraud": every panel's SQL, with Grafana's macros expanded
as Grafana's PostgreSQL data source expands them, runs as sentinel_analyst on live marts and
returns rows of the shape its panel draws; the SQL stays within what RisingWave also runs."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import sqlglot
from sqlglot import exp

from fixtures.bi import MARTS, dashboard, load_live_marts, panel_queries

NUMERIC_OIDS = {20, 21, 23, 700, 701, 1700}  # int8 int2 int4 float4 float8 numeric
TIME_OIDS = {1114, 1184}  # timestamp, timestamptz
TEXT_OIDS = {25, 1042, 1043}  # text, bpchar, varchar

# Functions of the panels' SQL, each present in RisingWave's function reference (and PostgreSQL's
# and Materialize's): a panel that needs anything else fails here before a RisingWave user sees it.
PORTABLE_FUNCTIONS = {"count", "sum", "coalesce", "greatest", "extract", "case", "if"}  # sqlglot: WHEN = If


def grafana_expand(sql: str, *, start: datetime, end: datetime, interval_s: int = 60) -> str:
    """Expand the macros of Grafana's PostgreSQL data source the way it does (RFC 3339 literals)."""
    t0 = start.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t1 = end.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1).strip()} BETWEEN '{t0}' AND '{t1}'", sql)
    out = out.replace("$__timeFrom()", f"'{t0}'").replace("$__timeTo()", f"'{t1}'")
    out = re.sub(r"\$__unixEpochFrom\(\)", str(int(start.timestamp())), out)
    out = re.sub(r"\$__unixEpochTo\(\)", str(int(end.timestamp())), out)
    out = out.replace("$__interval_ms", str(interval_s * 1000)).replace("$__interval", f"{interval_s}s")
    return out


def test_dashboard_is_the_live_fraud_dashboard() -> None:
    board = dashboard()
    assert board["title"] == "Sentinel — live fraud"
    assert board["refresh"] == "5s"
    assert "5s" in board["timepicker"]["refresh_intervals"]
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Transactions / s", "Amount / s", "Flagged per second by rule", "Flagged share",
                   "Latest alerts", "Top merchant categories by flagged amount", "Top countries by flagged amount"):
        assert wanted in titles
    assert len(set(p["id"] for p in board["panels"])) == len(board["panels"])
    for panel, target in panel_queries():
        assert target["datasource"]["uid"] == "sentinel", panel["title"]
        assert target["format"] in ("time_series", "table"), panel["title"]


@pytest.mark.parametrize(("panel", "target"), panel_queries(), ids=lambda v: v.get("title", "") if "gridPos" in v else "")
def test_panel_sql_reads_marts_only_with_portable_sql(panel: dict, target: dict) -> None:
    sql = grafana_expand(target["rawSql"], start=datetime(2025, 1, 1, tzinfo=timezone.utc),
                         end=datetime(2025, 1, 2, tzinfo=timezone.utc))
    assert "$" not in sql, f"{panel['title']}: unexpanded Grafana variable in {sql!r}"
    tree = sqlglot.parse_one(sql, read="risingwave")
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    tables = {(t.db, t.name) for t in tree.find_all(exp.Table) if t.name not in ctes}
    assert tables, panel["title"]
    for schema, name in tables:
        assert schema == "fraud" and name in MARTS, f"{panel['title']} reads {schema}.{name}, not a mart"
    used = {type(node).__name__.lower() for node in tree.find_all(exp.Func) if not isinstance(node, exp.Anonymous)}
    named = {node.name.lower() for node in tree.find_all(exp.Anonymous)}
    unknown = (used | named) - PORTABLE_FUNCTIONS - {"cast"}
    assert not unknown, f"{panel['title']} uses functions not checked against RisingWave: {sorted(unknown)}"


@pytest.fixture(scope="module")
def live(module_db):
    return load_live_marts(module_db)


def test_every_panel_returns_its_shape_as_analyst(module_db, live) -> None:
    start, end = live.start - timedelta(minutes=1), live.end + timedelta(minutes=1)
    with psycopg.connect(module_db.analyst_dsn, autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone()[0] == "on"
        for panel, target in panel_queries():
            sql = grafana_expand(target["rawSql"], start=start, end=end)
            cur = conn.execute(sql)
            rows = cur.fetchall()
            title = panel["title"]
            assert rows, f"{title}: no rows over live data"
            types = [d.type_code for d in cur.description]
            names = [d.name for d in cur.description]
            if target["format"] == "time_series":
                assert names[0] == "time" and types[0] in TIME_OIDS, f"{title}: first column must be time"
                values = [i for i, n in enumerate(names) if n not in ("time", "metric")]
                assert values and all(types[i] in NUMERIC_OIDS for i in values), f"{title}: {names}"
                if "metric" in names:
                    assert types[names.index("metric")] in TEXT_OIDS
                times = [r[0] for r in rows]
                assert times == sorted(times), f"{title}: time series must be ordered by time"
                assert all(start <= t <= end for t in times), f"{title}: rows outside the time range"
            elif panel["type"] == "stat":
                assert len(rows) == 1 and len(names) == 1, f"{title}: a stat shows one value"
                assert types[0] in NUMERIC_OIDS and rows[0][0] is not None and rows[0][0] >= 0
            elif panel["type"] == "barchart":
                assert len(names) == 2 and types[0] in TEXT_OIDS and types[1] in NUMERIC_OIDS, title
                assert len(rows) <= 10 and [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
            else:
                assert panel["type"] == "table"
                assert len(set(names)) == len(names), f"{title}: duplicate column names"
        share = next(t for p, t in panel_queries() if p["title"] == "Flagged share")
        value = conn.execute(grafana_expand(share["rawSql"], start=start, end=end)).fetchone()[0]
        assert 0 < value < 1, "the generator's stream has some, not only, fraud"


def test_latest_alerts_carry_reasons_and_risk(module_db, live) -> None:
    alerts = next(t for p, t in panel_queries() if p["title"] == "Latest alerts")
    with psycopg.connect(module_db.analyst_dsn, autocommit=True) as conn:
        cur = conn.execute(grafana_expand(alerts["rawSql"], start=live.start, end=live.end))
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    assert {"time", "txn_id", "rule", "risk_level", "reason", "amount"} <= set(names)
    assert rows and all(r["reason"] for r in rows)
    assert {r["risk_level"] for r in rows} <= {"low", "medium", "high", "critical"}
    assert [r["time"] for r in rows] == sorted((r["time"] for r in rows), reverse=True)


def test_time_filter_limits_rows(module_db, live) -> None:
    """The same panel over an empty range (before the data) shows nothing: the macro is applied."""
    alerts = next(t for p, t in panel_queries() if p["title"] == "Latest alerts")
    before = live.start - timedelta(days=30)
    with psycopg.connect(module_db.analyst_dsn, autocommit=True) as conn:
        rows = conn.execute(grafana_expand(alerts["rawSql"], start=before, end=before + timedelta(hours=1))).fetchall()
    assert rows == []
