"""The event log (a transactional outbox) and the streams that read it.

Writing. A unit of work appends its events just before it commits, in the
same transaction as the change: it moves the log's head by the number of
events and gives them the positions in between. The head row stays locked
until commit, so positions are gap-free and follow commit order on every
replica; a sequence would not (a lower value can commit after a higher one has
been read, and a reader resuming after the higher one would skip it).

Reading. Each process keeps one `EventFeed`: it learns of new events from
PostgreSQL LISTEN/NOTIFY (or, on SQLite, from its own commits), fetches them
once, and keeps the latest few thousand in a ring. Every subscriber holds only
its position: one that keeps up reads from the ring, one that falls behind
reads pages from the database. No subscriber buffers without bound.

Cursors are opaque to clients: base64url of "<log id>:<position>".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import psycopg
from sqlalchemy import Executable, and_, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import sql
from services.shared.db import Database, backoff, retrying, utcnow
from services.shared.errors import InvalidArgument, OutOfRange
from services.shared.schema import LOG_ROW_ID, SharedTables
from services.shared.validation import identifier

log = logging.getLogger(__name__)

MAX_FILTER_IDS = 100
PAGE = 500
# How many events the feed fetches at once, and how long it lets wake-ups gather.
FETCH = 1000
COALESCE_SECONDS = 0.002


@dataclass(frozen=True)
class EventRecord:
    """An event about to be appended: what the service layer hands the log."""

    type: str
    actor: str
    occurred_at: datetime
    payload: bytes
    lead_id: str | None = None
    subject_id: str | None = None


@dataclass(eq=False)
class StoredEvent:
    position: int
    type: str
    lead_id: str | None
    subject_id: str | None
    payload: bytes
    # The message as sent, built once however many subscribers send it.
    rendered: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Filter:
    lead_ids: frozenset[str] = frozenset()
    subject_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, event: StoredEvent) -> bool:
        return (
            (not self.lead_ids or event.lead_id in self.lead_ids)
            and (not self.subject_ids or event.subject_id in self.subject_ids)
            and (not self.types or event.type in self.types)
        )

    @classmethod
    def of(
        cls,
        *,
        lead_ids: Iterable[str] = (),
        subject_ids: Iterable[str] = (),
        subject_field: str = "subject_ids",
        types: Iterable[str] = (),
        known_types: Iterable[str],
    ) -> Filter:
        known = set(known_types)
        for name, ids in (("lead_ids", list(lead_ids)), (subject_field, list(subject_ids))):
            if len(ids) > MAX_FILTER_IDS:
                raise InvalidArgument.field(name, f"at most {MAX_FILTER_IDS} ids")
            for i, value in enumerate(ids):
                identifier(value, f"{name}[{i}]")
        wanted = list(types)
        for i, kind in enumerate(wanted):
            if kind not in known:
                raise InvalidArgument.field(
                    f"types[{i}]", f"unknown event type {kind!r}; known: {', '.join(sorted(known))}"
                )
        return cls(frozenset(lead_ids), frozenset(subject_ids), frozenset(wanted))


@dataclass(frozen=True)
class Head:
    log_id: str
    head: int
    purged_through: int


class EventLog:
    """Appends to and reads from one service's event log table."""

    def __init__(self, tables: SharedTables, *, channel: str, postgres: bool) -> None:
        self.events = tables.events
        self.log_row = tables.event_log
        self.channel = channel
        self.postgres = postgres
        self.log_id = ""
        self._notify = text("SELECT pg_notify(:channel, '')")
        # PostgreSQL: move the head, notify and insert the events in one statement.
        self._append = sql.raw(f"""
            WITH head AS (
                UPDATE {self.log_row.name} SET head = head + %(n)s
                WHERE id = {LOG_ROW_ID} RETURNING head
            ), notified AS (SELECT pg_notify(%(channel)s, ''))
            INSERT INTO {self.events.name}
                (position, occurred_at, type, actor, lead_id, subject_id, payload)
            SELECT head.head - %(n)s + r.ord, r.occurred_at, r.type, r.actor, r.lead_id,
                   r.subject_id, r.payload
            FROM head, notified, unnest(
                %(occurred_at)s::timestamptz[], %(type)s::text[], %(actor)s::text[],
                %(lead_id)s::text[], %(subject_id)s::text[], %(payload)s::bytea[]
            ) WITH ORDINALITY AS r(occurred_at, type, actor, lead_id, subject_id, payload, ord)
        """)
        # The common case, one event, without arrays to build and unpack.
        self._append_one = sql.raw(f"""
            WITH head AS (
                UPDATE {self.log_row.name} SET head = head + 1
                WHERE id = {LOG_ROW_ID} RETURNING head
            ), notified AS (SELECT pg_notify(%(channel)s, ''))
            INSERT INTO {self.events.name}
                (position, occurred_at, type, actor, lead_id, subject_id, payload)
            SELECT head.head, %(occurred_at)s, %(type)s, %(actor)s, %(lead_id)s,
                   %(subject_id)s, %(payload)s
            FROM head, notified
        """)
        # The feed's read of what follows its head, on its own connection.
        self.tail_sql = (
            f"SELECT position, type, lead_id, subject_id, payload FROM {self.events.name} "
            "WHERE position > %(after)s ORDER BY position LIMIT %(limit)s"
        )

    # -- writing ---------------------------------------------------------------

    async def append(self, conn: AsyncConnection, records: Sequence[EventRecord]) -> int:
        """Append `records` in this transaction; returns the new head."""
        if not records:
            return -1
        if self.postgres:
            # Delivered at commit, and only if the transaction commits.
            await conn.execute(self._notify, {"channel": self.channel})
        head: int = (
            await conn.execute(
                update(self.log_row)
                .where(self.log_row.c.id == LOG_ROW_ID)
                .values(head=self.log_row.c.head + len(records))
                .returning(self.log_row.c.head)
            )
        ).scalar_one()
        first = head - len(records) + 1
        await conn.execute(
            insert(self.events),
            [
                {
                    "position": first + i,
                    "occurred_at": r.occurred_at,
                    "type": r.type,
                    "actor": r.actor,
                    "lead_id": r.lead_id,
                    "subject_id": r.subject_id,
                    "payload": r.payload,
                }
                for i, r in enumerate(records)
            ],
        )
        return head

    def append_statement(
        self, records: Sequence[EventRecord]
    ) -> tuple[Executable, dict[str, Any]]:
        """PostgreSQL: one statement moving the head, notifying and appending `records`."""
        if len(records) == 1:
            (r,) = records
            return self._append_one, {
                "channel": self.channel, "occurred_at": r.occurred_at, "type": r.type,
                "actor": r.actor, "lead_id": r.lead_id, "subject_id": r.subject_id,
                "payload": r.payload,
            }
        return self._append, {
            "n": len(records),
            "channel": self.channel,
            "occurred_at": [r.occurred_at for r in records],
            "type": [r.type for r in records],
            "actor": [r.actor for r in records],
            "lead_id": [r.lead_id for r in records],
            "subject_id": [r.subject_id for r in records],
            "payload": [r.payload for r in records],
        }

    # -- reading ---------------------------------------------------------------

    async def head(self, conn: AsyncConnection) -> Head:
        row = (
            await conn.execute(select(self.log_row).where(self.log_row.c.id == LOG_ROW_ID))
        ).one()
        return Head(row.log_id, row.head, row.purged_through)

    async def read(
        self,
        conn: AsyncConnection,
        *,
        after: int,
        until: int | None,
        where: Filter = Filter(),
        limit: int = PAGE,
    ) -> list[StoredEvent]:
        """Events with `after < position <= until` (or beyond) that match, in log order.

        What a read sees of the log is always a gap-free prefix of it, since
        positions follow commit order.
        """
        c = self.events.c
        clauses = [c.position > after] if until is None else [c.position > after,
                                                               c.position <= until]
        if where.lead_ids:
            clauses.append(c.lead_id.in_(sorted(where.lead_ids)))
        if where.subject_ids:
            clauses.append(c.subject_id.in_(sorted(where.subject_ids)))
        if where.types:
            clauses.append(c.type.in_(sorted(where.types)))
        rows = await conn.execute(
            select(c.position, c.type, c.lead_id, c.subject_id, c.payload)
            .where(and_(*clauses))
            .order_by(c.position)
            .limit(limit)
        )
        return [_stored(row) for row in rows]

    async def purge(self, conn: AsyncConnection, *, older_than: datetime) -> int:
        """Delete events that occurred before `older_than`; returns how many."""
        c = self.events.c
        last = (
            await conn.execute(select(func.max(c.position)).where(c.occurred_at < older_than))
        ).scalar()
        if last is None:
            return 0
        deleted = (await conn.execute(delete(self.events).where(c.position <= last))).rowcount
        await conn.execute(
            update(self.log_row)
            .where(self.log_row.c.id == LOG_ROW_ID, self.log_row.c.purged_through < last)
            .values(purged_through=last)
        )
        return int(deleted or 0)

    # -- cursors ---------------------------------------------------------------

    def cursor(self, position: int) -> str:
        raw = f"{self.log_id}:{position}".encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def position_of(self, cursor: str, *, field_name: str = "after_cursor") -> int:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            log_id, _, position = raw.partition(":")
            value = int(position)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument.field(
                field_name, "not a cursor of this service", reason="INVALID_CURSOR"
            ) from None
        if log_id != self.log_id or value < 0:
            raise OutOfRange(
                f"{field_name}: the cursor belongs to another event log; subscribe from the head",
                reason="CURSOR_UNKNOWN",
            )
        return value


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(row.position, row.type, row.lead_id, row.subject_id, bytes(row.payload))


class EventFeed:
    """The tail of one service's log, fetched once per process for every subscriber."""

    def __init__(
        self,
        db: Database,
        log: EventLog,
        *,
        ring_size: int = 4096,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.log = log
        self.head = 0
        self.closed = False
        self.subscribers = 0
        self._ring: deque[StoredEvent] = deque(maxlen=ring_size)
        self._poll_interval = poll_interval
        self._poked = asyncio.Event()
        self._advanced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # PostgreSQL: the feed reads the log on a connection of its own.
        self._reader: psycopg.AsyncConnection[Any] | None = None

    async def start(self) -> None:
        async with self.db.transaction(write=False) as conn:
            head = await self.log.head(conn)
        self.log.log_id = head.log_id
        self.head = head.head
        self._tasks.append(asyncio.create_task(self._pump(), name="event-feed-pump"))
        if self.log.postgres:
            self._tasks.append(asyncio.create_task(self._listen(), name="event-feed-listen"))

    def poke(self) -> None:
        """Something may have been appended: fetch it."""
        self._poked.set()

    async def close(self) -> None:
        """End every subscription of this process, cleanly."""
        self.closed = True
        self._wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reader is not None:
            await self._reader.close()

    def since(self, position: int) -> list[StoredEvent] | None:
        """Events after `position` from the ring, or None if it no longer reaches back."""
        if position >= self.head:
            return []
        if not self._ring or self._ring[0].position > position + 1:
            return None
        return list(islice(self._ring, position + 1 - self._ring[0].position, None))

    async def wait_beyond(self, position: int, seconds: float) -> bool:
        """Wait up to `seconds` for the head to pass `position`; False if not (or closed)."""
        try:
            async with asyncio.timeout(seconds):
                while self.head <= position and not self.closed:
                    await self._advanced.wait()
        except TimeoutError:
            return False
        return self.head > position

    def _wake(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._poked.wait()
                # Let the commits of a busy moment fold into one read.
                await asyncio.sleep(COALESCE_SECONDS)
            self._poked.clear()
            try:
                await self._catch_up()
            except Exception:
                log.warning("could not read the event log", exc_info=True)
                await asyncio.sleep(self._poll_interval)

    async def _catch_up(self) -> None:
        while True:
            # No need to read the head first: positions are given in commit
            # order under the head's lock, so the events any read can see are
            # a gap-free prefix of the log.
            batch = await self._tail()
            if not batch:
                return
            self._ring.extend(batch)
            self.head = batch[-1].position
            self._wake()
            if len(batch) < FETCH:
                return  # a short page: nothing more was visible

    async def _tail(self) -> list[StoredEvent]:
        """The events after the feed's head, as far as they are visible."""
        if not self.log.postgres:
            async with self.db.transaction(write=False) as conn:
                return await self.log.read(conn, after=self.head, until=None, limit=FETCH)
        if self._reader is None or self._reader.closed:
            self._reader = await psycopg.AsyncConnection.connect(
                self.db.libpq_conninfo(), autocommit=True, connect_timeout=5)
        try:
            cursor = await self._reader.execute(self.log.tail_sql,
                                                {"after": self.head, "limit": FETCH})
            rows = await cursor.fetchall()
        except psycopg.Error:
            await self._reader.close()
            raise
        return [StoredEvent(p, t, lead, subject, bytes(payload))
                for p, t, lead, subject, payload in rows]

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.db.libpq_conninfo(), autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f'LISTEN "{self.log.channel}"')
                    attempt = 0
                    self.poke()  # whatever was appended while we were not listening
                    async for _ in conn.notifies():
                        self.poke()
            except (psycopg.Error, OSError):
                log.warning("event notifications lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.1 + backoff(attempt, base=0.2, cap=5.0))
                attempt += 1


@dataclass(frozen=True)
class Start:
    """Where a subscription starts and the head it went live at."""

    position: int
    head: int


async def start_position(
    db: Database, event_log: EventLog, after_cursor: str, time_remaining: float | None
) -> Start:
    """Resolve a Subscribe request's `after_cursor` against the log as it stands."""
    after = event_log.position_of(after_cursor) if after_cursor else None

    async def read_head() -> Head:
        async with db.transaction(write=False) as conn:
            return await event_log.head(conn)

    head = await retrying(read_head, time_remaining=time_remaining)
    if after is None:
        return Start(head.head, head.head)
    if after > head.head:
        raise OutOfRange(
            "after_cursor: the cursor is ahead of this event log; subscribe from the head",
            reason="CURSOR_UNKNOWN",
        )
    if after < head.purged_through:
        raise OutOfRange(
            "after_cursor: the events after this cursor are past the retention window; "
            "subscribe from the head",
            reason="CURSOR_EXPIRED",
        )
    return Start(after, head.head)


@dataclass(frozen=True)
class Tick:
    """A bookmark to send: the subscriber stands at `position`, the log at `head`."""

    position: int
    head: int


async def follow(
    feed: EventFeed,
    start: Start,
    where: Filter,
    *,
    heartbeat: float,
) -> AsyncIterator[StoredEvent | Tick]:
    """The events after `start` that match `where`, then live ones, with bookmarks.

    Yields a Tick first (the subscription is live: from here on nothing is
    missed), then events in log order, and a Tick whenever `heartbeat` seconds
    pass without anything sent, even while events that do not match go by.
    Ends when the feed closes.
    """
    clock = asyncio.get_running_loop().time
    position = start.position
    yield Tick(position, start.head)
    last_sent = clock()
    feed.subscribers += 1
    try:
        while not feed.closed:
            if position >= feed.head:
                quiet = heartbeat - (clock() - last_sent)
                if quiet > 0 and await feed.wait_beyond(position, quiet):
                    continue
            else:
                matching, position = await _next_batch(feed, position, where)
                for event in matching:
                    yield event
                if matching:
                    last_sent = clock()
            if not feed.closed and clock() - last_sent >= heartbeat:
                yield Tick(position, feed.head)
                last_sent = clock()
    finally:
        feed.subscribers -= 1


async def _next_batch(
    feed: EventFeed, position: int, where: Filter
) -> tuple[list[StoredEvent], int]:
    """The matching events after `position`, and the position they bring it to."""
    batch = feed.since(position)
    if batch is not None:
        return [e for e in batch if where.matches(e)], batch[-1].position
    until = feed.head

    async def read() -> list[StoredEvent]:
        async with feed.db.transaction(write=False) as conn:
            return await feed.log.read(conn, after=position, until=until, where=where)

    # Fallen behind the ring: page through the log itself.
    matching = await retrying(read, time_remaining=None, what="the event log")
    return matching, matching[-1].position if len(matching) == PAGE else until


def purge_cutoff(retention_seconds: int) -> datetime:
    return utcnow() - timedelta(seconds=retention_seconds)
