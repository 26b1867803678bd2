"""The synthetic stream: deterministic, labelled, each scenario making its pattern unambiguously."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from loader.generator import CHUNK, SCENARIOS, GeneratorConfig, generate, generate_batches, haversine_km
from loader.schema import COLUMNS, FRAUD_PATTERNS
from loader.writer import Writer, format_copy_text, row_from_line

C = {name: i for i, name in enumerate(COLUMNS)}
RICH = {name: 0.02 for name in SCENARIOS}  # many episodes in a small stream


@pytest.fixture(scope="module")
def stream() -> list[tuple]:
    return list(generate(GeneratorConfig(seed=11, count=40_000, shares=RICH)))


def test_same_seed_same_stream() -> None:
    a = list(generate(GeneratorConfig(seed=5, count=3000, late_share=0.1)))
    b = list(generate(GeneratorConfig(seed=5, count=3000, late_share=0.1)))
    c = list(generate(GeneratorConfig(seed=6, count=3000, late_share=0.1)))
    assert a == b
    assert a != c
    assert len({r[C["txn_id"]] for r in a}) == 3000


def test_rows_fit_the_source_contract(stream: list[tuple]) -> None:
    for row in stream:
        assert len(row) == len(COLUMNS)
        assert row[C["amount"]] > 0
        assert (row[C["lat"]] is None) == (row[C["lon"]] is None)
        assert row[C["channel"]] in ("pos", "ecom", "atm")
        assert len(row[C["country"]]) == 2
        assert row[C["event_time"]].tzinfo is not None
        assert isinstance(row[C["is_fraud"]], bool)
        # labelled fraud is exactly the fraud patterns; look-alikes and normal rows are not fraud
        assert row[C["fraud_pattern"]] is None or row[C["fraud_pattern"]] in SCENARIOS
        assert row[C["is_fraud"]] == (row[C["fraud_pattern"]] in FRAUD_PATTERNS)
    patterns = {r[C["fraud_pattern"]] for r in stream}
    assert set(SCENARIOS) <= patterns


def test_high_value_only_where_labelled(stream: list[tuple]) -> None:
    for row in stream:
        if row[C["fraud_pattern"]] == "high_value":
            assert row[C["amount"]] > 2000
        else:
            assert row[C["amount"]] <= 2000, row


def _by_card(rows: list[tuple]) -> dict[str, list[tuple]]:
    cards: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        cards[row[C["card_id"]]].append(row)
    for txns in cards.values():
        txns.sort(key=lambda r: (r[C["event_time"]], r[C["txn_id"]].encode()))
    return cards


def test_card_testing_account_takeover_cross_border(stream: list[tuple]) -> None:
    cards = _by_card(stream)
    # episodes still under way when the stream stopped are cut short: judge the finished ones
    settled = max(r[C["event_time"]] for r in stream) - timedelta(hours=1)
    seen_testing = seen_ato = seen_border = 0
    for txns in cards.values():
        testing = [r for r in txns if r[C["fraud_pattern"]] == "card_testing"]
        if testing:
            seen_testing += 1
            assert all(r[C["amount"]] < 5 for r in testing)
            assert len({r[C["merchant_id"]] for r in testing}) == 1
            assert testing[-1][C["event_time"]] - testing[0][C["event_time"]] < timedelta(minutes=5)
            assert len(testing) >= 6 or testing[0][C["event_time"]] > settled
        for k, row in enumerate(txns):
            if row[C["fraud_pattern"]] == "account_takeover":
                seen_ato += 1
                earlier = txns[:k]
                assert earlier, "account takeover needs a card with history"
                first_of_device = not any(r[C["device_id"]] == row[C["device_id"]] for r in earlier)
                assert first_of_device or earlier[-1][C["fraud_pattern"]] == "account_takeover"
                assert row[C["amount"]] >= 600
        border = [r for r in txns if r[C["fraud_pattern"]] == "cross_border"]
        if border:
            seen_border += 1
            assert len({r[C["country"]] for r in border}) >= 3 or border[0][C["event_time"]] > settled
            assert border[-1][C["event_time"]] - border[0][C["event_time"]] <= timedelta(minutes=30)
    assert seen_testing and seen_ato and seen_border


def test_amount_spike_is_far_above_the_cards_previous_ten(stream: list[tuple]) -> None:
    """The rule's terms (dbt vars' defaults): over the spike's previous 10 transactions of its card,
    by (event_time, txn_id), at least 5 exist, amount >= 200 and amount > 10x their average; and
    high_value (> 2,000) does not fire on it."""
    spikes = 0
    for txns in _by_card(stream).values():
        for k, row in enumerate(txns):
            if row[C["fraud_pattern"]] != "amount_spike":
                continue
            spikes += 1
            previous = txns[max(0, k - 10):k]
            assert len(previous) == 10 and all(r[C["fraud_pattern"]] is None for r in previous)
            total = sum(r[C["amount"]] for r in previous)
            assert row[C["amount"]] >= 200 and row[C["amount"]] * len(previous) > 10 * total, (row, total)
            assert row[C["amount"]] <= 2000 and row[C["is_fraud"]]
            assert all(8 <= r[C["amount"]] <= 40 for r in previous)
            gaps = [(b[C["event_time"]] - a[C["event_time"]]).total_seconds() for a, b in zip(previous, previous[1:])]
            assert min(gaps) >= 120  # never velocity
    assert spikes >= 20


def test_late_events_are_out_of_order_within_the_delay() -> None:
    rows = list(generate(GeneratorConfig(seed=3, count=5000, late_share=0.2, max_delay_s=20.0)))
    times = [r[C["event_time"]] for r in rows]
    out_of_order = sum(1 for a, b in zip(times, times[1:]) if b < a)
    assert out_of_order > 100
    newest = times[0]
    for t in times:
        assert t >= newest - timedelta(seconds=20.001)
        newest = max(newest, t)


def test_paced_stream_follows_the_wall_clock() -> None:
    rows = list(generate(GeneratorConfig(seed=1, count=100, rate=50.0), wall_start=1_700_000_000.0))
    first, last = rows[0][C["event_time"]].timestamp(), rows[-1][C["event_time"]].timestamp()
    assert first == pytest.approx(1_700_000_000.02, abs=0.01)
    assert last - first == pytest.approx(99 / 50.0, abs=0.05)


VELOCITY_SQL = """
with windowed as (
    select
        txn_id,
        fraud_pattern,
        is_fraud,
        count(*) over (
            partition by card_id
            order by event_time
            range between interval '60 seconds' preceding and current row
        ) as txns_in_60s
    from fraud.transactions
)
select fraud_pattern, is_fraud, count(*) filter (where txns_in_60s >= 4) as flagged, count(*) as total
from windowed
group by 1, 2
"""

TRAVEL_SQL = """
with located as (
    select
        txn_id, card_id, event_time, lat, lon, fraud_pattern,
        lag(event_time) over w as prev_time,
        lag(lat) over w as prev_lat,
        lag(lon) over w as prev_lon
    from fraud.transactions
    where lat is not null
    window w as (partition by card_id order by event_time, txn_id collate "C")
),
measured as (
    select
        *,
        2 * 6371.0 * asin(sqrt(
            power(sin(radians(lat - prev_lat) / 2), 2)
            + cos(radians(prev_lat)) * cos(radians(lat)) * power(sin(radians(lon - prev_lon) / 2), 2)
        )) as km,
        extract(epoch from event_time - prev_time) / 3600.0 as hours
    from located
    where prev_time is not null
)
select
    txn_id,
    fraud_pattern,
    km,
    case when hours = 0 then 'infinity'::float8 else km / hours end as kmh
from measured
"""


def test_rules_fire_on_their_scenarios_and_not_on_legitimate_traffic(db, stream: list[tuple]) -> None:
    """The DESIGN.md rule definitions, run in PostgreSQL over the loaded stream."""
    with Writer(db.loader_dsn, batch_rows=5000) as writer:
        writer.write_many(stream)
    assert writer.stats.inserted == len(stream)
    with psycopg.connect(db.dsn) as conn:
        velocity = {(p, f): (flagged, total) for p, f, flagged, total in conn.execute(VELOCITY_SQL)}
        travel = conn.execute(TRAVEL_SQL).fetchall()

    # velocity: every attack reaches 4 within 60 s; busy shoppers and normal traffic never do
    flagged, total = velocity[("velocity", True)]
    assert flagged >= total * 0.4  # the 4th and later purchases of each burst
    assert velocity[("legit_busy_shopper", False)][0] == 0
    assert velocity[(None, False)][0] <= total * 0.01
    episodes = sum(1 for r in stream if r[C["fraud_pattern"]] == "velocity") / 6.5
    assert flagged >= episodes

    # impossible travel: every labelled pair exceeds 100 km and 900 km/h; flights and home traffic do not
    flagged_ids = {txn for txn, _p, km, kmh in travel if km >= 100 and kmh > 900}
    labelled = {r[C["txn_id"]] for r in stream if r[C["fraud_pattern"]] == "impossible_travel"}
    assert labelled and labelled <= flagged_ids
    by_id = {r[C["txn_id"]]: r for r in stream}
    false_alarms = [t for t in flagged_ids - labelled if not by_id[t][C["is_fraud"]]]
    assert false_alarms == []
    flights = [(km, kmh) for _t, p, km, kmh in travel if p == "legit_flight" and km >= 100]
    assert flights and all(kmh < 900 for _km, kmh in flights)


def test_haversine_matches_the_rule() -> None:
    # London -> New York is about 5,570 km
    assert haversine_km(51.5074, -0.1278, 40.7128, -74.0060) == pytest.approx(5570, rel=0.01)


def test_normal_traffic_rarely_looks_cross_border_or_card_testing(stream: list[tuple]) -> None:
    """cross_border: >= 2 country changes within an hour; card_testing: >= 5 amounts <= 5.00 in 10 min."""
    border = testing = normal = 0
    for txns in _by_card(stream).values():
        for k, row in enumerate(txns):
            changes = 0
            small = 0
            for j in range(k, 0, -1):
                gap = (row[C["event_time"]] - txns[j - 1][C["event_time"]]).total_seconds()
                if gap > 3600:
                    break
                changes += txns[j][C["country"]] != txns[j - 1][C["country"]]
            for prev in txns[: k + 1]:
                if (row[C["event_time"]] - prev[C["event_time"]]).total_seconds() <= 600 and prev[C["amount"]] <= 5:
                    small += 1
            if row[C["fraud_pattern"]] is None:
                normal += 1
                border += changes >= 2
                testing += small >= 5 and row[C["amount"]] <= 5
    assert normal > 30_000
    assert border <= normal * 0.002
    assert testing == 0


@pytest.mark.parametrize("config", [
    GeneratorConfig(seed=4, count=5000, late_share=0.1, shares=RICH),
    GeneratorConfig(seed=5, count=3000, rate=2000.0, late_share=0.1, shares=RICH),  # paced
    GeneratorConfig(seed=6, count=3000, sim_rate=2.0, start=datetime(1969, 12, 31, 23, 30, tzinfo=timezone.utc)),
], ids=["unpaced", "paced", "before-1970"])
def test_lines_made_by_the_generator_are_what_the_writer_would_send(config: GeneratorConfig) -> None:
    """`generate_batches` is `generate` with most rows as their COPY line: byte for byte what the
    writer makes of the row, and the row the writer rebuilds from the line."""
    rows = list(generate(config, wall_start=1_700_000_000.0))
    batches = list(generate_batches(config, wall_start=1_700_000_000.0))
    items = [item for batch in batches for item in batch]
    assert len(items) == len(rows) and all(len(batch) <= CHUNK for batch in batches)
    lines = [(row, item) for row, item in zip(rows, items) if isinstance(item, str)]
    assert len(lines) > len(rows) * 0.8
    for row, line in lines:
        assert line + "\n" == format_copy_text([row]).decode()
        assert row_from_line(line) == row
    assert [item for item in items if isinstance(item, tuple)] == [
        row for row, item in zip(rows, items) if isinstance(item, tuple)]
