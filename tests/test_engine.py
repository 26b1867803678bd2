"""`sentinel up/down/status/dsn` on its own embedded engine: lifecycle, data kept, clear errors."""
from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from sentinel.engine import free_port

SENTINEL = [sys.executable, "-m", "sentinel.cli"]


def run(home: Path, *args: str, port: int | None = None, env: dict | None = None, timeout: float = 120):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PG"))}
    environ.update(SENTINEL_HOME=str(home), **(env or {}))
    if port is not None:
        environ["SENTINEL_PORT"] = str(port)
    return subprocess.run([*SENTINEL, *args], capture_output=True, text=True, env=environ, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    yield path
    run(path, "down")


def test_up_down_up_keeps_data(home):
    port = free_port()
    started = time.monotonic()
    first = run(home, "up", "--no-models", port=port)
    assert first.returncode == 0, first.stderr
    dsn = first.stdout.strip()
    assert dsn.startswith("postgresql://sentinel:") and f"127.0.0.1:{port}/sentinel" in dsn
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into fraud.transactions (txn_id, card_id, merchant_id, amount, event_time)"
                     " values ('keep-me', 'c', 'm', 9.99, now())")
    assert run(home, "dsn").stdout.strip() == dsn
    again = run(home, "up", "--no-models", port=port)  # reuse: no second server, nothing lost
    assert again.returncode == 0 and "already running" in again.stderr
    assert run(home, "down").returncode == 0
    assert "running: False" in run(home, "status").stderr.replace("  ", "")
    down_dsn = run(home, "dsn")
    assert "not running; run `sentinel up` first" in one_line_error(down_dsn)
    third = run(home, "up", "--no-models", port=port)
    assert third.returncode == 0, third.stderr
    with psycopg.connect(third.stdout.strip()) as conn:
        assert conn.execute("select txn_id from fraud.transactions").fetchall() == [("keep-me",)]
    assert time.monotonic() - started < 120
    env_lines = run(home, "dsn", "--role", "analyst", "--env").stdout
    assert "export PGUSER=sentinel_analyst" in env_lines and f"export PGPORT={port}" in env_lines


def test_server_never_runs_as_root_and_listens_on_loopback_only(home):
    port = free_port()
    assert run(home, "up", "--no-models", port=port).returncode == 0
    pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid != 0
    conf = (home / "pgdata" / "sentinel.conf").read_text()
    assert "listen_addresses = '127.0.0.1'" in conf
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_port_in_use_is_one_clear_line(home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(run(home, "up", "--no-models", port=port))
    assert f"port {port}" in line and "SENTINEL_PORT" in line


def test_concurrent_ups_start_one_server(home):
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PG"))}
    environ.update(SENTINEL_HOME=str(home), SENTINEL_PORT=str(port))
    procs = [subprocess.Popen([*SENTINEL, "up", "--no-models"], env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert len({out.strip() for out, _ in results}) == 1
    assert sum("engine started" in err for _, err in results) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another user")
def test_data_directory_owned_by_someone_else(home):
    pgdata = home / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("18\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(pgdata, nobody.pw_uid, nobody.pw_gid)
    line = one_line_error(run(home, "up", "--no-models", port=free_port()))
    assert "belongs to nobody" in line
    assert (pgdata / "PG_VERSION").read_text() == "18\n"  # nothing touched


def test_not_a_data_directory(home):
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "precious.txt").write_text("mine")
    line = one_line_error(run(home, "up", "--no-models", port=free_port()))
    assert "not a PostgreSQL data directory" in line
    assert (home / "pgdata" / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://nobody@127.0.0.1:1/nothing", "cannot connect to"),
    ("host=127.0.0.1 port=notaport", "cannot connect to"),
    ("this is not a dsn", "invalid DSN"),
])
def test_bad_dsn_is_one_clear_line(tmp_path, dsn, expected):
    line = one_line_error(run(tmp_path, "up", "--no-models", env={"SENTINEL_DSN": dsn}))
    assert expected in line
    assert not (tmp_path / "pgdata").exists()  # SENTINEL_DSN set: nothing embedded is started


def test_bad_port_setting(tmp_path):
    assert "not a TCP port" in one_line_error(run(tmp_path, "status", env={"SENTINEL_PORT": "http"}))


def test_sentinel_dsn_works_with_external_server(engine, tmp_path):
    result = run(tmp_path, "up", "--no-models", env={"SENTINEL_DSN": engine.admin_dsn})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == engine.admin_dsn
    assert run(tmp_path, "dsn", env={"SENTINEL_DSN": engine.admin_dsn}).stdout.strip() == engine.admin_dsn
    assert "SENTINEL_DSN is set" in one_line_error(run(tmp_path, "down", env={"SENTINEL_DSN": engine.admin_dsn}))


def test_status_as_a_role_that_may_not_read(db, tmp_path):
    result = run(tmp_path, "status", "--json", env={"SENTINEL_DSN": db.loader_dsn})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["engine"] == "external" and "permission denied" in info["database"]
