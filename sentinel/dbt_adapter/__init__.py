"""The dbt adapter `sentinel`: PostgreSQL plus the `materialized_view` materialization kept current by triggers.

dbt loads Python only as adapter plugins, and the planner (sqlglot) must run inside dbt, so the
`postgres` target of dbt/profiles.yml has `type: sentinel`. Everything else is dbt-postgres.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbt.adapters.base import AdapterPlugin, available
from dbt.adapters.postgres import PostgresAdapter, PostgresConnectionManager, PostgresCredentials
from dbt_common.exceptions import DbtRuntimeError

from sentinel.ivm import IvmUnsupported, deploy_model, online
from sentinel.ivm.install import btree_indexes, index_columns

INCLUDE_PATH = str(Path(__file__).parent / "include")


@dataclass
class SentinelCredentials(PostgresCredentials):
    """PostgreSQL credentials under the adapter type `sentinel`."""

    @property
    def type(self) -> str:
        return "sentinel"


class SentinelConnectionManager(PostgresConnectionManager):
    """dbt-postgres' connections, registered under the type `sentinel`."""

    TYPE = "sentinel"


class SentinelAdapter(PostgresAdapter):
    """PostgresAdapter with the incremental-maintenance hooks the materialization calls."""

    ConnectionManager = SentinelConnectionManager

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sentinel_online: dict[str, online.Staged] = {}  # relation -> its deploy, until `sentinel_ivm_finish`

    @classmethod
    def type(cls) -> str:
        return "sentinel"

    @available
    def sentinel_ivm_deploy(self, model: str, relation: Any, sql: str, unique_key: Any = None,
                            indexes: list[dict] | None = None) -> str:
        """Plan and install a maintained model in dbt's open transaction; return a log message."""
        conn = self.connections.get_thread_connection()
        if not conn.transaction_open:
            self.connections.begin()
        keys = [unique_key] if isinstance(unique_key, str) else list(unique_key or [])
        rel = f"{relation.schema}.{relation.identifier}"
        creds = conn.credentials

        def connect() -> Any:
            """A connection of the deploy's own for the online backfill (the same role and database)."""
            import psycopg

            return psycopg.connect(host=creds.host, port=creds.port, user=creds.user, password=creds.password,
                                   dbname=creds.database, sslmode=creds.sslmode or "prefer",
                                   application_name="sentinel dbt online backfill", connect_timeout=30)

        try:
            with conn.handle.cursor() as cur:
                result = deploy_model(cur, model=model, relation=rel, sql=sql, unique_key=keys, connect=connect,
                                      indexes=list(indexes or []))
        except IvmUnsupported as e:
            raise DbtRuntimeError(str(e)) from None
        if result.online is not None:
            self._sentinel_online[rel] = result.online
        return result.message()

    @available
    def sentinel_ivm_finish(self, relation: Any) -> str:
        """After the materialization's commit: drop an online deploy's capture and staging tables
        (not under the switch's lock, which holds writers)."""
        staged = self._sentinel_online.pop(f"{relation.schema}.{relation.identifier}", None)
        if staged is not None:
            online.finish(staged)
        return ""

    @available
    def sentinel_index_covered(self, relation: Any, index: dict) -> bool:
        """True when an index the materialization made already serves `index` (a dbt index config).

        It does when its leading columns are the requested ones and, for a unique request, it is
        unique on exactly them. A second copy would only slow every maintained write down.
        """
        cols = index_columns(index)
        if not cols or index.get("type") not in (None, "btree"):
            return False
        conn = self.connections.get_thread_connection()
        with conn.handle.cursor() as cur:
            existing = btree_indexes(cur, f"{relation.schema}.{relation.identifier}")
        want_unique = bool(index.get("unique"))
        return any(have[:len(cols)] == cols and (not want_unique or (unique and len(have) == len(cols)))
                   for _name, unique, have in existing)


Plugin = AdapterPlugin(
    adapter=SentinelAdapter,  # type: ignore[arg-type]
    credentials=SentinelCredentials,
    include_path=INCLUDE_PATH,
    project_name="dbt_sentinel",
    dependencies=["postgres"],
)
