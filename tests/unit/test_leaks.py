"""The suite's own check that no secret is logged finds what it must, and names it
without repeating it."""

from __future__ import annotations

from tests.support import leaks
from tests.support.servers import ServiceProcess

ENV = {
    "CRM_API_TOKENS": "alice:alice-token-0123456789,gateway:gateway-token-0123456789",
    "TWILIO_AUTH_TOKEN": "twilio-token-0123456789",
    "CRM_DATABASE_URL": "postgresql://crm:db-password-0123@db/crm",
    "CRM_SESSION_SECRET": "s" * 32,
    "CRM_LOG_LEVEL": "INFO",
}


def test_every_configured_secret_is_known_by_where_it_came_from() -> None:
    assert leaks.secrets_in(ENV) == {
        "alice-token-0123456789": "CRM_API_TOKENS ('alice')",
        "gateway-token-0123456789": "CRM_API_TOKENS ('gateway')",
        "twilio-token-0123456789": "TWILIO_AUTH_TOKEN",
        "db-password-0123": "the password in CRM_DATABASE_URL",
        "s" * 32: "CRM_SESSION_SECRET",
    }


def test_a_process_log_holding_a_secret_is_found_once_and_named_not_repeated() -> None:
    process = ServiceProcess("leads", ENV)
    process.log_lines += ['{"message": "serving"}\n',
                          '{"message": "bad token Bearer alice-token-0123456789"}\n']
    found = process.leaks()
    assert found == ["CRM_API_TOKENS ('alice')"]
    assert process.leaks() == []  # each line is searched once
    process.log_lines.append("connecting to postgresql://crm:db-password-0123@db/crm\n")
    assert process.leaks() == ["the password in CRM_DATABASE_URL"]
