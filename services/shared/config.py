"""Configuration from the environment, with casts and defaults.

A bad value stops the process at start with a message that names the variable
(and, in a list, the entry: by position, or by principal) and says what was
expected. It never repeats the value: tokens, keys and database URLs with
passwords are values too, and the message goes to the container's log.
Nothing falls back silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.shared import logs
from services.shared.auth import (
    AGENT,
    DEFAULT_ORG,
    NAMED_ROLES,
    SERVICE,
    SERVICE_PRINCIPALS,
    Caller,
    org_name,
    principal_name,
)
from services.shared.jwts import JwtSettings, hs256_secret, read_jwks

T = TypeVar("T")

DEFAULT_PORTS = {"leads": 50051, "bookings": 50052, "messaging": 50053, "gateway": 8080}


class ConfigError(Exception):
    """A variable is set to a value the process cannot use."""


class Env:
    """Reads variables from a mapping (the process environment by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def get(self, name: str, cast: Callable[[str], T], default: T) -> T:
        """The variable cast; ConfigError naming it and the reason (never its value)."""
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return cast(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}: {exc}") from None

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


MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096


def tokens(raw: str, service_principals: Iterable[str] = SERVICE_PRINCIPALS,
           ) -> dict[str, Caller]:
    """`principal[@org][/role]:token,…` → {token: the Caller it stands for}.

    No org means `default`, no role `agent`; a role is `agent`, `viewer` or
    `admin`. The role `service` is never written here: it is the role of exactly
    the principals in CRM_SERVICE_PRINCIPALS (`service_principals`), so an entry
    that names `/service`, or names any role for a service principal, is refused
    rather than guessed at. A service principal may name an org: the one it acts
    in when it forwards none (`x-crm-org`).

    A principal may have several tokens (to rotate one without a gap), but it
    is one identity: entries of one principal that name different orgs or roles
    are refused.

    A refusal names the entry by position, and by principal once the entry has
    the shape of one (a malformed entry may be a token pasted alone); it never
    repeats a token.
    """
    services = frozenset(service_principals)
    found: dict[str, Caller] = {}
    positions: dict[str, int] = {}
    first: dict[str, tuple[int, Caller]] = {}
    for i, entry in enumerate(raw.split(","), start=1):
        caller, token = _token_entry(i, entry, services)
        named = f"entry {i} ({caller.principal!r})"
        if token in found:
            raise ValueError(f"{named} has the same token as entry "
                             f"{positions[token]} ({found[token].principal!r}); "
                             "every token must differ")
        earlier = first.setdefault(caller.principal, (i, caller))
        if earlier[1] != caller:
            raise ValueError(f"{named} names another org or role than entry {earlier[0]} "
                             f"of {caller.principal!r}; every token of a principal names "
                             "the same")
        found[token] = caller
        positions[token] = i
    return found


def _token_entry(i: int, entry: str, services: frozenset[str]) -> tuple[Caller, str]:
    """Entry `i` of CRM_API_TOKENS: the Caller and its token."""
    who, sep, token = (part.strip() for part in entry.strip().partition(":"))
    if not sep or not who or not token:
        raise ValueError(f"entry {i} is not `principal[@org][/role]:token`")
    rest, slash, role = who.partition("/")
    principal, at, org = rest.partition("@")
    try:
        principal_name(principal)
    except ValueError as why:
        raise ValueError(f"entry {i}: {why}") from None
    # Only the principal's name is echoed, once it is known to be one.
    named = f"entry {i} ({principal!r})"
    try:
        org = org_name(org) if at else DEFAULT_ORG
    except ValueError as why:
        raise ValueError(f"{named}: {why}") from None
    if slash and role == SERVICE:
        raise ValueError(f"{named}: the role `service` is not given in CRM_API_TOKENS; "
                         "name the principal in CRM_SERVICE_PRINCIPALS")
    if slash and role not in NAMED_ROLES:
        raise ValueError(f"{named}: the role is not one of {', '.join(NAMED_ROLES)}")
    if principal in services and slash:
        raise ValueError(f"{named} is a service (CRM_SERVICE_PRINCIPALS), whose role "
                         "is `service`: name no role for it")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{named}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"{named}: the token is longer than {MAX_TOKEN_LENGTH} characters")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(f"{named}: the token has characters other than printable "
                         "ASCII without spaces")
    if principal in services:
        role = SERVICE
    elif not slash:
        role = AGENT
    return Caller(principal, role, org), token


def accepted_tokens(service_principals: Iterable[str]) -> Callable[[str], dict[str, Caller]]:
    """The cast of CRM_API_TOKENS, given CRM_SERVICE_PRINCIPALS."""
    services = frozenset(service_principals)
    return lambda raw: tokens(raw, services)


MIN_SECRET_LENGTH = 32


def secret_key(raw: str) -> str:
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(f"expected at least {MIN_SECRET_LENGTH} characters")
    return raw


def principals(raw: str) -> frozenset[str]:
    """`name,name,…`: principal names."""
    found = [name.strip() for name in raw.split(",")]
    for i, name in enumerate(found, start=1):
        try:
            principal_name(name)
        except ValueError as why:
            raise ValueError(f"entry {i} is not a principal name: {why}") from None
    return frozenset(found)


def jwks_file(raw: str) -> Path:
    path = readable_file(raw)
    read_jwks(path)
    return path


def jwt_settings(env: Env) -> JwtSettings:
    """CRM_JWT_*: which JWTs are accepted (services.shared.jwts)."""
    return JwtSettings(
        jwks_file=env.get("CRM_JWT_JWKS_FILE", jwks_file, None),
        hs256_secret=env.get("CRM_JWT_HS256_SECRET", hs256_secret, ""),
        issuer=env.str("CRM_JWT_ISSUER"),
        audience=env.str("CRM_JWT_AUDIENCE"),
    )


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
    # {token: the Caller it stands for}, from CRM_API_TOKENS.
    tokens: dict[str, Caller] = field(repr=False)
    data_dir: Path
    # May hold a password: kept out of repr().
    database_url: str = field(repr=False)
    targets: dict[str, str]
    service_token: str = field(repr=False)
    idempotency_ttl: int = 86400
    event_retention: int = 7 * 86400
    heartbeat_seconds: float = 15.0
    event_ring_size: int = 4096
    shutdown_grace: float = 10.0
    shutdown_drain: float = 1.0
    housekeeping_seconds: float = 60.0
    health_probe_seconds: float = 5.0
    bind_host: str = "127.0.0.1"
    db_pool_size: int = 10
    # PostgreSQL: the most write calls one commit carries; 0 or 1: each alone.
    group_commit: int = 32
    # PostgreSQL: the rows a process keeps to write from without reading them first
    # (services.shared.uow, "Kept rows"); 0: none, every write reads first.
    kept_rows: int = 8192
    default_region: str = "US"
    metrics_port: int | None = None
    tls: TLS = TLS(None, None, None)
    public_url: str = "http://127.0.0.1:8080"
    log_level: str = "INFO"
    log_format: str = "json"
    # Signs page tokens; empty: derived from the tokens (services.shared.paging).
    page_token_secret: str = field(default="", repr=False)
    subscribe_max_per_principal: int = 100
    subscribe_max_streams: int = 10_000
    service_principals: frozenset[str] = frozenset(SERVICE_PRINCIPALS)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    # Everything it was read from, for a service's own settings.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        data_dir = Path(env.str("CRM_DATA_DIR", "var"))
        services = env.get("CRM_SERVICE_PRINCIPALS", principals, frozenset(SERVICE_PRINCIPALS))
        accepted: dict[str, Caller] = env.get("CRM_API_TOKENS", accepted_tokens(services), {})
        url = database_url(env, service)
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
            health_probe_seconds=env.get("CRM_HEALTH_PROBE_SECONDS", number(0.05, 300), 5.0),
            bind_host=env.str("CRM_BIND_HOST", "127.0.0.1"),
            db_pool_size=env.get("CRM_DB_POOL_SIZE", integer(1, 100), 10),
            group_commit=env.get("CRM_GROUP_COMMIT", integer(0, 60), 32),
            kept_rows=env.get("CRM_KEPT_ROWS", integer(0, 1_000_000), 8192),
            default_region=env.get("CRM_DEFAULT_REGION", region, "US"),
            metrics_port=env.get("CRM_METRICS_PORT", integer(0, 65535), None),
            tls=tls,
            public_url=env.str("CRM_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"),
            log_level=env.get("CRM_LOG_LEVEL", log_level, "INFO"),
            log_format=env.get("CRM_LOG_FORMAT", logs.log_format, "json"),
            page_token_secret=env.get("CRM_PAGE_TOKEN_SECRET", secret_key, ""),
            subscribe_max_per_principal=env.get("CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL",
                                                integer(1, 100_000), 100),
            subscribe_max_streams=env.get("CRM_SUBSCRIBE_MAX_STREAMS",
                                          integer(1, 1_000_000), 10_000),
            service_principals=services,
            jwt=jwt_settings(env),
            environ=dict(env.environ),
        )


def service_targets(env: Env) -> dict[str, str]:
    return {
        name: env.str(f"CRM_{name.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[name]}")
        for name in ("leads", "bookings", "messaging")
    }


def own_token(accepted: Mapping[str, Caller], principal: str) -> str:
    """The token this process presents to other services: its own principal's."""
    return next((token for token, who in accepted.items() if who.principal == principal), "")


def region(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("expected a two-letter region code, such as US")
    return raw.upper()


def log_level(raw: str) -> str:
    if raw.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return raw.upper()


def database_url(env: Env, service: str) -> str:
    """`<SERVICE>_DATABASE_URL`, else `CRM_DATABASE_URL`, else SQLite in CRM_DATA_DIR;
    a bad one is refused under the name of the variable it came from."""
    for name in (f"{service.upper()}_DATABASE_URL", "CRM_DATABASE_URL"):
        if env.str(name):
            return env.get(name, normalize_database_url, "")
    data_dir = Path(env.str("CRM_DATA_DIR", "var"))
    return f"sqlite+aiosqlite:///{data_dir / f'{service}.db'}"


def normalize_database_url(url: str) -> str:
    """Accept the usual spellings and pick the async drivers this project uses."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as postgresql://user:password@host/db")
    base = scheme.split("+")[0]
    if base in {"postgres", "postgresql"}:
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError("only postgresql:// and sqlite:// URLs are supported")
