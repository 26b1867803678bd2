"""Where Sentinel's engine is: the embedded server under SENTINEL_HOME, or any server by DSN."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sentinel.errors import SentinelError

DEFAULT_PORT = 54329
ROLES = ("owner", "loader", "analyst")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration, built once per command from the environment and options."""

    home: Path
    port: int
    dsn: str | None = None

    @classmethod
    def from_env(cls, *, home: str | Path | None = None, dsn: str | None = None,
                 port: int | None = None) -> Settings:
        home = Path(home or os.environ.get("SENTINEL_HOME") or ".sentinel").expanduser().absolute()
        dsn = dsn or os.environ.get("SENTINEL_DSN") or None
        raw_port = port if port is not None else os.environ.get("SENTINEL_PORT", DEFAULT_PORT)
        try:
            port = int(raw_port)
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise SentinelError(f"SENTINEL_PORT={raw_port!r} is not a TCP port (1-65535)") from None
        return cls(home=home, port=port, dsn=dsn)

    @property
    def embedded(self) -> bool:
        """True when commands use the embedded engine rather than SENTINEL_DSN."""
        return self.dsn is None

    def engine(self):
        """The embedded engine handle for this home (not started)."""
        from sentinel.engine import EmbeddedEngine

        return EmbeddedEngine(self.home, port=self.port)


def resolve_dsn(role: str = "owner", *, settings: Settings | None = None, dsn: str | None = None) -> str:
    """The DSN a command should use for `role`: an explicit `dsn`, SENTINEL_DSN, or the running embedded engine's."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if dsn:
        return dsn
    settings = settings or Settings.from_env()
    if settings.dsn:
        return settings.dsn
    return settings.engine().dsn(role, require_running=True)
