"""An appointment's primary key leads with the org, as the table's other indexes
do, and its changes refer to it by (org, appointment_id): a lookup by id matches
the key whole, statistics or not (services.shared.migration_keys).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from services.shared.migration_keys import Referrer, key_with_org

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key_with_org("appointments", "appointment_id", old_key="appointments_pkey", referrers=[
        Referrer("appointment_changes", "appointment_id",
                 "appointment_changes_appointment_id_fkey")])


def downgrade() -> None:
    raise NotImplementedError("keys are not taken back: restore a backup")
