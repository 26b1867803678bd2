"""Replay: every class of bad row is rejected with its line and reason, the rest loads, twice is once."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from loader.load import load
from loader.replay import Rejects, ReplayError, parse_map, replay
from loader.writer import Writer

REPO = Path(__file__).resolve().parent.parent
HEADER = "txn_id,card_id,customer_id,merchant_id,merchant_category,amount,currency,channel,country,lat,lon,device_id,event_time,is_fraud,fraud_pattern"

GOOD = [
    "g1,c1,cu1,m1,grocery,12.50,USD,pos,US,40.7,-74.0,d1,2025-01-06T10:00:00Z,false,",
    "g2,c1,cu1,m2,retail,99.99,,ecom,us,,,d1,2025-01-06 10:05:00,f,",
    "g3,c2,,m3,,2500,EUR,pos,FR,48.85,2.35,,1736157600,true,high_value",
    'g4,c3,,"m4, the shop",grocery,1.005,USD,pos,DE,52.5,13.4,,2025-01-06T10:00:00+01:00,,',
]
# (line content, expected words in the reason)
BAD = [
    (",c1,,m1,,10,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "txn_id is missing"),
    ("b2,  ,,m1,,10,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "card_id is missing"),
    ("b3,c1,,,,10,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "merchant_id is missing"),
    ("b4,c1,,m1,,ten,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "amount is not a number"),
    ("b5,c1,,m1,,-5,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "amount must be > 0"),
    ("b6,c1,,m1,,0,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "amount must be > 0"),
    ("b7,c1,,m1,,1e12,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "amount too large"),
    ("b8,c1,,m1,,10,US,pos,US,,,,2025-01-06T10:00:00Z,,", "currency"),
    ("b9,c1,,m1,,10,USD,pos,USA,,,,2025-01-06T10:00:00Z,,", "country"),
    ("b10,c1,,m1,,10,USD,pos,US,40.7,,,2025-01-06T10:00:00Z,,", "lat and lon must be given together"),
    ("b11,c1,,m1,,10,USD,pos,US,91,0,,2025-01-06T10:00:00Z,,", "lat out of range"),
    ("b12,c1,,m1,,10,USD,pos,US,0,181,,2025-01-06T10:00:00Z,,", "lon out of range"),
    ("b13,c1,,m1,,10,USD,pos,US,,,,yesterday,,", "event_time is not a timestamp"),
    ("b14,c1,,m1,,10,USD,pos,US,,,,,,", "event_time is missing"),
    ("b15,c1,,m1,,10,USD,pos,US,,,,2025-01-06T10:00:00Z,maybe,", "is_fraud is not a boolean"),
    ("b16,c1,,m1,,10,USD,pos,US", "expected 15 fields, got 9"),
    ("b17,c1,,m1,,nan,USD,pos,US,,,,2025-01-06T10:00:00Z,,", "amount is not a finite number"),
]


def _write_csv(path: Path) -> list[int]:
    """The test file, good and bad rows interleaved; returns the line numbers of the bad rows."""
    lines = [HEADER]
    bad_lines = []
    for i, (bad, _reason) in enumerate(BAD):
        lines.append(GOOD[i % len(GOOD)].replace(f"g{i % len(GOOD) + 1},", f"g{i % len(GOOD) + 1}x{i},", 1))
        lines.append(bad)
        bad_lines.append(len(lines))
    lines.extend(GOOD)
    path.write_text("\n".join(lines) + "\n")
    return bad_lines


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select count(*) from fraud.transactions").fetchone()[0]


def test_every_bad_row_is_rejected_with_line_and_reason_and_the_rest_loads(db, tmp_path: Path) -> None:
    path = tmp_path / "txns.csv"
    bad_lines = _write_csv(path)
    rejects = Rejects(tmp_path / "rejects.ndjson")
    summary = load(replay(path, rejects=rejects), Writer(db.loader_dsn, batch_rows=7), rejects=rejects)
    rejects.close()
    good = len(BAD) + len(GOOD)
    assert summary.loaded == good
    assert summary.rejected == len(BAD)
    assert summary.read == good + len(BAD) == summary.loaded + summary.rejected + summary.duplicates
    assert _count(db.dsn) == good
    entries = [json.loads(line) for line in (tmp_path / "rejects.ndjson").read_text().splitlines()]
    assert [e["line"] for e in entries] == bad_lines
    for entry, (_bad, reason) in zip(entries, BAD):
        assert reason in entry["reason"]
    with psycopg.connect(db.dsn) as conn:
        # 1.005 rounded to cents as numeric(12,2) rounds it; +01:00 taken into account
        assert conn.execute(
            "select amount = 1.005::numeric(12, 2), amount, country, event_time = '2025-01-06T09:00:00Z' "
            "from fraud.transactions where txn_id = 'g4'").fetchone() == (True, Decimal("1.01"), "DE", True)
        assert conn.execute("select currency, country from fraud.transactions where txn_id = 'g2'").fetchone() == ("USD", "US")


def test_replayed_twice_leaves_no_duplicate(db, tmp_path: Path) -> None:
    path = tmp_path / "txns.csv"
    _write_csv(path)
    first = load(replay(path), Writer(db.loader_dsn))
    second = load(replay(path), Writer(db.loader_dsn))
    assert first.loaded == second.duplicates == _count(db.dsn) == len(BAD) + len(GOOD)
    assert second.loaded == 0


def test_gzip_ndjson_with_map_and_bad_json(db, tmp_path: Path) -> None:
    path = tmp_path / "kaggle.ndjson.gz"
    records = [
        {"trans_num": f"k{i}", "cc_num": 4000 + i % 3, "merchant": "fraud_Kirlin", "amt": 10.5 + i,
         "trans_date_trans_time": f"2019-01-01 00:{i:02d}:18", "lat": 36.07, "long": -81.17,
         "is_fraud": i % 2, "category": "misc_net"}
        for i in range(20)
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(5, "{not json")
    lines.insert(9, "[1, 2]")
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    mapping = parse_map(["txn_id=trans_num,card_id=cc_num", "merchant_id=merchant", "amount=amt",
                         "event_time=trans_date_trans_time", "lon=long", "merchant_category=category"])
    rejects = Rejects(tmp_path / "rejects.ndjson")
    summary = load(replay(path, mapping=mapping, rejects=rejects), Writer(db.loader_dsn), rejects=rejects)
    rejects.close()
    assert (summary.loaded, summary.rejected, summary.read) == (20, 2, 22)
    reasons = [json.loads(x) for x in (tmp_path / "rejects.ndjson").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in reasons] == [(6, "not valid JSON"), (10, "not a JSON object")]
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("select count(*) filter (where is_fraud), count(distinct card_id) "
                            "from fraud.transactions").fetchone() == (10, 3)


def test_header_without_required_column_fails_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,card,amount\n1,2,3\n")
    with pytest.raises(ReplayError, match="no column txn_id"):
        next(replay(path))
    with pytest.raises(ReplayError, match="not a column"):
        parse_map(["txnid=id"])


def test_cli_replay_reports_and_exits_cleanly(db, tmp_path: Path) -> None:
    path = tmp_path / "txns.csv"
    _write_csv(path)
    cmd = [sys.executable, "-m", "loader.cli", "--dsn", db.loader_dsn, "--from", str(path), "--json", "-q"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["loaded"], summary["rejected"], summary["duplicates"]) == (len(BAD) + len(GOOD), len(BAD), 0)
    assert summary["read"] == 2 * len(BAD) + len(GOOD)
    assert Path(summary["rejects_file"]).exists()
    missing = subprocess.run([sys.executable, "-m", "loader.cli", "--dsn", db.loader_dsn, "--from",
                              str(tmp_path / "nope.csv")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert "no such file" in missing.stderr


def test_speedup_replays_at_the_files_own_pace_and_rate_paces_rows(db, tmp_path: Path) -> None:
    import time

    path = tmp_path / "paced.ndjson"
    path.write_text("".join(
        json.dumps({"txn_id": f"p{i}", "card_id": "c", "merchant_id": "m", "amount": "1.00",
                    "event_time": f"2025-01-06T00:00:{i * 2:02d}Z"}) + "\n"
        for i in range(5)
    ))  # 8 s of event time
    started = time.monotonic()
    summary = load(replay(path), Writer(db.loader_dsn), speedup=8.0)
    assert summary.loaded == 5
    assert 0.9 <= time.monotonic() - started < 3.0
    started = time.monotonic()
    summary = load(replay(path), Writer(db.loader_dsn), rate=5.0)
    assert summary.duplicates == 5
    assert 0.7 <= time.monotonic() - started < 3.0  # 5 rows at 5 rows/s: the last leaves at 0.8 s
