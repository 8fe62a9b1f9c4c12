"""No value of a secret in any log line or response: how the suite checks it.

`secrets_in(env)` names every secret an environment configures (each token of
CRM_API_TOKENS, TWILIO_AUTH_TOKEN, CRM_SESSION_SECRET, CRM_SERVICE_TOKEN,
CRM_PAGE_TOKEN_SECRET, a database URL's password …); `found_in(text, secrets)`
says which of them a text holds, by the variable they came from, never
repeating a value. tests/conftest.py runs both over the captured log of every
server process of the suite (tests.support.servers.ServiceProcess: the e2e
tests and the drills), and over every log record of the servers the tests run
in-process, against the secrets those were configured with (`watch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

SECRET_VARIABLES = ("TWILIO_AUTH_TOKEN", "CRM_SESSION_SECRET", "CRM_SERVICE_TOKEN",
                    "CRM_PAGE_TOKEN_SECRET", "CRM_JWT_HS256_SECRET", "POSTGRES_PASSWORD")
# Shorter values would match by chance ("crm" as a password).
MIN_LENGTH = 8

# Secrets the in-process servers of the suite are configured with: {value: where from}.
WATCHED: dict[str, str] = {}


def secrets_in(env: Mapping[str, str]) -> dict[str, str]:
    """{secret value: the variable (and entry) it is configured in}."""
    found: dict[str, str] = {}
    for entry in env.get("CRM_API_TOKENS", "").split(","):
        principal, sep, token = entry.partition(":")
        if sep and token.strip():
            found[token.strip()] = f"CRM_API_TOKENS ({principal.strip()!r})"
    for name in SECRET_VARIABLES:
        if env.get(name, "").strip():
            found[env[name].strip()] = name
    for name, value in env.items():
        if name.endswith("DATABASE_URL") and "://" in value:
            password = urlsplit(value).password
            if password:
                found[password] = f"the password in {name}"
    return {value: where for value, where in found.items() if len(value) >= MIN_LENGTH}


def watch(secrets: Mapping[str, str] | Iterable[str], where: str = "a test secret") -> None:
    """Secrets the in-process servers are configured with, to look for in their logs."""
    if isinstance(secrets, Mapping):
        WATCHED.update(secrets)
    else:
        WATCHED.update(dict.fromkeys(secrets, where))


def found_in(text: str, secrets: Mapping[str, str]) -> list[str]:
    """Where each secret `text` holds came from (never the value)."""
    return sorted({where for value, where in secrets.items() if value in text})
