"""Row-level security on PostgreSQL: the database keeps the orgs apart too.

Every table of every service has row-level security ENABLEd and FORCEd (so
it binds the tables' owner, the role the services connect as), with one
policy keyed on the transaction-local setting `crm.org`, which the unit of
work sets from its caller in the same round trip as its first statement
(services.shared.sql.scope). A statement that forgot its `org = …` filter
still sees, and may write, that org's rows only; with no setting it sees none.

- an org's rows (`ORG_ROWS`): visible and writable in that org's scope;
- events (`EVENT_ROWS`): as an org's rows, and the services' own events (org
  `*`, the SMS provider's state) are visible in every scope;
- the event log's head row (`LOG_ROW`): no org's data, a counter every scope
  moves; visible in any scope, in none without one.

The system scope `*` (services.shared.orgs) sees every org: the services' own
background work. Superusers and roles with BYPASSRLS ignore every policy, even
FORCEd ones: the services must connect as an ordinary role (README: "The
database role").
"""

from __future__ import annotations

_SCOPE = "current_setting('crm.org', true)"

ORG_ROWS = (f"org = {_SCOPE} OR {_SCOPE} = '*'", f"org = {_SCOPE} OR {_SCOPE} = '*'")
EVENT_ROWS = (f"org = {_SCOPE} OR org = '*' OR {_SCOPE} = '*'",
              f"org = {_SCOPE} OR {_SCOPE} = '*'")
LOG_ROW = (f"coalesce({_SCOPE}, '') <> ''", f"coalesce({_SCOPE}, '') <> ''")
POLICY = "crm_org_isolation"


def policy_statements(table: str, rows: tuple[str, str]) -> list[str]:
    """The DDL that puts `table` under row-level security: (visible, writable) rows."""
    using, check = rows
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {POLICY} ON {table} USING ({using}) WITH CHECK ({check})",
    ]
