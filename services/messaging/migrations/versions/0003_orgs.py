"""Organizations: every row names its org (existing rows: `default`); a
number's consent and a provider's message id are per org; indexes lead with
the org; row-level security on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from services.shared.migration_orgs import (
    add_org,
    enable_row_level_security,
    reindex,
    rekey,
    rekey_shared,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rekey_shared("messaging")
    add_org("messages")
    add_org("recipients")
    add_org("message_templates")
    rekey("recipients", "pk_recipients", "recipients_pkey", ["phone"])
    reindex("ix_messages_lead_created", "messages", ["lead_id", "created_at", "message_id"])
    reindex("ix_messages_to_created", "messages", ["to_phone", "created_at"])
    reindex("ux_messages_provider_message_id", "messages", ["provider_message_id"], unique=True)
    reindex("ix_message_templates_name", "message_templates", ["name", "template_id"])
    enable_row_level_security("messaging", ["messages", "recipients", "message_templates"])


def downgrade() -> None:
    raise NotImplementedError("organizations are not taken out again: restore a backup")
