"""Organizations: whose data a call sees.

Every row of every service belongs to one org, named in its `org` column; a
caller acts in one org (`Caller.org`) and sees nothing of any other. The
repositories name the org in every statement; on PostgreSQL row-level
security enforces it as well (services.shared.rls).

The system scope (`*`) is the services' own view across every org, for work
that is nobody's call: the event feed (which routes each event to the streams
of its org), the recovery sweep (which finds abandoned sends in every org and
settles each in its own org), retention. No caller can act in it: an org
name is lower-case letters, digits, `-` and `_` (services.shared.auth), and a
unit of work refuses a caller's org `*` (see UnitOfWork.for_system).
"""

from __future__ import annotations

from services.shared.auth import DEFAULT_ORG, SERVICE, Caller, org_name

# What every org's row-level security policy also lets through: the services' own work.
SYSTEM_SCOPE = "*"

__all__ = ["DEFAULT_ORG", "SYSTEM_SCOPE", "is_org", "system_caller"]


def is_org(name: str) -> bool:
    """Whether `name` is an org's name (services.shared.auth.org_name): never `*`."""
    try:
        org_name(name)
    except ValueError:
        return False
    return True


def system_caller(principal: str) -> Caller:
    """The service itself, over every org (see the module's docstring)."""
    return Caller(principal, SERVICE, SYSTEM_SCOPE)
