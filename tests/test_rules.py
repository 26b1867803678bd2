"""Each detection rule's semantics on hand-written cases, against a real PostgreSQL.

The models are compiled once (dbt, no server) and created as plain views in one database, so each
query is a from-scratch evaluation of the model's SQL; every case uses its own cards, so cases do
not see each other. That the maintained tables equal these evaluations is the materialization's
property (and test_dbt_project.py runs the deployed project).
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.fixtures.models import INTERMEDIATE, MARTS, compile_offline, libpq_env, write_profiles

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
R = 6371.0

COLUMNS = (
    "txn_id", "card_id", "customer_id", "merchant_id", "merchant_category", "amount", "currency",
    "channel", "country", "lat", "lon", "device_id", "event_time", "is_fraud", "fraud_pattern",
)


@pytest.fixture(scope="module")
def rules_db(module_db, tmp_path_factory):
    """One database with every model created as a view over fraud.transactions."""
    work = tmp_path_factory.mktemp("dbt-rules")
    profiles = write_profiles(work / "profiles", adapter_type="postgres")
    compiled = compile_offline("postgres", work=work, profiles_dir=profiles, env=libpq_env(module_db.dsn))
    with psycopg.connect(module_db.dsn, autocommit=True) as conn:
        conn.execute("create schema if not exists fraud_intermediate")
        for name in INTERMEDIATE:
            conn.execute(f"create view fraud_intermediate.{name} as {compiled[name]}")
        for name in MARTS:
            conn.execute(f"create view fraud.{name} as {compiled[name]}")
    return module_db


class Cards:
    """Inserts transactions on cards unique to one test, and reads the flags they raise."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.prefix = uuid.uuid4().hex[:8]
        self.count = 0

    def card(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def insert(self, *rows: dict[str, Any]) -> list[str]:
        """Insert rows (defaults fill the rest); returns their txn_ids in order."""
        ids = []
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            for row in rows:
                self.count += 1
                full = {
                    "txn_id": f"{self.prefix}-t{self.count:04d}",
                    "customer_id": None, "merchant_id": "m-1", "merchant_category": "grocery",
                    "amount": Decimal("10.00"), "currency": "USD", "channel": "pos", "country": "US",
                    "lat": None, "lon": None, "device_id": None, "event_time": T0,
                    "is_fraud": None, "fraud_pattern": None,
                    **row,
                }
                full["txn_id"] = row.get("txn_id", full["txn_id"])
                full["card_id"] = self.card(row.get("card", "a"))
                full.pop("card", None)
                if isinstance(full["event_time"], (int, float)):
                    full["event_time"] = T0 + timedelta(seconds=full["event_time"])
                cur.execute(
                    f"insert into fraud.transactions ({', '.join(COLUMNS)}) "
                    f"values ({', '.join(['%s'] * len(COLUMNS))})",
                    [full[c] for c in COLUMNS],
                )
                ids.append(full["txn_id"])
        return ids

    def flags(self, rule: str) -> dict[str, str]:
        """txn_id -> reason for this test's cards in the rule's model."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                f"select txn_id, reason from fraud_intermediate.int_flags__{rule} "
                "where card_id like %s",
                [self.prefix + "-%"],
            ).fetchall()
        return dict(rows)

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, {"prefix": self.prefix + "-%"}).fetchall()


@pytest.fixture
def cards(rules_db) -> Cards:
    return Cards(rules_db.dsn)


def lon_at_distance(km: float) -> float:
    """Longitude on the equator at `km` great-circle km from (0, 0)."""
    return math.degrees(km / R)


# --- high_value -------------------------------------------------------------------------------

def test_high_value_is_strictly_above_the_threshold(cards):
    at, above, far_above = cards.insert(
        {"amount": Decimal("2000.00")},
        {"amount": Decimal("2000.01")},
        {"amount": Decimal("12500.00"), "currency": "EUR"},
    )
    assert cards.flags("high_value") == {
        above: "2,000.01 USD over the 2,000.00 limit",
        far_above: "12,500.00 EUR over the 2,000.00 limit",
    }
    risk = dict(cards.query(
        "select txn_id, risk_level from fraud_intermediate.int_flags__high_value where card_id like %(prefix)s"))
    assert risk == {above: "medium", far_above: "high"}


# --- velocity ---------------------------------------------------------------------------------

def test_velocity_window_includes_its_exact_60_second_boundary(cards):
    ids = cards.insert(*({"event_time": s} for s in (0, 20, 40, 60)))
    assert cards.flags("velocity") == {ids[3]: "4 transactions in 60 s"}


def test_velocity_window_excludes_just_beyond_60_seconds(cards):
    cards.insert(*({"event_time": s} for s in (0, 20, 40, 60.001)))
    assert cards.flags("velocity") == {}


def test_velocity_counts_peers_with_equal_timestamps(cards):
    ids = cards.insert(*({"event_time": 30} for _ in range(5)))
    assert cards.flags("velocity") == {txn: "5 transactions in 60 s" for txn in ids}


def test_velocity_is_per_card(cards):
    cards.insert(*({"event_time": s, "card": "a" if s % 2 else "b"} for s in range(6)))
    assert cards.flags("velocity") == {}


def test_velocity_late_event_adds_a_flag_to_a_later_transaction(cards):
    first, _, third = cards.insert({"event_time": 0}, {"event_time": 10}, {"event_time": 20})
    assert cards.flags("velocity") == {}
    (late,) = cards.insert({"event_time": 5})
    assert cards.flags("velocity") == {third: "4 transactions in 60 s"}
    assert late not in cards.flags("velocity") and first not in cards.flags("velocity")


# --- impossible_travel ------------------------------------------------------------------------

def test_impossible_travel_reason_matches_design_example(cards):
    _, far = cards.insert(
        {"lat": 0.0, "lon": 0.0, "event_time": 0},
        {"lat": 0.0, "lon": lon_at_distance(8412.0), "event_time": 12 * 60},
    )
    assert cards.flags("impossible_travel") == {far: "8,412 km in 12 min = 42,060 km/h"}
    (row,) = cards.query(
        "select risk_level, previous_txn_id is not null, round(distance_km::numeric, 3), elapsed_seconds "
        "from fraud_intermediate.int_flags__impossible_travel where card_id like %(prefix)s")
    assert row == ("critical", True, Decimal("8412.000"), 720.0)


def test_impossible_travel_zero_interval_is_infinite_speed_and_ties_break_bytewise(cards):
    # Same event_time: p is the smaller txn_id bytewise ('B' < 'a' in "C", not in most locales).
    upper, lower = cards.insert(
        {"txn_id": cards.card("B"), "lat": 0.0, "lon": 0.0, "event_time": 0},
        {"txn_id": cards.card("a"), "lat": 0.0, "lon": lon_at_distance(350.0), "event_time": 0},
    )
    assert cards.flags("impossible_travel") == {lower: "350 km in 0 s = infinite speed"}


def test_impossible_travel_skips_rows_without_coordinates(cards):
    nyc, ecom, london = cards.insert(
        {"lat": 40.7128, "lon": -74.0060, "event_time": 0},
        {"channel": "ecom", "event_time": 30 * 60},
        {"lat": 51.5074, "lon": -0.1278, "event_time": 60 * 60},
    )
    flags = cards.flags("impossible_travel")
    assert list(flags) == [london]
    assert flags[london] == "5,570 km in 1 h 0 min = 5,570 km/h"


def test_impossible_travel_measures_across_the_antimeridian(cards):
    # 1.8 degrees of longitude across 180: about 200 km, not 39,800.
    _, east = cards.insert(
        {"lat": 0.0, "lon": 179.1, "event_time": 0},
        {"lat": 0.0, "lon": -179.1, "event_time": 60},
    )
    assert cards.flags("impossible_travel") == {east: "200 km in 1 min = 12,009 km/h"}
    # 0.2 degrees across 180 is about 22 km: under the 100 km minimum even at once.
    cards.insert(
        {"card": "b", "lat": 0.0, "lon": 179.9, "event_time": 0},
        {"card": "b", "lat": 0.0, "lon": -179.9, "event_time": 0},
    )
    assert len(cards.flags("impossible_travel")) == 1


def test_impossible_travel_thresholds(cards):
    # 99 km at the same instant: too close to count.
    cards.insert(
        {"card": "near", "lat": 0.0, "lon": 0.0, "event_time": 0},
        {"card": "near", "lat": 0.0, "lon": lon_at_distance(99.0), "event_time": 0},
    )
    # 1000 km in 70 min is 857 km/h: a plane, not flagged; in 60 min it is 1000 km/h: flagged.
    cards.insert(
        {"card": "slow", "lat": 0.0, "lon": 0.0, "event_time": 0},
        {"card": "slow", "lat": 0.0, "lon": lon_at_distance(1000.0), "event_time": 70 * 60},
    )
    _, fast = cards.insert(
        {"card": "fast", "lat": 0.0, "lon": 0.0, "event_time": 0},
        {"card": "fast", "lat": 0.0, "lon": lon_at_distance(1000.0), "event_time": 59 * 60},
    )
    assert cards.flags("impossible_travel") == {fast: "1,000 km in 59 min = 1,017 km/h"}


def test_impossible_travel_late_event_moves_the_flag(cards):
    _, london = cards.insert(
        {"lat": 40.7128, "lon": -74.0060, "event_time": 0},
        {"lat": 51.5074, "lon": -0.1278, "event_time": 60 * 60},
    )
    assert list(cards.flags("impossible_travel")) == [london]
    (late,) = cards.insert({"lat": 51.5080, "lon": -0.1280, "event_time": 30 * 60})
    assert cards.flags("impossible_travel") == {late: "5,570 km in 30 min = 11,140 km/h"}


# --- card_testing -----------------------------------------------------------------------------

def test_card_testing_burst_of_small_amounts(cards):
    ids = cards.insert(*(
        {"amount": Decimal(a), "event_time": s}
        for a, s in (("1.00", 0), ("5.00", 60), ("0.50", 120), ("2.00", 180), ("5.01", 200), ("1.00", 600))
    ))
    # 5.01 is not small; the sixth (at exactly 600 s) has 5 small ones in its window.
    assert cards.flags("card_testing") == {ids[5]: "5 amounts of at most 5.00 in 10 min"}


# --- account_takeover -------------------------------------------------------------------------

def test_account_takeover_first_use_of_a_new_device_on_a_card(cards):
    ids = cards.insert(
        {"device_id": "dev-1", "event_time": 0},
        {"device_id": None, "event_time": 10},
        {"device_id": "dev-1", "event_time": 20},
        {"device_id": "dev-7", "amount": Decimal("499.99"), "event_time": 25},  # too small
        {"device_id": "dev-9", "amount": Decimal("1500.00"), "event_time": 30},
        {"device_id": "dev-9", "amount": Decimal("1500.00"), "event_time": 40},  # not new any more
    )
    assert cards.flags("account_takeover") == {ids[4]: "new device dev-9 after 2 other devices: 1,500.00 USD"}


def test_account_takeover_needs_an_earlier_device_and_follows_late_events(cards):
    first, = cards.insert({"device_id": "dev-2", "amount": Decimal("900.00"), "event_time": 100})
    assert cards.flags("account_takeover") == {}  # the card's first device is not a takeover
    (earlier,) = cards.insert({"device_id": "dev-1", "event_time": 0})
    assert cards.flags("account_takeover") == {first: "new device dev-2 after 1 other device: 900.00 USD"}
    # A late, earlier use of dev-2 means dev-2 was not new at 100 s any more.
    cards.insert({"device_id": "dev-2", "amount": Decimal("5.00"), "event_time": 50})
    assert cards.flags("account_takeover") == {}


# --- amount_spike -----------------------------------------------------------------------------

def test_amount_spike_against_the_cards_previous_average(cards):
    cards.insert(*({"amount": Decimal("20.00"), "event_time": 60 * i} for i in range(5)))
    at_factor, above = cards.insert(
        {"amount": Decimal("200.00"), "event_time": 600},  # exactly 10x the average: not above
        {"card": "b", "amount": Decimal("20.00"), "event_time": 0},
    )
    assert cards.flags("amount_spike") == {}
    (spike,) = cards.insert({"amount": Decimal("2500.00"), "event_time": 700})
    assert cards.flags("amount_spike") == {
        spike: "2,500.00 USD vs an average of 50.00 over the previous 6 transactions",
    }


def test_amount_spike_needs_enough_history(cards):
    cards.insert(*({"amount": Decimal("10.00"), "event_time": i} for i in range(4)))
    cards.insert({"amount": Decimal("900.00"), "event_time": 10})
    assert cards.flags("amount_spike") == {}


# --- cross_border -----------------------------------------------------------------------------

def test_cross_border_counts_changes_to_new_countries_within_the_window(cards):
    ids = cards.insert(
        {"country": "US", "event_time": 0},
        {"country": "CA", "event_time": 600},
        {"country": "MX", "event_time": 900},
        {"country": "GB", "event_time": 1200},
    )
    assert cards.flags("cross_border") == {
        ids[2]: "2 country changes in 1 h, CA to MX",
        ids[3]: "3 country changes in 1 h, MX to GB",
    }


def test_cross_border_ignores_going_back_and_rows_without_country(cards):
    # Home, a foreign web shop, home again: one change, not two.
    cards.insert(
        {"card": "home", "country": "US", "event_time": 0},
        {"card": "home", "country": "DE", "channel": "ecom", "event_time": 200},
        {"card": "home", "country": "US", "event_time": 400},
    )
    assert cards.flags("cross_border") == {}
    # The CA change lies exactly 1 h before MX: inside the window; the country-less row is skipped.
    ids = cards.insert(
        {"country": "US", "event_time": 0},
        {"country": "CA", "event_time": 600},
        {"country": None, "channel": "ecom", "event_time": 900},
        {"country": "MX", "event_time": 600 + 3600},
    )
    assert cards.flags("cross_border") == {ids[3]: "2 country changes in 1 h, CA to MX"}


# --- marts ------------------------------------------------------------------------------------

def test_flagged_transactions_unions_every_rule_with_contract_columns(cards, rules_db):
    travel = cards.insert(
        {"amount": Decimal("3000.00"), "lat": 0.0, "lon": 0.0, "event_time": 0},
        {"amount": Decimal("3000.00"), "lat": 0.0, "lon": 20.0, "event_time": 0},
    )
    rows = cards.query(
        "select txn_id, rule, risk_level from fraud.flagged_transactions "
        "where card_id like %(prefix)s order by txn_id, rule")
    assert rows == [
        (travel[0], "high_value", "medium"),
        (travel[1], "high_value", "medium"),
        (travel[1], "impossible_travel", "critical"),
    ]
    with psycopg.connect(rules_db.dsn) as conn:
        columns = conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'fraud' and table_name = 'flagged_transactions' order by ordinal_position"
        ).fetchall()
    assert columns == [
        ("txn_id", "text"), ("rule", "text"), ("card_id", "text"), ("customer_id", "text"),
        ("merchant_id", "text"), ("merchant_category", "text"), ("country", "character"),
        ("channel", "text"), ("amount", "numeric"), ("currency", "character"),
        ("event_time", "timestamp with time zone"), ("risk_level", "text"), ("reason", "text"),
    ]


def test_bi_marts_count_transactions_and_flags(cards):
    cards.insert(
        {"amount": Decimal("2500.00"), "event_time": 5},
        {"amount": Decimal("10.00"), "event_time": 50},
        {"amount": Decimal("7.50"), "event_time": 65, "merchant_category": "atm", "card": "b"},
    )
    minutely = cards.query(
        "select minute, merchant_category, txn_count, amount_total from fraud.transactions_minutely "
        "where minute >= '2025-03-01 12:00+00' and minute < '2025-03-01 12:02+00' "
        "and merchant_category in ('grocery', 'atm') order by minute, merchant_category")
    # Other tests' cards share these minutes: compare with their own rows.
    expected = dict(((m, c), (n, a)) for m, c, n, a in cards.query(
        "select date_trunc('minute', event_time), merchant_category, count(*), sum(amount) "
        "from fraud.transactions where event_time >= '2025-03-01 12:00+00' "
        "and event_time < '2025-03-01 12:02+00' and merchant_category in ('grocery', 'atm') "
        "group by 1, 2"))
    assert {(m, c): (n, a) for m, c, n, a in minutely} == expected
    activity = cards.query(
        "select card_id, txn_count, amount_total, amount_max, first_seen_at, last_seen_at "
        "from fraud.card_activity where card_id like %(prefix)s order by card_id")
    assert activity == [
        (cards.card("a"), 2, Decimal("2510.00"), Decimal("2500.00"), T0 + timedelta(seconds=5),
         T0 + timedelta(seconds=50)),
        (cards.card("b"), 1, Decimal("7.50"), Decimal("7.50"), T0 + timedelta(seconds=65),
         T0 + timedelta(seconds=65)),
    ]
    flagged = cards.query(
        "select rule, sum(flagged_count), sum(flagged_amount) from fraud.flagged_minutely "
        "where rule = 'high_value' and minute = '2025-03-01 12:00+00' group by rule")
    own = cards.query(
        "select count(*), sum(amount) from fraud.flagged_transactions "
        "where rule = 'high_value' and date_trunc('minute', event_time) = '2025-03-01 12:00+00'")
    assert flagged == [("high_value", own[0][0], own[0][1])]
