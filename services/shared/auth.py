"""Who is calling: bearer tokens, the caller they stand for, its org and its role.

Storage-free, so that the gateway checks tokens with the same code as the
services without loading what the services store with.

A static token (CRM_API_TOKENS) stands for one `Caller`, read from its entry
`principal[@org][/role]:token` (`services.shared.config.tokens`): no org means
`default`, no role means `agent`. Roles:

    agent     reads, and presses every button (the default)
    viewer    reads and subscribes; every mutating RPC is PERMISSION_DENIED
    admin     an agent who may also act on audit-level settings, where there are any
    service   the services and the gateway themselves: only the principals named in
              CRM_SERVICE_PRINCIPALS (default leads, bookings, messaging, gateway)
              have it, and they have no other
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.shared import errors

SERVICE = "service"
AGENT = "agent"
VIEWER = "viewer"
ADMIN = "admin"
# The roles a CRM_API_TOKENS entry may name; `service` comes from CRM_SERVICE_PRINCIPALS.
NAMED_ROLES = (AGENT, VIEWER, ADMIN)
# The organization of a caller whose credentials name none.
DEFAULT_ORG = "default"
# Principals that are services (role `service`), unless CRM_SERVICE_PRINCIPALS says.
SERVICE_PRINCIPALS = ("leads", "bookings", "messaging", "gateway")
# The metadata in which a service calling on a user's behalf names the user's org
# (honoured from `service` callers only: services.shared.interceptor).
ORG_METADATA = "x-crm-org"

# An org name goes into metadata, page tokens, log lines and a PostgreSQL setting:
# short, lower case, and nothing that needs quoting anywhere.
MAX_ORG_LENGTH = 63
_ORG = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_PRINCIPAL_LENGTH = 128
# Separators of the CRM_API_TOKENS grammar, which no principal name may hold.
_PRINCIPAL_FORBIDS = frozenset("@/:,")


def org_name(raw: str) -> str:
    """`raw` if it is an org name; ValueError saying why (never repeating it) if not."""
    if not raw:
        raise ValueError("the org is empty")
    if len(raw) > MAX_ORG_LENGTH:
        raise ValueError(f"an org name is at most {MAX_ORG_LENGTH} characters")
    if not _ORG.fullmatch(raw):
        raise ValueError("an org name is lower-case letters, digits, `-` and `_`, "
                         "starting with a letter or a digit")
    return raw


def principal_name(raw: str) -> str:
    """`raw` if it is a principal name; ValueError saying why (never repeating it) if not."""
    if not raw:
        raise ValueError("the principal is empty")
    if len(raw) > MAX_PRINCIPAL_LENGTH:
        raise ValueError(f"a principal name is at most {MAX_PRINCIPAL_LENGTH} characters")
    if not all(33 <= ord(c) <= 126 for c in raw) or _PRINCIPAL_FORBIDS & set(raw):
        raise ValueError("a principal name is printable ASCII without spaces, "
                         "`@`, `/`, `:` or `,`")
    return raw


@dataclass(frozen=True)
class Caller:
    """Who a call acts for: made once per call from its credentials (`Tokens.caller`),
    carried by every command, and the unit of work is entered with it.

    The principal is the actor of every audit record and, with the org and the
    RPC, the scope of an idempotency key; the org is the one organization whose
    data the call sees; the role says what it may call.
    """

    principal: str
    role: str = AGENT
    org: str = DEFAULT_ORG

    def __str__(self) -> str:
        """`principal@org/role`, as CRM_API_TOKENS spells it in full."""
        return f"{self.principal}@{self.org}/{self.role}"

    def in_org(self, org: str) -> Caller:
        """The same principal and role acting in `org` (a service, on a user's behalf)."""
        return Caller(self.principal, self.role, org)


class Unauthenticated(errors.Unauthenticated):
    def __init__(self, why: str, *, reason: str | None = None) -> None:
        super().__init__(
            f"{why}; send `authorization: Bearer <token>` with a token from CRM_API_TOKENS",
            reason=reason or ("INVALID_TOKEN" if "not accepted" in why
                              else "MISSING_CREDENTIALS"),
        )


class Tokens:
    """Accepted bearer tokens, each standing for its Caller: the static ones, looked
    up by digest so timing reveals nothing of them, then JWTs if `jwt` verifies them
    (`services.shared.jwts.JwtVerifier.caller`)."""

    def __init__(self, accepted: Mapping[str, Caller],
                 jwt: Callable[[str], Caller] | None = None) -> None:
        self._by_digest = {_digest(t): caller for t, caller in accepted.items()}
        self._jwt = jwt

    def caller(self, authorization: str | None) -> Caller:
        """The caller an `authorization` header stands for, or Unauthenticated."""
        token = bearer(authorization)
        found = self._by_digest.get(_digest(token))
        if found is not None:
            return found
        if self._jwt is not None and token.count(".") == 2:
            return self._jwt(token)
        raise Unauthenticated("the token is not accepted")

    def principal(self, authorization: str | None) -> str:
        return self.caller(authorization).principal


def bearer(authorization: str | None) -> str:
    """The token of a `Bearer` authorization, or Unauthenticated."""
    if not authorization:
        raise Unauthenticated("no credentials")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization is not a Bearer token")
    return token.strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
