"""A lead's primary key leads with the org, as the table's other indexes do, and
its status changes refer to it by (org, lead_id): a lookup by id matches the key
whole, statistics or not (services.shared.migration_keys).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from services.shared.migration_keys import Referrer, key_with_org

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key_with_org("leads", "lead_id", old_key="leads_pkey", referrers=[
        Referrer("lead_status_changes", "lead_id", "lead_status_changes_lead_id_fkey")])


def downgrade() -> None:
    raise NotImplementedError("keys are not taken back: restore a backup")
