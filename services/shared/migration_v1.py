"""The first shape of the shared tables, for each service's first migration.

Frozen: a later change to the shared tables is a new migration in every
service, never an edit here. A test checks that the migrations produce exactly
the tables of `services.shared.schema`.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

from services.shared.db import UTCDateTime


def create_shared_tables(prefix: str) -> None:
    op.create_table(
        f"{prefix}_events",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(64)),
        sa.Column("subject_id", sa.String(64)),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index(f"ix_{prefix}_events_lead", f"{prefix}_events", ["lead_id", "position"])
    op.create_index(f"ix_{prefix}_events_subject", f"{prefix}_events", ["subject_id", "position"])
    op.create_index(f"ix_{prefix}_events_occurred_at", f"{prefix}_events", ["occurred_at"])
    log = op.create_table(
        f"{prefix}_event_log",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("head", sa.BigInteger, nullable=False),
        sa.Column("purged_through", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        log, [{"id": 1, "log_id": secrets.token_hex(8), "head": 0, "purged_through": 0}]
    )
    op.create_table(
        f"{prefix}_idempotency_keys",
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("resource_id", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("principal", "method", "key",
                                name=f"pk_{prefix}_idempotency_keys"),
    )
    op.create_index(f"ix_{prefix}_idempotency_keys_expires_at", f"{prefix}_idempotency_keys",
                    ["expires_at"])
