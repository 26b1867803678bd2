"""The post-hook macro `sentinel_alert_changelog`, rendered offline for the engines that cannot run
here: RisingWave creates the subscription the listener reads, Materialize retains the history
SUBSCRIBE ... AS OF needs. (On PostgreSQL it runs for real: tests/test_alerts_models.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DBT = Path(sys.executable).with_name("dbt")
INLINE = ("{{ sentinel_alert_changelog(api.Relation.create(database=target.database, schema='fraud', "
          "identifier='flagged_transactions')) }}")


def render(target: str, work: Path) -> str:
    env = {**os.environ, "DBT_POPULATE_CACHE": "false", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    result = subprocess.run(
        [str(DBT), "compile", "--project-dir", str(REPO / "dbt"), "--profiles-dir", str(REPO / "dbt"),
         "--target", target, "--no-introspect", "--target-path", str(work / "target"),
         "--log-path", str(work / "logs"), "--quiet", "--inline", INLINE],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return " ".join(result.stdout.split())


@pytest.mark.parametrize(("target", "expected"), [
    pytest.param("risingwave", "create subscription if not exists fraud.flagged_transactions_alerts from "
                 "\"dev\".\"fraud\".\"flagged_transactions\" with (retention = '7D')",
                 marks=pytest.mark.risingwave),
    pytest.param("materialize", "alter materialized view \"materialize\".\"fraud\".\"flagged_transactions\" "
                 "set (retain history = for '7d')", marks=pytest.mark.materialize),
])
def test_post_hook_per_engine(target, expected, tmp_path):
    assert render(target, tmp_path) == expected
