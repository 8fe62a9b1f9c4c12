"""Organizations: every row names its org (existing rows: `default`); indexes
lead with the org; row-level security on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""


from services.shared.migration_orgs import add_org, enable_row_level_security, reindex, rekey_shared

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rekey_shared("leads")
    add_org("leads")
    add_org("lead_status_changes")
    reindex("ix_leads_created", "leads", ["created_at", "lead_id"])
    reindex("ix_leads_status_created", "leads", ["status", "created_at", "lead_id"])
    reindex("ix_leads_phone", "leads", ["phone"])
    enable_row_level_security("leads", ["leads", "lead_status_changes"])


def downgrade() -> None:
    raise NotImplementedError("organizations are not taken out again: restore a backup")
