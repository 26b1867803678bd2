"""Pure parts of the alert listener: sink specs, compaction, gaps, backoff, and the RisingWave and
Materialize statement building, row decoding and resume logic (no such server runs here)."""
from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.listener import Episodes, backoff_delay
from alerts.model import compact, make_alert
from alerts.sinks import FileSink, SinkSpecError, SmtpSink, StdoutSink, WebhookSink, parse_sink, slack_text
from alerts.sources import (
    RwResume,
    contiguous_prefix,
    decode_mz_rows,
    decode_rw_row,
    mz_fetch_statement,
    mz_subscribe_statement,
    rw_declare_statement,
    rw_fetch_statement,
    split_at_frontier,
)

ROW = {"txn_id": "t1", "rule": "velocity", "card_id": "c1", "risk_level": "high", "reason": "5 transactions in 60 s",
       "amount": Decimal("12.50"), "event_time": "2026-01-01T00:00:00+00:00", "merchant_id": "m1"}


def alert(seq: int, op: str, alert_txn: str = "t1", xact: str | None = "100"):
    return make_alert(seq=seq, op=op, row={**ROW, "txn_id": alert_txn}, flagged_at=None, xact=xact)


# ------------------------------------------------------------------------------------- specs

@pytest.mark.parametrize(("spec", "cls", "name"), [
    ("stdout", StdoutSink, "stdout"),
    ("file:/tmp/a.ndjson", FileSink, "file:/tmp/a.ndjson"),
    ("file:alerts=2.ndjson", FileSink, "file:alerts=2.ndjson"),
    ("webhook:http://127.0.0.1:8080/hook?x=1", WebhookSink, "webhook:http://127.0.0.1:8080/hook?x=1"),
    ("ops=webhook:https://hooks.slack.com/services/T/B/X", WebhookSink, "ops"),
    ("smtp://localhost:2525?to=a@x.org,b@x.org&digest=1", SmtpSink, "smtp://localhost:2525?to=a@x.org,b@x.org"),
    ("mail=smtp://localhost:2525?to=a@x.org", SmtpSink, "mail"),
])
def test_sink_specs_parse(spec, cls, name):
    sink = parse_sink(spec)
    assert isinstance(sink, cls)
    assert sink.name == name


def test_sink_spec_details():
    slack = parse_sink("ops=webhook:https://hooks.slack.com/services/T/B/X")
    assert slack.body == "slack"
    smtp = parse_sink("smtp://u:p%40ss@mail:587?to=a@x.org&from=s@x.org&starttls=1&digest=yes")
    assert (smtp.host, smtp.port, smtp.to, smtp.sender, smtp.digest, smtp.starttls) == (
        "mail", 587, ["a@x.org"], "s@x.org", True, True)
    assert (smtp.username, smtp.password) == ("u", "p@ss")


@pytest.mark.parametrize("spec", [
    "", "bogus", "file:", "webhook:", "webhook:ftp://x/y", "webhook:nohost", "smtp://host:25",
    "smtp://host:xx?to=a@b", "smtp://host:25?to=nobody", "smtp://host:25?to=a@b&colour=red",
    "smtp://host:25?to=a@b&digest=maybe", "kafka://broker:9092",
])
def test_malformed_sink_specs_give_one_line(spec):
    with pytest.raises(SinkSpecError) as info:
        parse_sink(spec)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("--sink")


# -------------------------------------------------------------------------------- the alert

def test_alert_carries_the_contract_fields_first():
    a = make_alert(seq=7, op="+", row=ROW, flagged_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert list(a.data)[:11] == ["alert_id", "op", "seq", "txn_id", "card_id", "rule", "risk_level",
                                 "reason", "amount", "event_time", "flagged_at"]
    assert a.alert_id == "t1:velocity"
    assert '"amount":12.5' in a.line and '"flagged_at":"2026-01-01T00:00:00+00:00"' in a.line
    assert "velocity" in slack_text(a) and "12.50" in slack_text(a)


def test_compact_drops_changes_a_transaction_undid():
    # '-' then '+' of one alert in one transaction: an update, no news
    assert compact([alert(1, "-"), alert(2, "+")]) == []
    # '+' then '-' in one transaction: never visible
    assert compact([alert(1, "+"), alert(2, "-")]) == []
    # '+' '-' '+': one '+' (the last)
    assert [a.seq for a in compact([alert(1, "+"), alert(2, "-"), alert(3, "+")])] == [3]
    # different transactions are never merged
    assert [a.seq for a in compact([alert(1, "-", xact="1"), alert(2, "+", xact="2")])] == [1, 2]
    # other alerts keep their order
    mixed = [alert(1, "+", "a"), alert(2, "-", "b"), alert(3, "+", "c"), alert(4, "+", "b")]
    assert [a.seq for a in compact(mixed)] == [1, 3]


@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("xy"), st.sampled_from("+-")), max_size=12))
@settings(max_examples=200, deadline=None)
def test_compact_keeps_net_effect(changes):
    """The compacted stream changes each (transaction, alert) from its first state to its last."""
    alerts = [alert(i, op, txn, xact=x) for i, (txn, x, op) in enumerate(changes)]
    kept = compact(alerts)
    assert [a.seq for a in kept] == sorted(a.seq for a in kept)
    for key in {(a.xact, a.alert_id) for a in alerts}:
        group = [a for a in alerts if (a.xact, a.alert_id) == key]
        survivors = [a for a in kept if (a.xact, a.alert_id) == key]
        if len(group) == 1:
            assert survivors == group
        elif group[0].op == group[-1].op:
            assert survivors == [group[-1]]
        else:
            assert survivors == []


def test_contiguous_prefix():
    assert contiguous_prefix([], 5) == 0
    assert contiguous_prefix([6, 7, 8], 5) == 3
    assert contiguous_prefix([6, 8, 9], 5) == 1
    assert contiguous_prefix([7], 5) == 0


def test_backoff_grows_with_jitter_and_is_capped():
    rng = random.Random(1)
    delays = [backoff_delay(n, base=0.1, cap=5.0, rng=rng) for n in range(1, 20)]
    assert all(0.05 <= d <= 5.0 for d in delays)
    assert delays[0] <= 0.2 and max(delays[-5:]) > 2.5
    assert len({round(d, 6) for d in delays[-5:]}) > 1  # jittered, not a fixed ceiling


def test_episodes_log_once_per_fault(caplog):
    episodes = Episodes(logging.getLogger("alerts.test"))
    with caplog.at_level(logging.WARNING, logger="alerts.test"):
        for _ in range(5):
            episodes.fault("db", "database unreachable")
        episodes.clear("db", "database reachable again")
        episodes.clear("db", "database reachable again")
        episodes.fault("db", "database unreachable")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 2
    assert sum("reachable again" in m and "5 retries" in m for m in messages) == 1


# ------------------------------------------------------------------------------- RisingWave

def test_rw_statements():
    assert rw_declare_statement("cur", "fraud.flagged_transactions_alerts", 1711527245871).as_string(None) == (
        'declare "cur" subscription cursor for "fraud"."flagged_transactions_alerts" since 1711527245871')
    assert rw_declare_statement("cur", "sub", None).as_string(None).endswith("since begin()")
    assert rw_declare_statement("cur", "sub", None, from_now=True).as_string(None).endswith("since now()")
    assert rw_fetch_statement("cur", 100, 1).as_string(None) == "fetch 100 from \"cur\" with (timeout = '1.000s')"


def test_rw_row_decoding():
    columns = ["txn_id", "rule", "card_id", "op", "rw_timestamp"]
    assert decode_rw_row(columns, ("t1", "velocity", "c1", "Insert", 1711527245871)) == (
        1711527245871, "+", {"txn_id": "t1", "rule": "velocity", "card_id": "c1"})
    assert decode_rw_row(columns, ("t1", "velocity", "c1", "UpdateDelete", 5))[1] == "-"
    assert decode_rw_row(columns, ("t1", "velocity", "c1", 1, 5))[1] == "+"  # early versions: op codes
    with pytest.raises(ValueError):
        decode_rw_row(columns, ("t1", "velocity", "c1", "Truncate", 5))


def test_rw_resume_deduplicates_the_inclusive_since():
    resume = RwResume()
    assert resume.admit(10, "a", "+")
    resume.advance([(10, "a", "+"), (12, "b", "+"), (12, "c", "+")])
    assert resume.since_ms == 12
    # a cursor re-declared SINCE 12 returns 12's changes again: only the new ones pass
    assert not resume.admit(12, "b", "+")
    assert not resume.admit(12, "c", "+")
    assert resume.admit(12, "d", "+")
    assert resume.admit(12, "b", "-")  # a retraction at the same time is a different change
    assert not resume.admit(11, "z", "+")
    assert resume.admit(13, "b", "+")
    resume.advance([(13, "b", "+")])
    assert resume.seen_at_since == {"+b"}
    # after a restart only the timestamp survives: changes at it are delivered again (at least once)
    restarted = RwResume(since_ms=13)
    assert restarted.admit(13, "b", "+")


# ------------------------------------------------------------------------------ Materialize

def test_mz_statements():
    assert mz_subscribe_statement("c", "fraud.flagged_transactions", None).as_string(None) == (
        'declare "c" cursor for subscribe "fraud"."flagged_transactions" with (progress)')
    assert mz_subscribe_statement("c", "fraud.flagged_transactions", 1700000000999).as_string(None) == (
        'declare "c" cursor for subscribe "fraud"."flagged_transactions" '
        "with (progress, snapshot = false) as of 1700000000999")
    assert mz_subscribe_statement("c", "v", None, snapshot=False).as_string(None) == (
        'declare "c" cursor for subscribe "v" with (progress, snapshot = false)')
    assert mz_fetch_statement("c", 0.5).as_string(None) == "fetch all \"c\" with (timeout = '0.500s')"


def test_mz_rows_decoding_and_frontier():
    columns = ["mz_timestamp", "mz_progressed", "mz_diff", "txn_id", "rule"]
    rows = [
        (Decimal(100), False, 1, "t1", "velocity"),
        (Decimal(100), False, 2, "t2", "velocity"),
        (Decimal(101), True, None, None, None),
        (Decimal(101), False, -1, "t1", "velocity"),
        (Decimal(105), True, None, None, None),
    ]
    updates, frontier = decode_mz_rows(columns, rows)
    assert frontier == 105
    assert [(ts, op, row["txn_id"]) for ts, op, row in updates] == [
        (100, "+", "t1"), (100, "+", "t2"), (100, "+", "t2"), (101, "-", "t1")]
    assert decode_mz_rows(columns, [])[1] is None


def test_mz_delivers_only_timestamps_closed_by_progress():
    pending = [(100, "+", {"txn_id": "a"}), (101, "-", {"txn_id": "a"}), (105, "+", {"txn_id": "b"})]
    complete, rest = split_at_frontier(pending, 105)
    assert [u[0] for u in complete] == [100, 101] and [u[0] for u in rest] == [105]
    # the position stored is frontier - 1: resuming AS OF it (snapshot false) starts at 105
    assert mz_subscribe_statement("c", "v", 105 - 1).as_string(None).endswith("as of 104")
