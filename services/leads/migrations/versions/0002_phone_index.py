"""An index on leads' phone numbers: ListLeads' `phone` filter, which the web
console asks before creating a lead whose number may already be known.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_leads_phone", "leads", ["phone"])


def downgrade() -> None:
    op.drop_index("ix_leads_phone", table_name="leads")
