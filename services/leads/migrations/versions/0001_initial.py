"""Leads, their status changes, and the shared tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from services.shared.db import UTCDateTime
from services.shared.migration_v1 import create_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_shared_tables("leads")
    op.create_table(
        "leads",
        sa.Column("lead_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("phone", sa.String(20), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_leads_created", "leads", ["created_at", "lead_id"])
    op.create_index("ix_leads_status_created", "leads", ["status", "created_at", "lead_id"])
    op.create_table(
        "lead_status_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("lead_id", sa.String(36), sa.ForeignKey("leads.lead_id"), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_lead_status_changes_lead", "lead_status_changes", ["lead_id", "id"])


def downgrade() -> None:
    op.drop_table("lead_status_changes")
    op.drop_table("leads")
    for table in ("leads_idempotency_keys", "leads_event_log", "leads_events"):
        op.drop_table(table)
