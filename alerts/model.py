"""What an alert is on the way out: one change of `fraud.flagged_transactions`, keyed by alert_id."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

#: The fields every sink receives first, in this order; the row's other columns follow.
ALERT_FIELDS = (
    "alert_id", "op", "seq", "txn_id", "card_id", "rule", "risk_level", "reason", "amount",
    "event_time", "flagged_at",
)


@dataclass(frozen=True, slots=True)
class Alert:
    """One '+' (newly flagged) or '-' (retracted) row; `seq` orders alerts within their source."""

    seq: int
    alert_id: str
    op: str
    data: dict[str, Any]
    xact: str | None = None  # the writing transaction, to cancel a '-'/'+' pair inside it
    logged_at: datetime | None = None
    line: str = field(default="", compare=False)

    @property
    def is_retraction(self) -> bool:
        return self.op == "-"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def make_alert(*, seq: int, op: str, row: dict[str, Any], flagged_at: datetime | None,
               xact: str | None = None, alert_id: str | None = None) -> Alert:
    """Build the alert for a change of one flagged row (its columns in `row`)."""
    alert_id = alert_id or f"{row.get('txn_id')}:{row.get('rule')}"
    own = {"alert_id": alert_id, "op": op, "seq": seq, "flagged_at": flagged_at}
    data: dict[str, Any] = {key: own[key] if key in own else row.get(key) for key in ALERT_FIELDS}
    for key, value in row.items():
        data.setdefault(key, value)
    line = json.dumps(data, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    return Alert(seq=seq, alert_id=alert_id, op=op, data=data, xact=xact, logged_at=flagged_at,
                 line=line)


def compact(alerts: list[Alert]) -> list[Alert]:
    """Drop changes a transaction undid itself: a '-' then '+' of one alert_id (an update, or a
    delete-and-reinsert by the maintenance) is no news, a '+' then '-' was never visible."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, alert in enumerate(alerts):
        if alert.xact is not None:
            groups.setdefault((alert.xact, alert.alert_id), []).append(index)
    drop: set[int] = set()
    for indexes in groups.values():
        if len(indexes) < 2:
            continue
        first, last = alerts[indexes[0]], alerts[indexes[-1]]
        keep = {indexes[-1]} if first.op == last.op else set()
        drop.update(i for i in indexes if i not in keep)
    if not drop:
        return alerts
    return [alert for index, alert in enumerate(alerts) if index not in drop]
