"""The event log ordered by writing transaction, as each service's migration
adds it (frozen, as `migration_v1`: a later change is a new migration).

- `xid`: the writing transaction's id (PostgreSQL `pg_current_xact_id()`, as a
  BIGINT); 0 for every event written before, and for every event on SQLite.
  The log's order is (xid, position): the events already written keep theirs.
- a sequence `<prefix>_events_position` (PostgreSQL) hands out positions,
  starting after the head the log row holds, which it no longer moves;
- `purged_through_xid`: with `purged_through`, the last key a purge removed.

See services.shared.events for why.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def order_events_by_transaction(prefix: str) -> None:
    events, log = f"{prefix}_events", f"{prefix}_event_log"
    with op.batch_alter_table(events) as batch:
        batch.add_column(sa.Column("xid", sa.BigInteger, nullable=False,
                                   server_default=sa.text("0")))
    op.create_index(f"ix_{prefix}_events_order", events, ["xid", "position"])
    with op.batch_alter_table(log) as batch:
        batch.add_column(sa.Column("purged_through_xid", sa.BigInteger, nullable=False,
                                   server_default=sa.text("0")))
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute(f"CREATE SEQUENCE {prefix}_events_position AS BIGINT")
    # Read in the system scope: under row-level security (services.shared.rls),
    # which binds the tables' owner too, the log row is visible in a scope only.
    op.execute("SELECT set_config('crm.org', '*', true)")
    op.execute(f"SELECT setval('{prefix}_events_position', "
               f"greatest(head, (SELECT coalesce(max(position), 0) FROM {prefix}_events)) + 1, "
               f"false) FROM {log} WHERE id = 1")
