"""Configuration fails loudly, by name, on a bad value."""

from __future__ import annotations

import re

import pytest

from services.shared.auth import Caller
from services.shared.config import ConfigError, Settings

TOKENS = "alice:alice-token-0123456789"


def settings(**env: str) -> Settings:
    return Settings.from_env("leads", {"CRM_API_TOKENS": TOKENS, **env})


def test_defaults_are_sqlite_under_the_data_dir_and_the_standard_ports() -> None:
    loaded = settings(CRM_DATA_DIR="/srv/crm")
    assert loaded.database_url == "sqlite+aiosqlite:////srv/crm/leads.db"
    assert loaded.targets == {"leads": "127.0.0.1:50051", "bookings": "127.0.0.1:50052",
                              "messaging": "127.0.0.1:50053"}
    assert (loaded.idempotency_ttl, loaded.tokens) == (
        86400, {"alice-token-0123456789": Caller("alice", "agent", "default")})


def test_a_service_database_url_wins_over_the_shared_one() -> None:
    loaded = settings(CRM_DATABASE_URL="postgresql://db/all", LEADS_DATABASE_URL="postgres://db/l")
    assert loaded.database_url == "postgresql+psycopg://db/l"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CRM_IDEMPOTENCY_TTL_SECONDS", "soon", "CRM_IDEMPOTENCY_TTL_SECONDS: expected an int"),
        ("CRM_IDEMPOTENCY_TTL_SECONDS", "0", "integer from 1"),
        ("CRM_API_TOKENS", "alice", "not `principal[@org][/role]:token`"),
        ("CRM_API_TOKENS", "alice:short", "shorter than 16"),
        ("CRM_DATABASE_URL", "mysql://db/x", "only postgresql:// and sqlite://"),
        ("CRM_TLS_CERT", "/no/such/cert.pem", "CRM_TLS_CERT"),
        ("CRM_DEFAULT_REGION", "USA", "two-letter region"),
        ("CRM_HEALTH_PROBE_SECONDS", "0", "number from 0.05 to 300"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        settings(**{name: value})


# -- no value of a secret in any message ------------------------------------------------

SECRET = "supersecret-0123456789abcdef"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CRM_API_TOKENS": f"alice:{SECRET},bob:short1"},
         "CRM_API_TOKENS: entry 2 ('bob'): the token is shorter than 16 characters"),
        ({"CRM_API_TOKENS": f"alice:{SECRET},{SECRET}"},
         "CRM_API_TOKENS: entry 2 is not `principal[@org][/role]:token`"),
        ({"CRM_API_TOKENS": f"alice:{SECRET},bob:{SECRET}"},
         "CRM_API_TOKENS: entry 2 ('bob') has the same token as entry 1 ('alice')"),
        ({"CRM_DATABASE_URL": f"mysql://crm:{SECRET}@db/crm"},
         "CRM_DATABASE_URL: only postgresql:// and sqlite:// URLs are supported"),
        ({"CRM_DATABASE_URL": f"crm:{SECRET}@db/crm"},
         "CRM_DATABASE_URL: expected a URL such as postgresql://"),
        ({"LEADS_DATABASE_URL": f"mysql://crm:{SECRET}@db/crm"},
         "LEADS_DATABASE_URL: only postgresql://"),
    ],
)
def test_a_refusal_names_the_variable_the_entry_and_the_reason_never_the_value(
    env: dict[str, str], says: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env("leads", {"CRM_API_TOKENS": TOKENS, **env})
    message = str(refused.value)
    assert message == says or message.startswith(says), message
    assert SECRET not in message and "short1" not in message and "crm:" not in message


def test_the_database_url_keeps_its_password_out_of_repr() -> None:
    loaded = settings(CRM_DATABASE_URL=f"postgresql://crm:{SECRET}@db/crm")
    assert SECRET in loaded.database_url
    assert SECRET not in repr(loaded)
