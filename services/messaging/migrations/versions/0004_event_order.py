"""The event log ordered by writing transaction: no lock on its head row
(services.shared.migration_event_order).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from services.shared.migration_event_order import order_events_by_transaction

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    order_events_by_transaction("messaging")


def downgrade() -> None:
    raise NotImplementedError("the event log's order is not taken back: restore a backup")
