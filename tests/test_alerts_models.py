"""End to end on the deployed dbt project: the post-hook installs the change log, and rows the
loader role inserts reach a sink as alerts — including a retraction caused by a late event."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from alerts.listener import Listener
from alerts.sinks import FileSink
from fixtures.alerts import read_ndjson, wait_until
from tests.fixtures.models import libpq_env, run_dbt

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)


def insert(dsn: str, txn_id: str, card_id: str, *, amount: str = "20.00", at: float = 0,
           where: tuple[float, float] | None = None) -> None:
    lat, lon = where or (None, None)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into fraud.transactions (txn_id, card_id, merchant_id, merchant_category, amount, "
            "channel, country, lat, lon, event_time) values (%s, %s, 'm-1', 'travel', %s, 'pos', 'US', %s, %s, %s)",
            (txn_id, card_id, Decimal(amount), lat, lon, T0 + timedelta(seconds=at)),
        )


@pytest.mark.slow
def test_deployed_models_alert_end_to_end(db, tmp_path):
    run_dbt("run", work=tmp_path, env=libpq_env(db.dsn))
    with psycopg.connect(db.dsn) as conn:
        triggers = {name for (name,) in conn.execute(
            "select tgname from pg_trigger where tgrelid = 'fraud.flagged_transactions'::regclass")}
    assert {"sentinel_alerts_log_insert", "sentinel_alerts_log_delete", "sentinel_alerts_log_update"} <= triggers

    path = tmp_path / "e2e.ndjson"
    listener = Listener(db.dsn, [FileSink(str(path))], from_now=True, poll_interval=0.5)
    assert listener.open() == []
    listener.start()
    try:
        insert(db.loader_dsn, "e2e-hv", "card-hv", amount="2500.00")
        insert(db.loader_dsn, "e2e-it1", "card-it", at=0, where=PARIS)
        insert(db.loader_dsn, "e2e-it2", "card-it", at=600, where=NEW_YORK)
        assert wait_until(lambda: {(a["op"], a["alert_id"]) for a in read_ndjson(path)} >= {
            ("+", "e2e-hv:high_value"), ("+", "e2e-it2:impossible_travel")})
        # a late event in New York between the two: e2e-it2 now follows it (0 km) and is no longer
        # flagged (a retraction), while the late event itself is Paris -> New York in 5 min
        insert(db.loader_dsn, "e2e-it3", "card-it", at=300, where=NEW_YORK)
        assert wait_until(lambda: {(a["op"], a["alert_id"]) for a in read_ndjson(path)} >= {
            ("-", "e2e-it2:impossible_travel"), ("+", "e2e-it3:impossible_travel")})
    finally:
        listener.stop()
    alerts = read_ndjson(path)
    by_key = {(a["op"], a["alert_id"]): a for a in alerts}
    high = by_key[("+", "e2e-hv:high_value")]
    assert high["card_id"] == "card-hv" and high["amount"] == 2500.0 and high["reason"]
    assert high["risk_level"] in ("low", "medium", "high", "critical")
    travel = by_key[("+", "e2e-it3:impossible_travel")]
    assert "km/h" in travel["reason"]
    assert [a["seq"] for a in alerts] == sorted(a["seq"] for a in alerts)
    with psycopg.connect(db.dsn) as conn:
        flagged = {f"{t}:{r}" for t, r in conn.execute("select txn_id, rule from fraud.flagged_transactions")}
    # what is flagged now is exactly what was alerted and not retracted
    net = set()
    for a in alerts:
        (net.add if a["op"] == "+" else net.discard)(a["alert_id"])
    assert net == flagged
