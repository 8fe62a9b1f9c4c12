"""Organizations, as each service's org migration adds them (frozen, as
`migration_v1`: a later change is a new migration, never an edit here).

- `add_org`: an `org` column on a table that may already hold rows; every
  existing row goes to the org `default`. No server default stays behind: a
  write that forgot its org fails instead of landing in `default`.
- `reindex`: an index again, with the org first (every query names one org).
- `rekey_shared`: the service's idempotency keys scoped per org, principal and
  RPC; its events indexed by org and position.
- `enable_row_level_security` (PostgreSQL): every table ENABLEd and FORCEd (so
  the policies bind the tables' owner too, which the services connect as),
  with a policy on the transaction-local setting `crm.org` (see
  services.shared.rls).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.shared import rls

DEFAULT_ORG = "default"
ORG_LENGTH = 64


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def add_org(table: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("org", sa.String(ORG_LENGTH), nullable=True))
    op.execute(sa.text(f"UPDATE {table} SET org = :org").bindparams(org=DEFAULT_ORG))
    with op.batch_alter_table(table) as batch:
        batch.alter_column("org", existing_type=sa.String(ORG_LENGTH), nullable=False)


def reindex(name: str, table: str, columns: Sequence[str], *, unique: bool = False) -> None:
    op.drop_index(name, table_name=table)
    op.create_index(name, table, ["org", *columns], unique=unique)


def rekey(table: str, constraint: str, old_name: str | None, columns: Sequence[str]) -> None:
    """A table's primary key again, with the org first. `old_name`: the key's
    name on PostgreSQL if it differs (an unnamed key is `<table>_pkey`)."""
    if _sqlite():
        # SQLite cannot alter a key: the table is made again with the new one.
        # SQLAlchemy warns that the new key is not the reflected one: as it must.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.create_primary_key(constraint, ["org", *columns])
        return
    op.drop_constraint(old_name or constraint, table, type_="primary")
    op.create_primary_key(constraint, table, ["org", *columns])


def rekey_shared(prefix: str) -> None:
    add_org(f"{prefix}_events")
    add_org(f"{prefix}_idempotency_keys")
    rekey(f"{prefix}_idempotency_keys", f"pk_{prefix}_idempotency_keys", None,
          ["principal", "method", "key"])
    op.create_index(f"ix_{prefix}_events_org", f"{prefix}_events", ["org", "position"])


def enable_row_level_security(prefix: str, tables: Sequence[str]) -> None:
    """PostgreSQL: row-level security on the service's tables and shared tables."""
    if _sqlite():
        return
    for table in (*tables, f"{prefix}_idempotency_keys"):
        for statement in rls.policy_statements(table, rls.ORG_ROWS):
            op.execute(statement)
    for statement in rls.policy_statements(f"{prefix}_events", rls.EVENT_ROWS):
        op.execute(statement)
    for statement in rls.policy_statements(f"{prefix}_event_log", rls.LOG_ROW):
        op.execute(statement)
