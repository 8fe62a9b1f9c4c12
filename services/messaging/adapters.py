"""Storage of messages and consent: tables, repositories (Core), unit of work."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.messaging import messages as convert
from services.messaging.domain import (
    Direction,
    Handoff,
    Message,
    MessageNotFound,
    MessageStatus,
    Recipient,
)
from services.messaging.segments import Encoding
from services.shared import sql
from services.shared.db import UTCDateTime, as_utc
from services.shared.errors import Aborted
from services.shared.events import EventRecord
from services.shared.schema import shared_tables
from services.shared.uow import UnitOfWork

metadata = MetaData()
shared = shared_tables(metadata, "messaging")

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("lead_id", String(64), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("to_phone", String(20), nullable=False),
    Column("from_phone", String(20), nullable=False),
    Column("body", Text, nullable=False),
    Column("segments", Integer, nullable=False),
    Column("encoding", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("provider_message_id", String(64)),
    Column("error_code", Integer, nullable=False),
    Column("error_message", String(500), nullable=False),
    Column("handoff", String(16), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", BigInteger, nullable=False),
    Index("ix_messages_lead_created", "lead_id", "created_at", "message_id"),
    Index("ix_messages_to_created", "to_phone", "created_at"),
    Index("ux_messages_provider_message_id", "provider_message_id", unique=True),
)

recipients = Table(
    "recipients",
    metadata,
    Column("phone", String(20), primary_key=True),
    Column("opted_out", Boolean, nullable=False),
    Column("keyword", String(16), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
)


class ConcurrentChange(Aborted):
    reason = "CONCURRENT_CHANGE"


def _message(row: Row[Any]) -> Message:
    return Message(
        message_id=row.message_id, lead_id=row.lead_id, direction=Direction(row.direction),
        to=row.to_phone, from_=row.from_phone, body=row.body, segments=row.segments,
        encoding=Encoding(row.encoding), status=MessageStatus(row.status),
        provider=row.provider, provider_message_id=row.provider_message_id or "",
        error_code=row.error_code, error_message=row.error_message,
        handoff=Handoff(row.handoff), created_by=row.created_by, created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at), version=row.version,
    )


def _columns(message: Message) -> dict[str, object]:
    return {
        "lead_id": message.lead_id, "direction": message.direction.value,
        "to_phone": message.to, "from_phone": message.from_, "body": message.body,
        "segments": message.segments, "encoding": message.encoding.value,
        "status": message.status.value, "provider": message.provider,
        "provider_message_id": message.provider_message_id or None,
        "error_code": message.error_code, "error_message": message.error_message[:500],
        "handoff": message.handoff.value, "created_by": message.created_by,
        "created_at": message.created_at, "updated_at": message.updated_at,
        "version": message.version,
    }


# The hot statements, built once (see services.shared.sql).
INSERT_MESSAGE = insert(messages)
SELECT_MESSAGE = select(messages).where(messages.c.message_id == bindparam("message_id"))
SELECT_MESSAGE_FOR_UPDATE = SELECT_MESSAGE.with_for_update()
SELECT_BY_PROVIDER_ID = select(messages).where(
    messages.c.provider_message_id == bindparam("provider_message_id"))
SELECT_BY_PROVIDER_ID_FOR_UPDATE = SELECT_BY_PROVIDER_ID.with_for_update()
UPDATE_MESSAGE = update(messages).where(
    messages.c.message_id == bindparam("b_message_id"),
    messages.c.version == bindparam("b_version"),
)
SELECT_RECIPIENT = select(recipients).where(recipients.c.phone == bindparam("phone"))


class SqlMessageRepository:
    """Writes go out with the unit of work's commit on PostgreSQL (see
    UnitOfWork.write): every message saved was read FOR UPDATE first, so none
    can change meanwhile."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.conn = uow.conn
        self.postgres = uow.postgres
        self.seen: dict[str, Message] = {}
        self._loaded_versions: dict[str, int] = {}

    async def add(self, message: Message) -> None:
        await self.uow.write(INSERT_MESSAGE,
                             {"message_id": message.message_id, **_columns(message)})
        self.seen[message.message_id] = message
        self._loaded_versions[message.message_id] = message.version

    async def get(self, message_id: str, *, for_update: bool = False) -> Message:
        query = SELECT_MESSAGE_FOR_UPDATE if for_update and self.postgres else SELECT_MESSAGE
        found = await self._one(query, {"message_id": message_id})
        if found is None:
            raise MessageNotFound(message_id)
        return found

    async def by_provider_id(self, provider_message_id: str, *,
                             for_update: bool = False) -> Message | None:
        locking = for_update and self.postgres
        query = SELECT_BY_PROVIDER_ID_FOR_UPDATE if locking else SELECT_BY_PROVIDER_ID
        return await self._one(query, {"provider_message_id": provider_message_id})

    async def _one(self, query: sql.Statement, params: sql.Params) -> Message | None:
        rows = await sql.fetch(self.conn, query, params)
        if not rows:
            return None
        message = _message(rows[0])
        self.seen[message.message_id] = message
        self._loaded_versions[message.message_id] = message.version
        return message

    async def save(self, message: Message) -> None:
        loaded = self._loaded_versions[message.message_id]
        if message.version == loaded:
            return
        changed = await self.uow.write(UPDATE_MESSAGE, {
            "b_message_id": message.message_id, "b_version": loaded, **_columns(message)})
        if changed is not None and changed != 1:
            raise ConcurrentChange(f"message {message.message_id!r} changed concurrently")
        self._loaded_versions[message.message_id] = message.version

    async def history(self, lead_id: str, after: list[object] | None, limit: int) -> list[Message]:
        """A lead's messages, newest first; `after` is the last (created_at, id) served."""
        query = select(messages).where(messages.c.lead_id == lead_id)
        if after is not None:
            query = query.where(
                tuple_(messages.c.created_at, messages.c.message_id) < tuple_(*after))
        query = query.order_by(messages.c.created_at.desc(),
                               messages.c.message_id.desc()).limit(limit)
        return [_message(row) for row in await self.conn.execute(query)]

    async def lead_of(self, phone: str) -> str:
        """The lead last texted at `phone`, or "" if none."""
        row = (await self.conn.execute(
            select(messages.c.lead_id)
            .where(messages.c.to_phone == phone, messages.c.direction == Direction.OUTBOUND)
            .order_by(messages.c.created_at.desc()).limit(1)
        )).first()
        return str(row.lead_id) if row else ""

    async def known_provider_ids(self, phone: str, since: datetime) -> Collection[str]:
        """Provider ids already recorded for texts to `phone` since `since`."""
        rows = await self.conn.execute(
            select(messages.c.provider_message_id).where(
                messages.c.to_phone == phone, messages.c.created_at >= since,
                messages.c.provider_message_id.is_not(None))
        )
        return {row[0] for row in rows}


class SqlRecipientRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.seen: dict[str, Recipient] = {}
        self._stored: set[str] = set()

    async def get(self, phone: str, *, now: datetime) -> Recipient:
        """The number's consent; a number never heard from has not opted out."""
        rows = await sql.fetch(self.conn, SELECT_RECIPIENT, {"phone": phone})
        row = rows[0] if rows else None
        if row is None:
            recipient = Recipient(phone, opted_out=False, keyword="", changed_at=now)
        else:
            recipient = Recipient(row.phone, row.opted_out, row.keyword, as_utc(row.changed_at))
            self._stored.add(phone)
        self.seen[phone] = recipient
        return recipient

    async def save(self, recipient: Recipient) -> None:
        values = {"opted_out": recipient.opted_out, "keyword": recipient.keyword,
                  "changed_at": recipient.changed_at}
        if recipient.phone in self._stored:
            await self.conn.execute(
                update(recipients).where(recipients.c.phone == recipient.phone).values(**values))
        else:
            await self.conn.execute(insert(recipients).values(phone=recipient.phone, **values))
            self._stored.add(recipient.phone)


class SqlMessagingUnitOfWork(UnitOfWork):
    def __init__(self, conn: AsyncConnection, runtime: Any) -> None:
        super().__init__(conn, runtime)
        self.messages = SqlMessageRepository(self)
        self.recipients = SqlRecipientRepository(conn)
        self.records: list[EventRecord] = []

    def collect_events(self) -> list[EventRecord]:
        found = [convert.event_record(e) for m in self.messages.seen.values()
                 for e in m.pull_events()]
        found += [convert.consent_record(e) for r in self.recipients.seen.values()
                  for e in r.pull_events()]
        return [*found, *self.records]

