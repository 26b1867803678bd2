"""Applying `sql/<engine>/*.sql` (idempotent DDL: source table, engine objects, roles)."""
from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from sentinel.errors import SentinelError, one_line

SQL_ROOT = Path(__file__).resolve().parent.parent / "sql"
APPLY_LOCK_KEY = 0x5E171E1  # advisory lock: two concurrent `sentinel up` apply one after the other


def sql_files(engine: str = "postgres") -> list[Path]:
    """The engine's DDL files in the order they are applied (by name)."""
    folder = SQL_ROOT / engine
    if not folder.is_dir():
        raise SentinelError(f"no SQL for engine {engine!r} in {folder}")
    return sorted(folder.glob("*.sql"))


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """Connect, turning connection failures into one clear line."""
    try:
        return psycopg.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise SentinelError(f"cannot connect to {redact(dsn)}: {one_line(exc)}") from None
    except psycopg.ProgrammingError as exc:
        raise SentinelError(f"invalid DSN {redact(dsn)!r}: {exc}") from None


def detect_engine(conn: psycopg.Connection) -> str:
    """'postgres', 'risingwave' or 'materialize', from the server's version string."""
    version = conn.execute("select version()").fetchone()[0].lower()
    if "risingwave" in version:
        return "risingwave"
    if "materialize" in version:
        return "materialize"
    return "postgres"


def redact(dsn: str) -> str:
    """The DSN with its password hidden, for messages."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    if parts.get("password"):
        parts["password"] = "***"
    return make_conninfo(**parts)


def statements(text: str) -> list[str]:
    """Split a DDL file without function bodies into statements (RisingWave/Materialize files)."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def apply(dsn: str, *, engine: str = "postgres", role_passwords: dict[str, str] | None = None) -> list[str]:
    """Apply every SQL file of the engine; returns the files applied.

    On PostgreSQL all files run in one transaction under an advisory lock (a concurrent `sentinel up`
    waits). RisingWave and Materialize have neither multi-statement DDL transactions nor advisory
    locks: there each statement runs on its own (every file is idempotent).
    """
    files = sql_files(engine)
    if engine != "postgres":
        with connect(dsn, autocommit=True) as conn:
            for path in files:
                for stmt in statements(path.read_text()):
                    try:
                        conn.execute(stmt)
                    except psycopg.Error as exc:
                        raise SentinelError(f"{path.relative_to(SQL_ROOT.parent)}: {exc.diag.message_primary or exc}") from None
        return [p.name for p in files]
    with connect(dsn) as conn:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (APPLY_LOCK_KEY,))
            for path in files:
                try:
                    conn.execute(path.read_text())
                except psycopg.Error as exc:
                    raise SentinelError(f"{path.relative_to(SQL_ROOT.parent)}: {exc.diag.message_primary or exc}") from None
            for role, password in (role_passwords or {}).items():
                conn.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(password)))
    return [p.name for p in files]
