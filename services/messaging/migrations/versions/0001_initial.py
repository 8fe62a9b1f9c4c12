"""Messages, recipients' consent, and the shared tables.

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
    create_shared_tables("messaging")
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("to_phone", sa.String(20), nullable=False),
        sa.Column("from_phone", sa.String(20), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("segments", sa.Integer, nullable=False),
        sa.Column("encoding", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_message_id", sa.String(64)),
        sa.Column("error_code", sa.Integer, nullable=False),
        sa.Column("error_message", sa.String(500), nullable=False),
        sa.Column("handoff", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_messages_lead_created", "messages", ["lead_id", "created_at", "message_id"])
    op.create_index("ix_messages_to_created", "messages", ["to_phone", "created_at"])
    op.create_index("ux_messages_provider_message_id", "messages", ["provider_message_id"],
                    unique=True)
    op.create_table(
        "recipients",
        sa.Column("phone", sa.String(20), primary_key=True),
        sa.Column("opted_out", sa.Boolean, nullable=False),
        sa.Column("keyword", sa.String(16), nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recipients")
    op.drop_table("messages")
    for table in ("messaging_idempotency_keys", "messaging_event_log", "messaging_events"):
        op.drop_table(table)
