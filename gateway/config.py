"""The gateway's configuration, read from the environment with casts and defaults.

Built from the same parts as `services.shared.config`: a bad value stops the
process at start with a message that names the variable.

    CRM_API_TOKENS              `principal[@org][/role]:token,…`: who may log in,
                                and the token a session presents upstream (none)
    CRM_SERVICE_PRINCIPALS      principals that are services (role `service`), who
                                may not log in (leads,bookings,messaging,gateway)
    CRM_JWT_JWKS_FILE, CRM_JWT_HS256_SECRET, CRM_JWT_ISSUER, CRM_JWT_AUDIENCE
                                accept JWTs, for API calls and to log in
                                (services.shared.jwts; unset: static tokens only)
    CRM_LEADS_TARGET, CRM_BOOKINGS_TARGET, CRM_MESSAGING_TARGET
                                the services (127.0.0.1:50051, :50052, :50053;
                                `dns:///host:port` for replicas)
    CRM_TLS_CA                  trust this CA when calling the services (plaintext)
    CRM_PUBLIC_URL              the gateway's public base URL, for Twilio signatures
                                and `Secure` cookies (http://127.0.0.1:8080)
    CRM_SERVICE_TOKEN           the token webhooks are forwarded with (principal
                                `gateway`'s in CRM_API_TOKENS)
    TWILIO_AUTH_TOKEN           verifies X-Twilio-Signature (unset: webhooks refused)
    CRM_SESSION_SECRET          signs session cookies, ≥ 32 characters (derived
                                from CRM_API_TOKENS, so replicas agree)
    CRM_SESSION_SECONDS         how long a browser session lasts (28800: 8 h)
    CRM_GATEWAY_DEADLINE_SECONDS   deadline of every unary call upstream (10)
    CRM_GATEWAY_MAX_BODY_BYTES  largest request body accepted; 413 beyond (65536)
    CRM_SSE_HEARTBEAT_SECONDS   interval of `: heartbeat` on /v1/events (15, at most 15)
    CRM_LEGACY_HISTORY_MAX      most messages /api/leads/{leadId}/sms-history gathers (1000)
    CRM_GATEWAY_STATIC_DIR      the web console's files (gateway/static)
    CRM_SHUTDOWN_GRACE_SECONDS  time for requests in flight on SIGTERM (10)
    CRM_GATEWAY_IDLE_SECONDS    a connection's deadline to send a request head, from
                                opening or its last response; idle ones close (15)
    CRM_METRICS_PORT            serve GET /metrics on this port, not the public one (off)
    CRM_SMS_MAX_SEGMENTS        as the messaging service reads it (1): how long a text
                                /openapi.json says SendSms takes
    CRM_SSE_MAX_STREAMS_PER_PRINCIPAL, CRM_SSE_MAX_STREAMS
                                open /v1/events streams per principal, and in all (20, 1000)
    CRM_SSE_BUFFER_BYTES        frames a /v1/events browser may leave unread before it is
                                cut off (it resumes by Last-Event-ID) (262144: 256 KiB)
    CRM_AUTH_FAILURES_MAX, CRM_AUTH_FAILURES_WINDOW_SECONDS
                                failed logins and bearer authentications a client address
                                may make in the window before it is refused 429 (10, 60)
    GATEWAY_DATABASE_URL, CRM_DATABASE_URL, CRM_DATA_DIR
                                where logged-out sessions are kept (gateway.ended_sessions):
                                PostgreSQL for replicas (SQLite CRM_DATA_DIR/gateway.db)
    CRM_BIND_HOST, CRM_LOG_LEVEL, CRM_LOG_FORMAT   as for the services (127.0.0.1, INFO, json)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.shared import logs
from services.shared.auth import SERVICE_PRINCIPALS, Caller
from services.shared.config import (
    ConfigError,
    Env,
    accepted_tokens,
    database_url,
    integer,
    jwt_settings,
    log_level,
    number,
    own_token,
    principals,
    readable_file,
    service_targets,
)
from services.shared.jwts import JwtSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"


def public_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL such as https://crm.example.com")
    if parts.query or parts.fragment:
        raise ValueError("expected a base URL without a query or fragment")
    return raw.rstrip("/")


def session_secret(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("expected at least 32 characters")
    return raw


def directory(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise ValueError("no such directory")
    return path


@dataclass(frozen=True)
class Settings:
    """Everything the gateway process reads from its environment."""

    # {token: the Caller it stands for}, as services.shared.config reads CRM_API_TOKENS.
    tokens: dict[str, Caller] = field(repr=False)
    targets: dict[str, str]
    session_secret: bytes = field(repr=False)
    service_token: str = field(repr=False, default="")
    twilio_auth_token: str = field(repr=False, default="")
    tls_ca: Path | None = None
    public_url: str = "http://127.0.0.1:8080"
    session_seconds: int = 8 * 3600
    deadline_seconds: float = 10.0
    max_body_bytes: int = 64 * 1024
    heartbeat_seconds: float = 15.0
    history_max: int = 1000
    static_dir: Path = STATIC_DIR
    shutdown_grace: float = 10.0
    bind_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "json"
    idle_seconds: float = 15.0
    metrics_port: int | None = None
    sse_max_per_principal: int = 20
    sse_max_streams: int = 1000
    sse_buffer_bytes: int = 256 * 1024
    auth_failures_max: int = 10
    auth_failures_window: float = 60.0
    service_principals: frozenset[str] = frozenset(SERVICE_PRINCIPALS)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    # Where ended sessions are kept (gateway.ended_sessions); may hold a password.
    database_url: str = field(default="sqlite+aiosqlite:///var/gateway.db", repr=False)
    sms_max_segments: int = 1

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    def token_of(self, principal: str) -> str | None:
        """The token a principal's session presents upstream, so it acts as itself."""
        return own_token(self.tokens, principal) or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        services = env.get("CRM_SERVICE_PRINCIPALS", principals, frozenset(SERVICE_PRINCIPALS))
        accepted: dict[str, Caller] = env.get("CRM_API_TOKENS", accepted_tokens(services), {})
        twilio_token = env.str("TWILIO_AUTH_TOKEN")
        service_token = env.str("CRM_SERVICE_TOKEN") or own_token(accepted, "gateway")
        if twilio_token and not service_token:
            raise ConfigError(
                "TWILIO_AUTH_TOKEN is set but the gateway has no token of its own to forward "
                "webhooks with: add a `gateway:<token>` entry to CRM_API_TOKENS or set "
                "CRM_SERVICE_TOKEN"
            )
        secret = env.get("CRM_SESSION_SECRET", session_secret, "")
        return cls(
            tokens=accepted,
            targets=service_targets(env),
            session_secret=secret.encode() if secret else derived_secret(accepted),
            service_token=service_token,
            twilio_auth_token=twilio_token,
            tls_ca=env.get("CRM_TLS_CA", readable_file, None),
            public_url=env.get("CRM_PUBLIC_URL", public_url, "http://127.0.0.1:8080"),
            session_seconds=env.get("CRM_SESSION_SECONDS", integer(60, 30 * 86400), 8 * 3600),
            deadline_seconds=env.get("CRM_GATEWAY_DEADLINE_SECONDS", number(0.05, 300), 10.0),
            max_body_bytes=env.get(
                "CRM_GATEWAY_MAX_BODY_BYTES", integer(1024, 16 * 1024 * 1024), 64 * 1024
            ),
            heartbeat_seconds=env.get("CRM_SSE_HEARTBEAT_SECONDS", number(0.05, 15), 15.0),
            history_max=env.get("CRM_LEGACY_HISTORY_MAX", integer(1, 10_000), 1000),
            static_dir=env.get("CRM_GATEWAY_STATIC_DIR", directory, STATIC_DIR),
            shutdown_grace=env.get("CRM_SHUTDOWN_GRACE_SECONDS", number(0, 300), 10.0),
            bind_host=env.str("CRM_BIND_HOST", "127.0.0.1"),
            log_level=env.get("CRM_LOG_LEVEL", log_level, "INFO"),
            log_format=env.get("CRM_LOG_FORMAT", logs.log_format, "json"),
            idle_seconds=env.get("CRM_GATEWAY_IDLE_SECONDS", number(0.05, 3600), 15.0),
            metrics_port=env.get("CRM_METRICS_PORT", integer(0, 65535), None),
            sse_max_per_principal=env.get("CRM_SSE_MAX_STREAMS_PER_PRINCIPAL",
                                          integer(1, 100_000), 20),
            sse_max_streams=env.get("CRM_SSE_MAX_STREAMS", integer(1, 1_000_000), 1000),
            sse_buffer_bytes=env.get("CRM_SSE_BUFFER_BYTES", integer(4096, 64 * 1024 * 1024),
                                     256 * 1024),
            auth_failures_max=env.get("CRM_AUTH_FAILURES_MAX", integer(1, 1_000_000), 10),
            auth_failures_window=env.get("CRM_AUTH_FAILURES_WINDOW_SECONDS",
                                         number(0.05, 86400), 60.0),
            service_principals=services,
            jwt=jwt_settings(env),
            database_url=database_url(env, "gateway"),
            sms_max_segments=env.get("CRM_SMS_MAX_SEGMENTS", integer(1, 10), 1),
        )


def derived_secret(accepted: Mapping[str, Caller]) -> bytes:
    """A session secret every replica given the same CRM_API_TOKENS agrees on.

    Without tokens nobody can log in, so any secret will do.
    """
    if not accepted:
        return secrets.token_bytes(32)
    material = "\n".join(sorted(f"{who}:{token}" for token, who in accepted.items()))
    return hashlib.sha256(b"closed-loop gateway sessions\0" + material.encode()).digest()
