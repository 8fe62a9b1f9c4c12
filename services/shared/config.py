"""Configuration from the environment, with casts and defaults.

A bad value stops the process at start with a message that names the variable
and says what was expected; nothing falls back silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_PORTS = {"leads": 50051, "bookings": 50052, "messaging": 50053, "gateway": 8080}


class ConfigError(Exception):
    """A variable is set to a value the process cannot use."""


class Env:
    """Reads variables from a mapping (the process environment by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def get(self, name: str, cast: Callable[[str], T], default: T) -> T:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return cast(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None

    def str(self, name: str, default: str = "") -> str:
        return self.get(name, str, default)


def integer(low: int, high: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return cast


def number(low: float, high: float) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return cast


def tokens(raw: str) -> dict[str, str]:
    """`principal:token,principal:token` → {token: principal}."""
    found: dict[str, str] = {}
    for i, entry in enumerate(raw.split(",")):
        principal, sep, token = entry.strip().partition(":")
        if not sep or not principal.strip() or not token.strip():
            raise ValueError(f"entry {i + 1} is not `principal:token`")
        if len(token.strip()) < 16:
            raise ValueError(f"the token of {principal.strip()!r} is shorter than 16 characters")
        if token.strip() in found:
            raise ValueError(f"the token of {principal.strip()!r} is given twice")
        found[token.strip()] = principal.strip()
    return found


def readable_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError("no such file")
    return path


@dataclass(frozen=True)
class TLS:
    cert: Path | None
    key: Path | None
    ca: Path | None

    @property
    def serving(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class Settings:
    """Everything a service process reads from its environment."""

    service: str
    tokens: dict[str, str] = field(repr=False)
    data_dir: Path
    database_url: str
    targets: dict[str, str]
    service_token: str = field(repr=False)
    idempotency_ttl: int = 86400
    event_retention: int = 7 * 86400
    heartbeat_seconds: float = 15.0
    event_ring_size: int = 4096
    shutdown_grace: float = 10.0
    shutdown_drain: float = 1.0
    housekeeping_seconds: float = 60.0
    bind_host: str = "127.0.0.1"
    db_pool_size: int = 10
    default_region: str = "US"
    metrics_port: int | None = None
    tls: TLS = TLS(None, None, None)
    public_url: str = "http://127.0.0.1:8080"
    log_level: str = "INFO"
    # Everything it was read from, for a service's own settings.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        data_dir = Path(env.str("CRM_DATA_DIR", "var"))
        accepted: dict[str, str] = env.get("CRM_API_TOKENS", tokens, {})
        url = env.str(f"{service.upper()}_DATABASE_URL") or env.str("CRM_DATABASE_URL")
        if not url:
            url = f"sqlite+aiosqlite:///{data_dir / f'{service}.db'}"
        url = normalize_database_url(url, f"{service.upper()}_DATABASE_URL")
        tls = TLS(
            env.get("CRM_TLS_CERT", readable_file, None),
            env.get("CRM_TLS_KEY", readable_file, None),
            env.get("CRM_TLS_CA", readable_file, None),
        )
        if (tls.cert is None) != (tls.key is None):
            raise ConfigError("CRM_TLS_CERT and CRM_TLS_KEY: set both or neither")
        return cls(
            service=service,
            tokens=accepted,
            data_dir=data_dir,
            database_url=url,
            targets=service_targets(env),
            service_token=env.str("CRM_SERVICE_TOKEN") or own_token(accepted, service),
            idempotency_ttl=env.get("CRM_IDEMPOTENCY_TTL_SECONDS", integer(1, 30 * 86400), 86400),
            event_retention=env.get(
                "CRM_EVENT_RETENTION_SECONDS", integer(60, 365 * 86400), 7 * 86400
            ),
            heartbeat_seconds=env.get("CRM_HEARTBEAT_SECONDS", number(0.05, 300), 15.0),
            event_ring_size=env.get("CRM_EVENT_RING_SIZE", integer(1, 1_000_000), 4096),
            shutdown_grace=env.get("CRM_SHUTDOWN_GRACE_SECONDS", number(0, 300), 10.0),
            shutdown_drain=env.get("CRM_SHUTDOWN_DRAIN_SECONDS", number(0, 60), 1.0),
            housekeeping_seconds=env.get("CRM_HOUSEKEEPING_SECONDS", number(0.05, 86400), 60.0),
            bind_host=env.str("CRM_BIND_HOST", "127.0.0.1"),
            db_pool_size=env.get("CRM_DB_POOL_SIZE", integer(1, 100), 10),
            default_region=env.get("CRM_DEFAULT_REGION", region, "US"),
            metrics_port=env.get("CRM_METRICS_PORT", integer(0, 65535), None),
            tls=tls,
            public_url=env.str("CRM_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"),
            log_level=env.get("CRM_LOG_LEVEL", log_level, "INFO"),
            environ=dict(env.environ),
        )


def service_targets(env: Env) -> dict[str, str]:
    return {
        name: env.str(f"CRM_{name.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[name]}")
        for name in ("leads", "bookings", "messaging")
    }


def own_token(accepted: Mapping[str, str], principal: str) -> str:
    """The token this process presents to other services: its own principal's."""
    return next((token for token, who in accepted.items() if who == principal), "")


def region(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("expected a two-letter region code, such as US")
    return raw.upper()


def log_level(raw: str) -> str:
    if raw.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return raw.upper()


def normalize_database_url(url: str, name: str) -> str:
    """Accept the usual spellings and pick the async drivers this project uses."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"{name}={url!r}: expected a URL such as postgresql://host/db")
    base = scheme.split("+")[0]
    if base in {"postgres", "postgresql"}:
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ConfigError(f"{name}={url!r}: only postgresql:// and sqlite:// are supported")
