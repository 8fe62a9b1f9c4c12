"""Organizations: every row names its org (existing rows: `default`); indexes
lead with the org; an agent's confirmed slots are kept apart within its org;
row-level security on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

from services.shared.migration_orgs import add_org, enable_row_level_security, reindex, rekey_shared

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rekey_shared("bookings")
    add_org("appointments")
    add_org("appointment_changes")
    reindex("ix_appointments_start", "appointments", ["start_time", "appointment_id"])
    reindex("ix_appointments_agent_start", "appointments", ["agent_id", "start_time"])
    reindex("ix_appointments_lead_start", "appointments", ["lead_id", "start_time"])
    if op.get_bind().dialect.name == "postgresql":
        # Agents are an org's: two orgs' agents of one name never collide.
        op.execute("ALTER TABLE appointments DROP CONSTRAINT appointments_no_double_booking")
        op.execute(
            "ALTER TABLE appointments ADD CONSTRAINT appointments_no_double_booking "
            "EXCLUDE USING gist (org WITH =, agent_id WITH =, "
            "tstzrange(start_time, end_time, '[)') WITH &&) WHERE (status = 'confirmed')"
        )
    enable_row_level_security("bookings", ["appointments", "appointment_changes"])


def downgrade() -> None:
    raise NotImplementedError("organizations are not taken out again: restore a backup")
