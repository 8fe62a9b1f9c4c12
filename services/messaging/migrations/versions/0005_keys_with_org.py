"""A message's and a template's primary key leads with the org, as the tables'
other indexes do: a lookup by id names both, and only the key then matches it
whole. Keyed by the id alone, a table whose statistics were not gathered yet
(a new one, until autovacuum's first ANALYZE) had PostgreSQL's planner rate an
index that starts with the org as good as the key, and a cached plan updated a
message by scanning every message of its org (README, "Decisions": "Keys
that lead with the org").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from services.shared.migration_orgs import rekey

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rekey("messages", "pk_messages", "messages_pkey", ["message_id"])
    rekey("message_templates", "pk_message_templates", "message_templates_pkey", ["template_id"])


def downgrade() -> None:
    raise NotImplementedError("keys are not taken back: restore a backup")
