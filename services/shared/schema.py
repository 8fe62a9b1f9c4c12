"""The tables every service keeps for itself: its event log and its idempotency keys.

Several services may share one PostgreSQL database, so each service's copies
carry its name as a prefix (`leads_events`, `bookings_idempotency_keys`, …).
These are the runtime definitions; `migration_v1` creates them, and a test
checks that the migrations produce exactly these tables.
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
)

from services.shared.db import UTCDateTime

# The event log's single row.
LOG_ROW_ID = 1


def event_columns() -> list[Column]:  # type: ignore[type-arg]
    return [
        # Gap-free and in commit order: assigned under the log row's lock.
        Column("position", BigInteger, primary_key=True, autoincrement=False),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("type", String(64), nullable=False),
        Column("actor", String(128), nullable=False),
        Column("lead_id", String(64)),
        # The appointment or message the event is about, if any.
        Column("subject_id", String(64)),
        # The service's `Event` message, serialized, without its cursor.
        Column("payload", LargeBinary, nullable=False),
    ]


def event_log_columns() -> list[Column]:  # type: ignore[type-arg]
    return [
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        # Names this log in its cursors, so a cursor of another database is refused.
        Column("log_id", String(32), nullable=False),
        # The position of the newest event.
        Column("head", BigInteger, nullable=False),
        # Events up to this position may have been purged.
        Column("purged_through", BigInteger, nullable=False),
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
    )
    event_log = Table(f"{prefix}_event_log", metadata, *event_log_columns())
    keys = Table(
        f"{prefix}_idempotency_keys",
        metadata,
        *idempotency_columns(),
        PrimaryKeyConstraint("principal", "method", "key", name=f"pk_{prefix}_idempotency_keys"),
        Index(f"ix_{prefix}_idempotency_keys_expires_at", "expires_at"),
    )
    return SharedTables(events, event_log, keys)
