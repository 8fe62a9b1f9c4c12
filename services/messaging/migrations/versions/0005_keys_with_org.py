"""A message's and a template's primary key leads with the org, as the tables'
other indexes do: a lookup by id matches the key whole, statistics or not
(services.shared.migration_keys). Keyed by the id alone, a cached plan updated a
message by walking every message of its org until autovacuum first analyzed
the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from services.shared.migration_keys import key_with_org

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key_with_org("messages", "message_id", old_key="messages_pkey")
    key_with_org("message_templates", "template_id", old_key="message_templates_pkey")


def downgrade() -> None:
    raise NotImplementedError("keys are not taken back: restore a backup")
