"""Storage of messages and consent: tables, repositories (Core), unit of work."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)

from services.messaging.domain import (
    ConsentChanged,
    Direction,
    Handoff,
    Message,
    MessageEvent,
    MessageNotFound,
    MessageStatus,
    Recipient,
)
from services.messaging.segments import Encoding
from services.messaging.templates import MessageTemplate, TemplateEvent, TemplateNotFound
from services.shared import sql
from services.shared.db import UTCDateTime, as_utc
from services.shared.schema import org_column, shared_tables
from services.shared.uow import EventMapper, Respond, Storage, UnitOfWork

metadata = MetaData()
shared = shared_tables(metadata, "messaging")

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(36), nullable=False),
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
    org_column(),
    Index("ix_messages_lead_created", "org", "lead_id", "created_at", "message_id"),
    Index("ix_messages_to_created", "org", "to_phone", "created_at"),
    Index("ux_messages_provider_message_id", "org", "provider_message_id", unique=True),
    # The org first, as in every index here: a lookup by id (which names the org too)
    # matches the key whole, and no other index can look as good to the planner.
    PrimaryKeyConstraint("org", "message_id", name="pk_messages"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("phone", String(20), nullable=False),
    Column("opted_out", Boolean, nullable=False),
    Column("keyword", String(16), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    org_column(),
    # A number's consent is per org: a STOP opts it out of the org it texted only.
    PrimaryKeyConstraint("org", "phone", name="pk_recipients"),
)


message_templates = Table(
    "message_templates",
    metadata,
    Column("template_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", BigInteger, nullable=False),
    org_column(),
    Index("ix_message_templates_name", "org", "name", "template_id"),
    PrimaryKeyConstraint("org", "template_id", name="pk_message_templates"),
)


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
SELECT_MESSAGE = select(messages).where(messages.c.message_id == bindparam("message_id"),
                                        messages.c.org == bindparam("org"))
SELECT_MESSAGE_FOR_UPDATE = SELECT_MESSAGE.with_for_update()
SELECT_BY_PROVIDER_ID = select(messages).where(
    messages.c.provider_message_id == bindparam("provider_message_id"),
    messages.c.org == bindparam("org"))
SELECT_BY_PROVIDER_ID_FOR_UPDATE = SELECT_BY_PROVIDER_ID.with_for_update()
UPDATE_MESSAGE = update(messages).where(
    messages.c.message_id == bindparam("b_message_id"),
    messages.c.version == bindparam("b_version"),
    messages.c.org == bindparam("b_org"),
)
SELECT_RECIPIENT = select(recipients).where(recipients.c.phone == bindparam("phone"),
                                            recipients.c.org == bindparam("org"))
# The number, if it has opted out (what a text to it assumes it does not find).
OPTED_OUT = select(recipients.c.phone).where(recipients.c.phone == bindparam("phone"),
                                             recipients.c.org == bindparam("org"),
                                             recipients.c.opted_out.is_(True))
INSERT_RECIPIENT = insert(recipients)
UPDATE_RECIPIENT = update(recipients).where(recipients.c.phone == bindparam("b_phone"),
                                            recipients.c.org == bindparam("b_org"))


class SqlMessageRepository:
    """Writes go out with the unit of work's commit on PostgreSQL (see
    UnitOfWork.write), guarded by the version the message was read (FOR UPDATE:
    then it cannot change meanwhile) or adopted at (`adopt`: then the guard is
    what tells a change made since)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.seen: dict[str, Message] = {}
        self._loaded_versions: dict[str, int] = {}

    async def add(self, message: Message) -> None:
        await self.uow.write(INSERT_MESSAGE, {"message_id": message.message_id,
                                              **_columns(message), "org": self.uow.org})
        self.seen[message.message_id] = message
        self._loaded_versions[message.message_id] = message.version

    def adopt(self, message: Message) -> Message:
        """A copy of `message` as this process last committed it, taken without a
        read: its save is guarded by that version all the same, so a change made
        since fails it (ConcurrentChange) and writes nothing."""
        adopted = replace(message, events=[])
        self.seen[adopted.message_id] = adopted
        self._loaded_versions[adopted.message_id] = adopted.version
        return adopted

    async def get(self, message_id: str, *, for_update: bool = False) -> Message:
        query = SELECT_MESSAGE_FOR_UPDATE if for_update and self.uow.postgres else SELECT_MESSAGE
        found = await self._one(query, {"message_id": message_id, "org": self.uow.org})
        if found is None:
            raise MessageNotFound(message_id)
        return found

    async def by_provider_id(self, provider_message_id: str, *,
                             for_update: bool = False) -> Message | None:
        locking = for_update and self.uow.postgres
        query = SELECT_BY_PROVIDER_ID_FOR_UPDATE if locking else SELECT_BY_PROVIDER_ID
        return await self._one(query, {"provider_message_id": provider_message_id,
                                       "org": self.uow.org})

    async def _one(self, query: sql.Statement, params: sql.Params) -> Message | None:
        rows = await self.uow.read(query, params)
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
        await self.uow.write(UPDATE_MESSAGE, {
            "b_message_id": message.message_id, "b_version": loaded, "b_org": self.uow.org,
            **_columns(message)},
            expect_rows=1)
        self._loaded_versions[message.message_id] = message.version

    async def history(self, lead_id: str, after: tuple[datetime, str] | None, limit: int
                      ) -> list[Message]:
        """A lead's messages, newest first; `after` is the last (created_at, id) served."""
        query = select(messages).where(messages.c.lead_id == lead_id,
                                       messages.c.org == self.uow.org)
        if after is not None:
            query = query.where(
                tuple_(messages.c.created_at, messages.c.message_id) < tuple_(*after))
        query = query.order_by(messages.c.created_at.desc(),
                               messages.c.message_id.desc()).limit(limit)
        return [_message(row) for row in await self.uow.execute(query)]

    async def lead_of(self, phone: str) -> str:
        """The lead last texted at `phone`, or "" if none."""
        rows = await self.uow.execute(
            select(messages.c.lead_id)
            .where(messages.c.org == self.uow.org, messages.c.to_phone == phone,
                   messages.c.direction == Direction.OUTBOUND)
            .order_by(messages.c.created_at.desc()).limit(1)
        )
        return str(rows[0].lead_id) if rows else ""

    async def known_provider_ids(self, phone: str, since: datetime) -> Collection[str]:
        """Provider ids already recorded for texts to `phone` since `since`."""
        rows = await self.uow.execute(
            select(messages.c.provider_message_id).where(
                messages.c.org == self.uow.org, messages.c.to_phone == phone,
                messages.c.created_at >= since,
                messages.c.provider_message_id.is_not(None))
        )
        return {row[0] for row in rows}


class SqlRecipientRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.seen: dict[str, Recipient] = {}
        self._stored: set[str] = set()

    async def get(self, phone: str, *, now: datetime) -> Recipient:
        """The number's consent; a number never heard from has not opted out."""
        rows = await self.uow.read(SELECT_RECIPIENT, {"phone": phone, "org": self.uow.org})
        row = rows[0] if rows else None
        if row is None:
            recipient = Recipient(phone, opted_out=False, keyword="", changed_at=now)
        else:
            recipient = Recipient(row.phone, row.opted_out, row.keyword, as_utc(row.changed_at))
            self._stored.add(phone)
        self.seen[phone] = recipient
        return recipient

    async def opted_out(self, phone: str) -> bool:
        """Whether the number has opted out, for a write that texts it only if not.

        A first attempt that may start from what it knows (see services.shared.uow,
        "Kept rows") does not read it: it assumes not, as for all but a few numbers,
        and its commit, in the same round trip, fails it if the number has (the
        call runs again, reading, and is refused). A round trip saved a text."""
        params = {"phone": phone, "org": self.uow.org}
        if self.uow.assume(OPTED_OUT, params, rows=0):
            return False
        found = bool(await self.uow.read(OPTED_OUT, params))
        self.uow.judge_assumption(held=not found)
        return found

    async def save(self, recipient: Recipient) -> None:
        values = {"opted_out": recipient.opted_out, "keyword": recipient.keyword,
                  "changed_at": recipient.changed_at}
        if recipient.phone in self._stored:
            await self.uow.write(UPDATE_RECIPIENT, {"b_phone": recipient.phone,
                                                    "b_org": self.uow.org, **values},
                                 expect_rows=1)
        else:
            await self.uow.write(INSERT_RECIPIENT, {"phone": recipient.phone, **values,
                                                    "org": self.uow.org})
            self._stored.add(recipient.phone)


def _template(row: Row[Any]) -> MessageTemplate:
    return MessageTemplate(
        template_id=row.template_id, name=row.name, body=row.body, created_by=row.created_by,
        created_at=as_utc(row.created_at), updated_by=row.updated_by,
        updated_at=as_utc(row.updated_at), version=row.version,
    )


SELECT_TEMPLATE = select(message_templates).where(
    message_templates.c.template_id == bindparam("template_id"),
    message_templates.c.org == bindparam("org"))
COUNT_TEMPLATES = select(func.count()).select_from(message_templates).where(
    message_templates.c.org == bindparam("org"))
INSERT_TEMPLATE = insert(message_templates)
UPDATE_TEMPLATE = update(message_templates).where(
    message_templates.c.template_id == bindparam("b_template_id"),
    message_templates.c.version == bindparam("b_version"),
    message_templates.c.org == bindparam("b_org"))
DELETE_TEMPLATE = delete(message_templates).where(
    message_templates.c.template_id == bindparam("b_template_id"),
    message_templates.c.version == bindparam("b_version"),
    message_templates.c.org == bindparam("b_org"))


class SqlTemplateRepository:
    """Templates change rarely and one at a time: every change names the version
    it read (a concurrent change of one template is ABORTED / CONCURRENT_CHANGE)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.seen: dict[str, MessageTemplate] = {}
        self._loaded_versions: dict[str, int] = {}

    async def get(self, template_id: str) -> MessageTemplate:
        rows = await self.uow.read(SELECT_TEMPLATE, {"template_id": template_id,
                                                     "org": self.uow.org})
        if not rows:
            raise TemplateNotFound(template_id)
        template = _template(rows[0])
        self.seen[template_id] = template
        self._loaded_versions[template_id] = template.version
        return template

    async def add(self, template: MessageTemplate) -> None:
        await self.uow.write(INSERT_TEMPLATE, {"template_id": template.template_id,
                                               **self._columns(template), "org": self.uow.org})
        self.seen[template.template_id] = template

    async def save(self, template: MessageTemplate) -> None:
        await self.uow.write(UPDATE_TEMPLATE, {
            "b_template_id": template.template_id, "b_org": self.uow.org,
            "b_version": self._loaded_versions[template.template_id],
            **self._columns(template)}, expect_rows=1)

    async def remove(self, template: MessageTemplate) -> None:
        await self.uow.write(DELETE_TEMPLATE, {
            "b_template_id": template.template_id, "b_org": self.uow.org,
            "b_version": self._loaded_versions[template.template_id]}, expect_rows=1)

    async def count(self) -> int:
        rows = await self.uow.read(COUNT_TEMPLATES, {"org": self.uow.org})
        return int(rows[0][0])

    async def by_name(self, after: tuple[str, str] | None, limit: int
                      ) -> list[MessageTemplate]:
        """By name; `after` is the (name, template_id) of the last template served."""
        query = select(message_templates).where(message_templates.c.org == self.uow.org)
        if after is not None:
            query = query.where(tuple_(message_templates.c.name, message_templates.c.template_id)
                                > tuple_(*after))
        query = query.order_by(message_templates.c.name, message_templates.c.template_id)
        return [_template(row) for row in await self.uow.execute(query.limit(limit))]

    @staticmethod
    def _columns(template: MessageTemplate) -> dict[str, object]:
        return {"name": template.name, "body": template.body,
                "created_by": template.created_by, "created_at": template.created_at,
                "updated_by": template.updated_by, "updated_at": template.updated_at,
                "version": template.version}


class SqlMessagingUnitOfWork(UnitOfWork):
    def __init__(self, storage: Storage, *, events: EventMapper,
                 respond: Respond | None = None) -> None:
        super().__init__(storage, events=events, respond=respond)
        self.messages = SqlMessageRepository(self)
        self.recipients = SqlRecipientRepository(self)
        self.templates = SqlTemplateRepository(self)

    def recorded_events(self) -> Iterator[MessageEvent | ConsentChanged | TemplateEvent]:
        for message in self.messages.seen.values():
            yield from message.pull_events()
        for recipient in self.recipients.seen.values():
            yield from recipient.pull_events()
        for template in self.templates.seen.values():
            yield from template.pull_events()
