"""Fixtures: a real PostgreSQL (Sentinel's embedded engine, or --dsn) and a fresh database per test."""
from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sentinel import schema
from sentinel.engine import EmbeddedEngine, free_port

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--dsn", default=os.environ.get("SENTINEL_TEST_DSN"),
                     help="run against this PostgreSQL superuser DSN instead of starting the embedded engine "
                          "[env SENTINEL_TEST_DSN]")


@dataclass(frozen=True)
class Server:
    """A running PostgreSQL the suite may create databases on."""

    admin_dsn: str  # superuser, database `postgres`
    passwords: dict[str, str]  # role -> password for sentinel_loader / sentinel_analyst
    engine: EmbeddedEngine | None = None

    def dsn_for(self, dbname: str, *, user: str | None = None, password: str | None = None) -> str:
        parts = conninfo_to_dict(self.admin_dsn)
        parts["dbname"] = dbname
        if user:
            parts["user"] = user
            parts["password"] = password
        return make_conninfo(**parts)


@dataclass(frozen=True)
class Database:
    """A fresh database with every sql/postgres file applied."""

    dbname: str
    dsn: str  # owner (superuser)
    loader_dsn: str
    analyst_dsn: str
    server: Server


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL for the whole session: the embedded engine in a temp home, or --dsn."""
    external = request.config.getoption("--dsn")
    if external:
        parts = conninfo_to_dict(external)
        parts["dbname"] = "postgres"
        passwords = {"sentinel_loader": secrets.token_urlsafe(12), "sentinel_analyst": secrets.token_urlsafe(12)}
        yield Server(admin_dsn=make_conninfo(**parts), passwords=passwords)
        return
    home = tmp_path_factory.mktemp("sentinel-home")
    eng = EmbeddedEngine(home, port=free_port())
    eng.up()
    try:
        yield Server(admin_dsn=eng.dsn("owner", dbname="postgres"), passwords=eng.role_passwords(), engine=eng)
    finally:
        eng.down()


def create_database(server: Server, *, apply_sql: bool = True, options: str = "") -> Database:
    """Create a uniquely named database (sql/ applied) on the server; `options` follow `create database`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {} ").format(sql.Identifier(name)) + sql.SQL(options))
    dsn = server.dsn_for(name)
    if apply_sql:
        schema.apply(dsn, role_passwords=server.passwords)
    return Database(
        dbname=name,
        dsn=dsn,
        loader_dsn=server.dsn_for(name, user="sentinel_loader", password=server.passwords["sentinel_loader"]),
        analyst_dsn=server.dsn_for(name, user="sentinel_analyst", password=server.passwords["sentinel_analyst"]),
        server=server,
    )


def drop_database(server: Server, name: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _fresh_database(server: Server, options: str = ""):
    database = create_database(server, options=options)
    try:
        yield database
    finally:
        drop_database(server, database.dbname)


@pytest.fixture
def db(engine: Server):
    """A fresh database with sql/postgres applied; dropped after the test."""
    yield from _fresh_database(engine)


@pytest.fixture(scope="module")
def module_db(engine: Server):
    """Like `db`, shared by a module's tests (for expensive set-up such as `dbt run`)."""
    yield from _fresh_database(engine)


# A default collation that does not order text bytewise (code points: the same order for ASCII, but
# not COLLATE "C" to the planner): the window groups then leave their members' tie-breaks unshared.
NON_BYTEWISE = "template template0 locale_provider builtin builtin_locale 'C.UTF-8'"


@pytest.fixture(scope="module", params=["bytewise", "code-point"])
def module_db_collations(request: pytest.FixtureRequest, engine: Server):
    """Like `module_db`, once with the engine's bytewise default collation and once without (the
    builtin provider needs PostgreSQL 17 or later: on an older --dsn server that case is skipped)."""
    if request.param != "bytewise":
        with psycopg.connect(engine.admin_dsn) as conn:
            if conn.info.server_version < 170000:
                pytest.skip("the builtin collation provider needs PostgreSQL 17+")
    yield from _fresh_database(engine, "" if request.param == "bytewise" else NON_BYTEWISE)
