"""Appointments, their changes, the shared tables, and no double booking.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
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
    create_shared_tables("bookings")
    op.create_table(
        "appointments",
        sa.Column("appointment_id", sa.String(36), primary_key=True),
        sa.Column("lead_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(100), nullable=False),
        sa.Column("start_time", UTCDateTime, nullable=False),
        sa.Column("end_time", UTCDateTime, nullable=False),
        sa.Column("notes", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("confirmed_by", sa.String(128), nullable=False),
        sa.Column("confirmed_at", UTCDateTime),
        sa.Column("cancelled_by", sa.String(128), nullable=False),
        sa.Column("cancelled_at", UTCDateTime),
        sa.Column("cancel_reason", sa.String(500), nullable=False),
        sa.Column("completed_by", sa.String(128), nullable=False),
        sa.Column("completed_at", UTCDateTime),
    )
    op.create_index("ix_appointments_start", "appointments", ["start_time", "appointment_id"])
    op.create_index("ix_appointments_agent_start", "appointments", ["agent_id", "start_time"])
    op.create_index("ix_appointments_lead_start", "appointments", ["lead_id", "start_time"])
    op.create_table(
        "appointment_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("appointment_id", sa.String(36), sa.ForeignKey("appointments.appointment_id"),
                  nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_appointment_changes_appointment", "appointment_changes",
                    ["appointment_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        # Two confirmed appointments of one agent never overlap, whatever races:
        # the database refuses the second (sqlstate 23P01). Ranges are half-open,
        # so back-to-back slots do not collide. SQLite has no such constraint;
        # there the single writer lock makes the service's own check safe.
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE appointments ADD CONSTRAINT appointments_no_double_booking "
            "EXCLUDE USING gist (agent_id WITH =, tstzrange(start_time, end_time, '[)') WITH &&) "
            "WHERE (status = 'confirmed')"
        )


def downgrade() -> None:
    op.drop_table("appointment_changes")
    op.drop_table("appointments")
    for table in ("bookings_idempotency_keys", "bookings_event_log", "bookings_events"):
        op.drop_table(table)
