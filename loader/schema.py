"""The shape of a transaction row as the loader sends it, and validation of rows from files.

`COLUMNS` is the order of every row tuple the loader produces or writes: the columns of
`fraud.transactions` (DESIGN.md) minus `ingested_at`, which the database stamps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

COLUMNS: tuple[str, ...] = (
    "txn_id",
    "card_id",
    "customer_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "currency",
    "channel",
    "country",
    "lat",
    "lon",
    "device_id",
    "event_time",
    "is_fraud",
    "fraud_pattern",
)
INDEX = {name: i for i, name in enumerate(COLUMNS)}
REQUIRED = ("txn_id", "card_id", "merchant_id", "amount", "event_time")

# Labels: fraud patterns are named as the detection rules they correspond to (CONTRACTS.md).
FRAUD_PATTERNS = (
    "high_value",
    "card_testing",
    "velocity",
    "impossible_travel",
    "account_takeover",
    "cross_border",
    "amount_spike",
)
LOOKALIKE_PATTERNS = ("legit_flight", "legit_busy_shopper")

MAX_AMOUNT = Decimal("9999999999.99")  # numeric(12, 2)
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


class RowError(ValueError):
    """A row that cannot be loaded; the message is the reason written to the rejects file."""


def _text(value: Any) -> str | None:
    """A cell as stripped text, None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def _required(record: Mapping[str, Any], name: str) -> str:
    value = _text(record.get(name))
    if value is None:
        raise RowError(f"{name} is missing")
    if "\x00" in value:
        raise RowError(f"{name} contains a NUL character")
    return value


def _optional(record: Mapping[str, Any], name: str) -> str | None:
    value = _text(record.get(name))
    if value is not None and "\x00" in value:
        raise RowError(f"{name} contains a NUL character")
    return value


def parse_amount(value: Any) -> Decimal:
    """A positive amount that fits numeric(12, 2), rounded to cents as PostgreSQL rounds it (half
    away from zero), so a replayed row holds what an INSERT of the same text would."""
    text = _text(value)
    if text is None:
        raise RowError("amount is missing")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise RowError(f"amount is not a number: {text!r}") from None
    if not amount.is_finite():
        raise RowError(f"amount is not a finite number: {text!r}")
    amount = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if amount <= 0:
        raise RowError(f"amount must be > 0, got {text}")
    if amount > MAX_AMOUNT:
        raise RowError(f"amount too large for numeric(12,2): {text}")
    return amount


def parse_time(value: Any) -> datetime:
    """An ISO 8601 timestamp (naive means UTC) or Unix epoch seconds, as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = _text(value)
    if text is None:
        raise RowError("event_time is missing")
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            seconds = float(text)
            if seconds > 1e11:  # epoch milliseconds
                seconds /= 1000.0
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise RowError(f"event_time is not a timestamp: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def parse_bool(value: Any, name: str) -> bool | None:
    """true/false, t/f, 1/0, yes/no; None when empty."""
    if value is None or isinstance(value, bool):
        return value
    text = _text(value)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise RowError(f"{name} is not a boolean: {text!r}")


def _coordinate(value: Any, name: str, limit: float) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise RowError(f"{name} is not a number: {text!r}") from None
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise RowError(f"{name} out of range -{limit:g}..{limit:g}: {text}")
    return number


def validate(record: Mapping[str, Any]) -> tuple:
    """A record (column name -> value, text or typed) as a row tuple in COLUMNS order; RowError if bad."""
    txn_id = _required(record, "txn_id")
    card_id = _required(record, "card_id")
    merchant_id = _required(record, "merchant_id")
    amount = parse_amount(record.get("amount"))
    currency = (_optional(record, "currency") or "USD").upper()
    if not _CURRENCY.match(currency):
        raise RowError(f"currency is not an ISO 4217 code: {currency!r}")
    country = _optional(record, "country")
    if country is not None:
        country = country.upper()
        if not _COUNTRY.match(country):
            raise RowError(f"country is not an ISO 3166-1 alpha-2 code: {country!r}")
    lat = _coordinate(record.get("lat"), "lat", 90.0)
    lon = _coordinate(record.get("lon"), "lon", 180.0)
    if (lat is None) != (lon is None):
        raise RowError("lat and lon must be given together")
    event_time = parse_time(record.get("event_time"))
    channel = _optional(record, "channel")
    return (
        txn_id,
        card_id,
        _optional(record, "customer_id"),
        merchant_id,
        _optional(record, "merchant_category"),
        amount,
        currency,
        channel.lower() if channel else None,
        country,
        lat,
        lon,
        _optional(record, "device_id"),
        event_time,
        parse_bool(record.get("is_fraud"), "is_fraud"),
        _optional(record, "fraud_pattern"),
    )
