"""Registers Sentinel's dbt adapter as `dbt.adapters.sentinel` (copied here at install time)."""
from sentinel.dbt_adapter import Plugin  # noqa: F401
