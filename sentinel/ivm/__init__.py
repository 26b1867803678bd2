"""Incremental maintenance of dbt models on PostgreSQL: planner (sqlglot) and installer (triggers)."""
from __future__ import annotations

from sentinel.ivm.install import DeployResult, deploy_model, drop_model
from sentinel.ivm.planner import IvmUnsupported, Plan, plan

__all__ = ["DeployResult", "IvmUnsupported", "Plan", "deploy_model", "drop_model", "plan"]
