"""Incremental maintenance of dbt models on PostgreSQL: planner (sqlglot) and installer (triggers).

The planner and installer load on first use, so that the loader, which needs only `buckets`,
does not import sqlglot.
"""
from __future__ import annotations

from typing import Any

__all__ = ["DeployResult", "IvmUnsupported", "Plan", "deploy_model", "drop_model", "plan"]

_HOME = {"DeployResult": "install", "deploy_model": "install", "drop_model": "install",
         "IvmUnsupported": "planner", "Plan": "planner", "plan": "planner"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"sentinel.ivm.{_HOME[name]}"), name)
    raise AttributeError(f"module 'sentinel.ivm' has no attribute {name!r}")
