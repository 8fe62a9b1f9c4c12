"""Configuration fails loudly, by name, on a bad value."""

from __future__ import annotations

import pytest

from services.shared.config import ConfigError, Settings

TOKENS = "alice:alice-token-0123456789"


def settings(**env: str) -> Settings:
    return Settings.from_env("leads", {"CRM_API_TOKENS": TOKENS, **env})


def test_defaults_are_sqlite_under_the_data_dir_and_the_standard_ports() -> None:
    loaded = settings(CRM_DATA_DIR="/srv/crm")
    assert loaded.database_url == "sqlite+aiosqlite:////srv/crm/leads.db"
    assert loaded.targets == {"leads": "127.0.0.1:50051", "bookings": "127.0.0.1:50052",
                              "messaging": "127.0.0.1:50053"}
    assert (loaded.idempotency_ttl, loaded.tokens) == (86400, {"alice-token-0123456789": "alice"})


def test_a_service_database_url_wins_over_the_shared_one() -> None:
    loaded = settings(CRM_DATABASE_URL="postgresql://db/all", LEADS_DATABASE_URL="postgres://db/l")
    assert loaded.database_url == "postgresql+psycopg://db/l"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CRM_IDEMPOTENCY_TTL_SECONDS", "soon", "CRM_IDEMPOTENCY_TTL_SECONDS='soon'"),
        ("CRM_IDEMPOTENCY_TTL_SECONDS", "0", "integer from 1"),
        ("CRM_API_TOKENS", "alice", "not `principal:token`"),
        ("CRM_API_TOKENS", "alice:short", "shorter than 16"),
        ("CRM_DATABASE_URL", "mysql://db/x", "only postgresql:// and sqlite://"),
        ("CRM_TLS_CERT", "/no/such/cert.pem", "CRM_TLS_CERT"),
        ("CRM_DEFAULT_REGION", "USA", "two-letter region"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("`", ".")):
        settings(**{name: value})
