"""The tables every service keeps for itself: its event log and its idempotency keys.

Several services may share one PostgreSQL database, so each service's copies
carry its name as a prefix (`leads_events`, `bookings_idempotency_keys`, …).
These are the runtime definitions; `migration_v1` creates them (the org
columns came with each service's org migration, `migration_orgs`), and a test
checks that the migrations produce exactly these tables.

Every row names its organization (`org`). The event log is one sequence for
every org (so a cursor is a position in it), each event naming its org; the
log's head row is no org's. Idempotency keys are scoped per org, principal and RPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    text,
)

from services.shared.db import UTCDateTime

# The event log's single row.
LOG_ROW_ID = 1
# Every org column: an org's name (services.shared.orgs).
ORG_LENGTH = 64


def org_column() -> Column:  # type: ignore[type-arg]
    return Column("org", String(ORG_LENGTH), nullable=False)


def event_columns() -> list[Column]:  # type: ignore[type-arg]
    return [
        # PostgreSQL: from the sequence `<prefix>_events_position`, with gaps and
        # not in commit order; SQLite: gap-free, under the single writer's lock.
        Column("position", BigInteger, primary_key=True, autoincrement=False),
        # The writing transaction (PostgreSQL's xid8 as a BIGINT; 0 on SQLite and
        # for the events written before): the log's order is (xid, position).
        Column("xid", BigInteger, nullable=False, server_default=text("0")),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("type", String(64), nullable=False),
        Column("actor", String(128), nullable=False),
        Column("lead_id", String(64)),
        # The appointment or message the event is about, if any.
        Column("subject_id", String(64)),
        # The service's `Event` message, serialized, without its cursor.
        Column("payload", LargeBinary, nullable=False),
        org_column(),
    ]


def event_log_columns() -> list[Column]:  # type: ignore[type-arg]
    return [
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        # Names this log in its cursors, so a cursor of another database is refused.
        Column("log_id", String(32), nullable=False),
        # SQLite: the position of the newest event (PostgreSQL: where the
        # sequence started, no longer moved).
        Column("head", BigInteger, nullable=False),
        # Events up to this key (purged_through_xid, purged_through) may have been purged.
        Column("purged_through", BigInteger, nullable=False),
        Column("purged_through_xid", BigInteger, nullable=False, server_default=text("0")),
    ]


def idempotency_columns() -> list[Column]:  # type: ignore[type-arg]
    return [
        Column("principal", String(128), nullable=False),
        Column("method", String(128), nullable=False),
        Column("key", String(255), nullable=False),
        # sha256 of the request, to tell a retry from a reuse of the key.
        Column("fingerprint", String(64), nullable=False),
        # "done" once the outcome is stored; "pending" while an external effect
        # (an SMS) is under way.
        Column("state", String(16), nullable=False),
        # google.rpc.Code of the outcome; 0 is success.
        Column("code", Integer, nullable=False),
        # The response message on success, else the google.rpc.Status.
        Column("response", LargeBinary, nullable=False),
        # What a pending call is creating, so that recovery can find it.
        Column("resource_id", String(64)),
        Column("created_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
        org_column(),
    ]


@dataclass(frozen=True)
class SharedTables:
    events: Table
    event_log: Table
    idempotency_keys: Table


def shared_tables(metadata: MetaData, prefix: str) -> SharedTables:
    events = Table(
        f"{prefix}_events",
        metadata,
        *event_columns(),
        Index(f"ix_{prefix}_events_lead", "lead_id", "position"),
        Index(f"ix_{prefix}_events_subject", "subject_id", "position"),
        Index(f"ix_{prefix}_events_occurred_at", "occurred_at"),
        Index(f"ix_{prefix}_events_org", "org", "position"),
        Index(f"ix_{prefix}_events_order", "xid", "position"),
    )
    event_log = Table(f"{prefix}_event_log", metadata, *event_log_columns())
    keys = Table(
        f"{prefix}_idempotency_keys",
        metadata,
        *idempotency_columns(),
        PrimaryKeyConstraint("org", "principal", "method", "key",
                             name=f"pk_{prefix}_idempotency_keys"),
        Index(f"ix_{prefix}_idempotency_keys_expires_at", "expires_at"),
    )
    return SharedTables(events, event_log, keys)
