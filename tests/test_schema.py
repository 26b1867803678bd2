"""The source table's constraints and the two roles, on a real PostgreSQL."""
from __future__ import annotations

import psycopg
import pytest

from sentinel import schema

GOOD = dict(txn_id="t1", card_id="c1", merchant_id="m1", amount="12.50", currency="USD", country="US",
            lat=40.7, lon=-74.0, event_time="2026-01-01T00:00:00Z")
INSERT = ("insert into fraud.transactions (txn_id, card_id, merchant_id, amount, currency, country, lat, lon,"
          " event_time) values (%(txn_id)s, %(card_id)s, %(merchant_id)s, %(amount)s, %(currency)s, %(country)s,"
          " %(lat)s, %(lon)s, %(event_time)s)")


def insert(dsn: str, **changes) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(INSERT, {**GOOD, **changes})


@pytest.mark.parametrize(("changes", "constraint"), [
    ({"txn_id": " "}, "transactions_txn_id_not_blank"),
    ({"card_id": ""}, "transactions_card_id_not_blank"),
    ({"merchant_id": "  "}, "transactions_merchant_id_not_blank"),
    ({"amount": "0"}, "transactions_amount_positive"),
    ({"amount": "-3.10"}, "transactions_amount_positive"),
    ({"currency": "usd"}, "transactions_currency_iso4217"),
    ({"country": "U1"}, "transactions_country_iso3166"),
    ({"lat": 90.5}, "transactions_lat_range"),
    ({"lon": -180.01}, "transactions_lon_range"),
    ({"lat": None}, "transactions_lat_lon_together"),
    ({"lon": None}, "transactions_lat_lon_together"),
])
def test_constraints_reject_bad_rows(db, changes, constraint):
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        insert(db.loader_dsn, **changes)
    assert info.value.diag.constraint_name == constraint


@pytest.mark.parametrize(("changes", "error"), [
    ({"card_id": None}, psycopg.errors.NotNullViolation),
    ({"merchant_id": None}, psycopg.errors.NotNullViolation),
    ({"event_time": None}, psycopg.errors.NotNullViolation),
    ({"amount": "12345678901.00"}, psycopg.errors.NumericValueOutOfRange),
    ({"country": "USA"}, psycopg.errors.StringDataRightTruncation),
])
def test_types_reject_bad_rows(db, changes, error):
    with pytest.raises(error):
        insert(db.loader_dsn, **changes)


def test_good_rows_and_resent_ids(db):
    insert(db.loader_dsn)
    insert(db.loader_dsn, txn_id="t2", lat=None, lon=None, country=None)
    with psycopg.connect(db.loader_dsn) as conn:  # a re-sent id is ignored, never counted twice
        conn.execute(INSERT + " on conflict do nothing", GOOD)
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 2
        currency, ingested = conn.execute(
            "select currency, ingested_at is not null from fraud.transactions where txn_id = 't2'").fetchone()
        assert (currency, ingested) == ("USD", True)


def test_source_is_append_only(db):
    insert(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        for stmt in ("update fraud.transactions set amount = 1", "delete from fraud.transactions",
                     "truncate fraud.transactions"):
            with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                with conn.transaction():
                    conn.execute(stmt)


def test_loader_role_can_only_insert(db):
    insert(db.loader_dsn)
    with psycopg.connect(db.loader_dsn, autocommit=True) as conn:
        for stmt in ("select * from fraud.transactions", "update fraud.transactions set amount = 2",
                     "delete from fraud.transactions", "create table fraud.x (a int)",
                     "create table public.x (a int)", "create schema y"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        conn.execute("create temp table staging (txn_id text, amount numeric)")  # COPY staging is allowed


def test_analyst_role_is_read_only(db):
    insert(db.dsn)
    with psycopg.connect(db.dsn, autocommit=True) as conn:  # a model created later is readable too
        conn.execute("create table fraud.some_mart as select card_id from fraud.transactions")
    with psycopg.connect(db.analyst_dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 1
        assert conn.execute("select count(*) from fraud.some_mart").fetchone()[0] == 1
        for stmt in ("insert into fraud.transactions (txn_id, card_id, merchant_id, amount, event_time)"
                     " values ('a', 'b', 'c', 1, now())", "delete from fraud.transactions", "create table fraud.x (a int)",
                     "create temp table x (a int)"):
            with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
                conn.execute(stmt)
        conn.execute("set default_transaction_read_only = off")  # a writable session still cannot write
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into fraud.some_mart values ('x')")


def test_apply_is_idempotent_and_keeps_data(db):
    insert(db.dsn)
    schema.apply(db.dsn, role_passwords=db.server.passwords)
    schema.apply(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 1


def test_per_card_index_covers_the_window_reads_and_an_earlier_one_is_rebuilt(db):
    """The per-card index carries the columns the rules' windows read (their reads of a card's last
    rows are index-only scans); applying sql/ over an earlier build's index without them rebuilds it."""
    definition = ("select pg_get_indexdef('fraud.transactions_card_time_idx'::regclass)")
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert "INCLUDE (amount, country, lat, lon, device_id)" in conn.execute(definition).fetchone()[0]
        conn.execute("drop index fraud.transactions_card_time_idx")
        conn.execute("create index transactions_card_time_idx on fraud.transactions (card_id, event_time, txn_id)")
    insert(db.dsn)
    schema.apply(db.dsn)
    with psycopg.connect(db.dsn) as conn:
        assert "INCLUDE (amount, country, lat, lon, device_id)" in conn.execute(definition).fetchone()[0]
        assert conn.execute("select count(*) from fraud.transactions").fetchone()[0] == 1
        conn.execute("set enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "explain select txn_id, amount, country, lat, lon, device_id, event_time from fraud.transactions "
            "where card_id = 'c1' and event_time < now() order by event_time desc limit 10"))
        assert "Index Only Scan Backward using transactions_card_time_idx" in plan
