"""The event log (a transactional outbox) and the streams that read it.

Writing. A unit of work appends its events with its commit, in the same
transaction as the change. On PostgreSQL every event takes a position from a
sequence and the id of the transaction writing it (`pg_current_xact_id()`):
no row is shared by the writers, so appends of concurrent transactions do
not wait for each other. On SQLite, whose writers are one at a time anyway,
the log's head row hands out gap-free positions (and every xid is 0).

Order. The log's order is (xid, position): by writing transaction, then in
the order the transaction appended. A sequence alone would not do: a lower
position can commit after a higher one has been delivered, and a reader
resuming after the higher one would skip it. Transaction ids are no better
on their own: they are handed out when a transaction first writes, not when
it commits. What makes them safe is the visibility watermark
`pg_snapshot_xmin(pg_current_snapshot())` (narrowed to this database's
transactions: `WATERMARK`): every transaction with a lower id has ended, and
every transaction to come gets a higher one. So the events
below the watermark are final (none will ever join them), and a reader that
delivers only those, in (xid, position) order, always sees a prefix of the
one order every replica agrees on: resume after any cursor is exact (no
skip, no repeat), and nothing is ever delivered "before" an event already
delivered.

The cost: delivery waits for the oldest transaction in flight that has an
xid in this database (any writer, not only this service's: services that
share a database hold each other's delivery). A write transaction of ten
seconds holds back every event committed after it started, for ten seconds.
The services' writes are a few milliseconds long; keep long write work (a
bulk import, a migration) off the services' database or in short
transactions. While events are held back the feed looks again every few
milliseconds (backing off to a tenth of a second): the transaction that held
them may end without notifying anyone.

Notifying. A write transaction sends no NOTIFY: PostgreSQL serializes the
commits of transactions that notified, which would be a global lock again.
After a commit that appended events, the process wakes its own feed and
`announce`s to the others: one NOTIFY, from a connection of its own, in flight
at a time; the commits made while it is under way share the next one. A woken
feed reads everything new, so one notification stands for any number of
commits (and if one is lost, the feeds poll every second). A NOTIFY nobody else
hears is not sent: LISTEN connections name themselves (`listener_name`), and a
process that last saw no other process's listener, at most LISTENERS_RECHECK
seconds ago, announces nothing (a lone process, one replica, saves a transaction
of the notifying connection and the work PostgreSQL does for it on every commit).
A process that starts listening is heard from the next recheck on; before that
its feed learns of the others' commits by its one-second poll.

Reading. Each process keeps one `EventFeed`: it learns of new events from
PostgreSQL LISTEN/NOTIFY (or, on SQLite, from its own commits), fetches them
once, and keeps the latest few thousand in a ring. Every subscriber holds only
its position: one that keeps up reads from the ring, one that falls behind
reads pages from the database. No subscriber buffers without bound.

A partition between a replica and PostgreSQL is silent: packets vanish, and a
query in flight just waits. So a read of the tail that takes longer than
READ_TIMEOUT abandons its connection and the next read opens a fresh one (a
connection the network dropped would otherwise resume only when TCP's
retransmission backoff, grown to tens of seconds, next tries); the LISTEN
connection sends TCP keepalives, so one cut off is noticed and replaced. While
notifications are lost the feed polls every second, so nothing is missed.

Organizations. Every event names its org; the log is one order for every
org, and each stream delivers only its caller's org's events (`follow` takes
the org; the ring holds every org's, so it is checked on that path too). A
cursor is a place in the one log, so resuming after it is exact in every
org's view: the events of other orgs in between are skipped, never counted.
An event of the services themselves (org `*`, the SMS provider's state) is
no org's data and reaches every org's streams. The feed reads the log in the
system scope (services.shared.orgs); a stream's own reads of the log (behind
the ring) run in its org's scope, and so does its reading of the head, which
is then the newest event that org may see (a cursor past it, issued to the
org's streams as they went by other orgs' events, is still known:
`Head.issued`).

Cursors are opaque to clients: base64url of "<log id>:<xid>.<position>", or
"<log id>:<position>" for xid 0 (every cursor on SQLite, and every cursor
issued before the log was ordered by transaction, which stays valid).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from sqlalchemy import (
    Executable,
    and_,
    delete,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import orgs, sql
from services.shared.db import ANSWER_MARGIN, Database, bounded, retrying, utcnow
from services.shared.errors import InvalidArgument, OutOfRange, Unavailable
from services.shared.limits import StreamLimits
from services.shared.retry import backoff
from services.shared.schema import LOG_ROW_ID, SharedTables
from services.shared.validation import identifier

log = logging.getLogger(__name__)

# Where an event stands in the log's order: (xid, position).
Key = tuple[int, int]
ORIGIN: Key = (0, 0)

MAX_FILTER_IDS = 100
MAX_CURSOR_LENGTH = 256
# A cursor's key: ASCII digits, at most what a BIGINT holds (checked by length).
_NUMBER = "0|[1-9][0-9]{0,17}"
_KEY = re.compile(f"(?:(?P<xid>{_NUMBER})\\.)?(?P<position>{_NUMBER})")
PAGE = 500
# How many events the feed fetches at once, and how long it lets wake-ups gather.
FETCH = 1000
COALESCE_SECONDS = 0.002
# While committed events wait below an unfinished transaction: how soon to look again.
HELD_FIRST = 0.002
HELD_MOST = 0.1
# A read of the tail that takes longer than this is given up, with its connection.
READ_TIMEOUT = 5.0
# How long a process trusts what it last saw of the other processes' LISTEN
# connections before it announces (or not) again.
LISTENERS_RECHECK = 1.0
_OTHERS_LISTEN = ("SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                  " WHERE datname = current_database() AND application_name = %s"
                  " AND pid <> %s)")
# The feed's own connections: a peer that stops answering is noticed in about 10 s.
FEED_CONNECTION: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1,
                                   "keepalives_idle": 5, "keepalives_interval": 2,
                                   "keepalives_count": 3, "tcp_user_timeout": 10_000}
# The visibility watermark: every transaction of this database with a lower id
# has ended, and every transaction to come gets a higher one. It is the
# snapshot's xmin, except that transactions of other databases of the cluster
# (which cannot write here) are passed over: told by pg_stat_activity, which
# may lag the snapshot, so an xid it cannot place holds the watermark, safely.
WATERMARK = """(SELECT coalesce(
    (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                       WHERE a.backend_xid = mod(x::text::bigint, 4294967296)::text::xid
                         AND a.datname <> current_database())),
    pg_snapshot_xmax(s)::text::bigint)
  FROM pg_current_snapshot() s)"""
# The writing transaction's id, as the log keeps it.
XID = "pg_current_xact_id()::text::bigint"


@dataclass(frozen=True)
class EventRecord:
    """An event about to be appended: what the service layer hands the log."""

    type: str
    actor: str
    occurred_at: datetime
    payload: bytes
    lead_id: str | None = None
    subject_id: str | None = None
    # Set by the unit of work that commits it: its caller's org.
    org: str = ""


@dataclass(eq=False)
class StoredEvent:
    position: Key
    type: str
    lead_id: str | None
    subject_id: str | None
    payload: bytes
    org: str
    # The message as sent, built once however many subscribers send it.
    rendered: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Filter:
    lead_ids: frozenset[str] = frozenset()
    subject_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, event: StoredEvent) -> bool:
        """Whether the event passes the filters (its org is `follow`'s to check)."""
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
        if not (wanted or lead_ids or subject_ids):
            return EVERY_EVENT  # the common case, one object for every stream
        return cls(frozenset(lead_ids), frozenset(subject_ids), frozenset(wanted))


EVERY_EVENT = Filter()


@dataclass(frozen=True)
class Head:
    """The log as a reader finds it: its newest deliverable event, what was purged,
    and the bounds no cursor it issued can pass: the first transaction id not yet
    ended (the snapshot's xmax, which only grows) and the last position handed out.

    The head itself may fall behind a cursor already issued: the watermark is
    the snapshot's xmin narrowed to this database, and a transaction of
    another database that pg_stat_activity could not place holds it back for a
    moment (safely: it only delays delivery)."""

    log_id: str
    head: Key
    purged_through: Key
    xmax: int
    last_position: int

    def issued(self, key: Key) -> bool:
        """Whether `key` can be a cursor of this log as it stands."""
        return key <= self.head or (key[0] < self.xmax and key[1] <= self.last_position)


class EventLog:
    """Appends to and reads from one service's event log table."""

    def __init__(self, tables: SharedTables, *, channel: str, postgres: bool) -> None:
        self.events = tables.events
        self.log_row = tables.event_log
        self.channel = channel
        self.postgres = postgres
        self.log_id = ""
        events, sequence = self.events.name, f"{self.events.name}_position"
        # PostgreSQL: positions from the sequence, in the order of the records.
        self._append = sql.raw(f"""
            INSERT INTO {events}
                (xid, position, occurred_at, type, actor, lead_id, subject_id, payload, org)
            SELECT {XID}, nextval('{sequence}'), r.occurred_at, r.type, r.actor,
                   r.lead_id, r.subject_id, r.payload, r.org
            FROM unnest(
                %(occurred_at)s::timestamptz[], %(type)s::text[], %(actor)s::text[],
                %(lead_id)s::text[], %(subject_id)s::text[], %(payload)s::bytea[],
                %(org)s::text[]
            ) WITH ORDINALITY AS r(occurred_at, type, actor, lead_id, subject_id, payload, org,
                                   ord)
            ORDER BY r.ord
        """)
        # The common case, one event, without arrays to build and unpack.
        self._append_one = sql.raw(f"""
            INSERT INTO {events}
                (xid, position, occurred_at, type, actor, lead_id, subject_id, payload, org)
            SELECT {XID}, nextval('{sequence}'), %(occurred_at)s, %(type)s, %(actor)s,
                   %(lead_id)s, %(subject_id)s, %(payload)s, %(org)s
        """)
        # The feed's read of what follows its head, on its own connection: each
        # row says whether it is below the watermark (the first that is not, and
        # every later one, must wait).
        self.tail_sql = f"""
            SELECT e.xid, e.position, e.type, e.lead_id, e.subject_id, e.payload, e.org,
                   e.xid < w.watermark AS final
            FROM {events} e, (SELECT {WATERMARK} AS watermark) w
            WHERE (e.xid, e.position) > (%(xid)s, %(position)s)
            ORDER BY e.xid, e.position LIMIT %(limit)s
        """
        # The head as a reader of PostgreSQL finds it, in one snapshot.
        self._head = sql.raw(f"""
            SELECT l.log_id, l.purged_through_xid, l.purged_through,
                   pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
                   (SELECT last_value FROM {sequence}) AS last_position,
                   h.xid, h.position
            FROM {self.log_row.name} l
            CROSS JOIN (SELECT {WATERMARK} AS watermark) w
            LEFT JOIN LATERAL (
                SELECT xid, position FROM {events} WHERE xid < w.watermark
                ORDER BY xid DESC, position DESC LIMIT 1
            ) h ON true
            WHERE l.id = {LOG_ROW_ID}
        """)

    # -- writing ---------------------------------------------------------------

    async def append(self, conn: AsyncConnection, records: Sequence[EventRecord]) -> int:
        """SQLite: append `records` in this transaction; returns the new head.
        (PostgreSQL appends with the commit's round trip: `append_statement`.)"""
        if not records:
            return -1
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
                    "xid": 0,
                    "position": first + i,
                    "occurred_at": r.occurred_at,
                    "type": r.type,
                    "actor": r.actor,
                    "lead_id": r.lead_id,
                    "subject_id": r.subject_id,
                    "payload": r.payload,
                    "org": _org_of(r),
                }
                for i, r in enumerate(records)
            ],
        )
        return head

    def append_statement(
        self, records: Sequence[EventRecord]
    ) -> tuple[Executable, dict[str, Any]]:
        """PostgreSQL: one statement appending `records` (`EventFeed.announce` notifies)."""
        if len(records) == 1:
            (r,) = records
            return self._append_one, {
                "occurred_at": r.occurred_at, "type": r.type,
                "actor": r.actor, "lead_id": r.lead_id, "subject_id": r.subject_id,
                "payload": r.payload, "org": _org_of(r),
            }
        return self._append, {
            "occurred_at": [r.occurred_at for r in records],
            "type": [r.type for r in records],
            "actor": [r.actor for r in records],
            "lead_id": [r.lead_id for r in records],
            "subject_id": [r.subject_id for r in records],
            "payload": [r.payload for r in records],
            "org": [_org_of(r) for r in records],
        }

    # -- reading ---------------------------------------------------------------

    async def head(self, conn: AsyncConnection) -> Head:
        if self.postgres:
            (row,) = await sql.fetch(conn, self._head, {})
            head = ORIGIN if row.xid is None else (row.xid, row.position)
            return Head(row.log_id, head, (row.purged_through_xid, row.purged_through),
                        row.xmax, row.last_position)
        (row,) = await sql.rows(conn, select(self.log_row).where(self.log_row.c.id == LOG_ROW_ID))
        return Head(row.log_id, (0, row.head), (row.purged_through_xid, row.purged_through),
                    1, row.head)

    async def read(
        self,
        conn: AsyncConnection,
        *,
        after: Key,
        until: Key | None,
        where: Filter = Filter(),
        org: str,
        limit: int = PAGE,
    ) -> list[StoredEvent]:
        """Events with `after < key <= until` (or beyond, on SQLite) that match, in
        log order: `org`'s and the services' own, or every org's in the system
        scope. `until` a key the feed reached: below the watermark, so what lies
        between is final."""
        c = self.events.c
        key = tuple_(c.xid, c.position)
        clauses = [key > tuple_(*after)]
        if until is not None:
            clauses.append(key <= tuple_(*until))
        if org != orgs.SYSTEM_SCOPE:
            clauses.append(c.org.in_([org, orgs.SYSTEM_SCOPE]))
        if where.lead_ids:
            clauses.append(c.lead_id.in_(sorted(where.lead_ids)))
        if where.subject_ids:
            clauses.append(c.subject_id.in_(sorted(where.subject_ids)))
        if where.types:
            clauses.append(c.type.in_(sorted(where.types)))
        rows = await sql.rows(
            conn,
            select(c.xid, c.position, c.type, c.lead_id, c.subject_id, c.payload, c.org)
            .where(and_(*clauses))
            .order_by(c.xid, c.position)
            .limit(limit)
        )
        return [_stored(row) for row in rows]

    async def purge(self, conn: AsyncConnection, *, older_than: datetime) -> int:
        """Delete the events of every org that occurred before `older_than` (and
        every event before them in the log's order); returns how many. On
        PostgreSQL the write transaction is put in the system scope
        (services.shared.orgs) here."""
        if self.postgres:
            sql.scope(conn, orgs.SYSTEM_SCOPE, every_statement=False)
        c = self.events.c
        found = select(c.xid, c.position).where(c.occurred_at < older_than)
        if self.postgres:
            found = found.where(c.xid < literal_column(WATERMARK))
        found_rows = await sql.rows(
            conn, found.order_by(c.xid.desc(), c.position.desc()).limit(1))
        if not found_rows:
            return 0
        last = tuple(found_rows[0])
        deleted = (await conn.execute(
            delete(self.events).where(tuple_(c.xid, c.position) <= tuple_(*last)))).rowcount
        row = self.log_row.c
        await conn.execute(
            update(self.log_row)
            .where(row.id == LOG_ROW_ID,
                   tuple_(row.purged_through_xid, row.purged_through) < tuple_(*last))
            .values(purged_through_xid=last[0], purged_through=last[1])
        )
        return int(deleted or 0)

    # -- cursors ---------------------------------------------------------------

    def cursor(self, position: Key) -> str:
        xid, at = position
        raw = f"{self.log_id}:{at}" if xid == 0 else f"{self.log_id}:{xid}.{at}"
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    def position_of(self, cursor: str, *, field_name: str = "after_cursor") -> Key:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            log_id, _, key = raw.partition(":")
            # ASCII digits only (int() takes "٣" and " 3"), no more than a BIGINT holds.
            found = _KEY.fullmatch(key)
            if len(cursor) > MAX_CURSOR_LENGTH or found is None:
                raise ValueError(key)
            value = (int(found["xid"] or 0), int(found["position"]))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument.field(
                field_name, "not a cursor of this service", reason="INVALID_CURSOR"
            ) from None
        if log_id != self.log_id:
            raise OutOfRange(
                f"{field_name}: the cursor belongs to another event log; subscribe from the head",
                reason="CURSOR_UNKNOWN",
            )
        return value


def _stored(row: Any) -> StoredEvent:
    return StoredEvent((row.xid, row.position), row.type, row.lead_id, row.subject_id,
                       bytes(row.payload), row.org)


def _org_of(record: EventRecord) -> str:
    if not record.org:
        raise ValueError("an event is appended by a unit of work, which names its org")
    return record.org


class EventFeed:
    """The tail of one service's log, fetched once per process for every subscriber."""

    def __init__(
        self,
        db: Database,
        log: EventLog,
        *,
        ring_size: int = 4096,
        poll_interval: float = 1.0,
        streams: StreamLimits | None = None,
    ) -> None:
        self.db = db
        self.log = log
        self.head: Key = ORIGIN
        self.closed = False
        self.subscribers = 0
        # Who may subscribe, how often at once (services.shared.subscribe admits them).
        self.streams = streams or StreamLimits.subscribe()
        # The head as streams starting at once read it (start_position).
        self.heads = HeadReads(db, log)
        # The ring holds exactly the events after `_floor` up to the head.
        self._ring: deque[StoredEvent] = deque()
        self._ring_size = ring_size
        self._floor: Key = ORIGIN
        self._poll_interval = poll_interval
        self._poked = asyncio.Event()
        self._advanced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Committed events wait below an unfinished transaction: look again soon.
        self._held = False
        # Nobody followed while events were committed: the ring is behind the log.
        self._stale = False
        # PostgreSQL: the feed reads the log on a connection of its own, and
        # announces this process's commits on another.
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._notifier: psycopg.AsyncConnection[Any] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._announce_again = False
        self._announce_failing = False
        # This process's LISTEN connection (its backend), and what was last seen of
        # the others' (when, on the loop's clock; whether there was one).
        self._listener_pid = 0
        self._others_seen_at = float("-inf")
        self._others_listen = True

    async def start(self) -> None:
        async with self.db.transaction(write=False) as conn:
            if self.log.postgres:
                sql.scope(conn, orgs.SYSTEM_SCOPE, every_statement=True)
            head = await self.log.head(conn)
        self.log.log_id = head.log_id
        self.head = self._floor = head.head
        self._tasks.append(asyncio.create_task(self._pump(), name="event-feed-pump"))
        if self.log.postgres:
            self._tasks.append(asyncio.create_task(self._listen(), name="event-feed-listen"))

    def poke(self) -> None:
        """Something may have been appended: fetch it."""
        self._poked.set()

    def joined(self) -> None:
        """A subscriber follows the feed now: if the feed idled, it reads again."""
        self.subscribers += 1
        if self._stale:
            self.poke()

    def left(self) -> None:
        self.subscribers -= 1

    def announce(self) -> None:
        """This process committed events: wake its own feed now, and the other
        processes' with the next NOTIFY (one in flight at a time, for every commit
        made meanwhile)."""
        self.poke()
        if not self.log.postgres or self.closed or self._alone():
            return
        self._announce_again = True
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.create_task(self._announce(), name="event-feed-announce")

    async def _announce(self) -> None:
        while self._announce_again and not self.closed:
            self._announce_again = False
            try:
                if self._notifier is None or self._notifier.closed:
                    self._notifier = await bounded(
                        lambda: psycopg.AsyncConnection.connect(
                            self.db.libpq_conninfo(), autocommit=True, **FEED_CONNECTION),
                        READ_TIMEOUT)
                if await bounded(partial(self._others_are_listening, self._notifier),
                                 READ_TIMEOUT):
                    await bounded(partial(self._notifier.execute, "SELECT pg_notify(%s, '')",
                                          (self.log.channel,)), READ_TIMEOUT)
            except (psycopg.Error, OSError, TimeoutError) as error:
                # The other processes poll every second meanwhile.
                if not self._announce_failing:
                    log.warning("could not notify the other processes of new events",
                                extra={"error": repr(error)[:300]})
                self._announce_failing = True
                self._notifier = None
                return
            self._announce_failing = False

    @property
    def listener_name(self) -> str:
        """The application_name of the LISTEN connections of this log's feeds (at most
        63 bytes: PostgreSQL keeps no more of it)."""
        return f"closed-loop listen {self.log.channel}"[:63]

    def _alone(self) -> bool:
        """Whether no other process's feed listened when last seen, a moment ago: then
        there is nobody to notify, and no task to start for it (a write's commit
        announces; this is most of them on a process that serves alone)."""
        return (not self._others_listen and self._notifier is not None
                and not self._notifier.closed and self._looked_lately())

    def _looked_lately(self) -> bool:
        """Whether the last look at the other processes' feeds still holds."""
        return time.monotonic() - self._others_seen_at < LISTENERS_RECHECK

    async def _others_are_listening(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Whether another process's feed listens on this log's channel, as last
        seen at most LISTENERS_RECHECK seconds ago."""
        if not self._looked_lately():
            cursor = await conn.execute(_OTHERS_LISTEN, (self.listener_name,
                                                         self._listener_pid))
            row = await cursor.fetchone()
            self._others_listen = bool(row and row[0])
            self._others_seen_at = time.monotonic()
        return self._others_listen

    async def close(self) -> None:
        """End every subscription of this process, cleanly."""
        self.closed = True
        self._wake()
        if self._announcing is not None:
            self._tasks.append(self._announcing)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in (self._reader, self._notifier):
            if conn is not None:
                await conn.close()

    def since(self, position: Key) -> list[StoredEvent] | None:
        """Events after `position` from the ring, or None if it no longer reaches back."""
        if position >= self.head:
            return []
        if position < self._floor:
            return None
        first = bisect.bisect_right(self._ring, position, key=lambda e: e.position)
        return [self._ring[i] for i in range(first, len(self._ring))]

    async def wait_beyond(self, position: Key, seconds: float) -> bool:
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
        failing = False
        held_wait = HELD_FIRST
        while True:
            wait = min(held_wait, self._poll_interval) if self._held else self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poked.wait()
                # Let the commits of a busy moment fold into one read.
                await asyncio.sleep(COALESCE_SECONDS)
            self._poked.clear()
            if self.subscribers == 0:
                # Nobody follows: no read for nobody (under load that was a read
                # after every few commits). The first subscriber wakes the feed
                # again, and it starts over from the log's head (`_rebase`).
                self._stale = True
                continue
            try:
                if self._stale:
                    await self._rebase()
                await self._catch_up()
            except Exception as error:
                if not failing:  # once an outage, not once a second
                    log.warning("could not read the event log; retrying every %s s",
                                self._poll_interval, extra={"error": repr(error)[:300]})
                failing = True
                await asyncio.sleep(self._poll_interval)
                continue
            held_wait = min(held_wait * 2, HELD_MOST) if self._held else HELD_FIRST
            if failing:
                log.info("reading the event log again", extra={"head": self.head})
                failing = False

    async def _rebase(self) -> None:
        """Start again from the log's head after a time nobody followed. What was
        committed meanwhile is not paged through here only to fall out of the ring:
        a subscriber whose position lies before the new floor reads it from the
        log itself (`_next_batch`), as one fallen behind the ring does."""
        async with self.db.transaction(write=False) as conn:
            if self.log.postgres:
                sql.scope(conn, orgs.SYSTEM_SCOPE, every_statement=True)
            head = (await self.log.head(conn)).head
        if head > self.head:  # final, as the head `start` reads: below the watermark
            self._ring.clear()
            self.head = self._floor = head
            self._wake()
        self._stale = False

    async def _catch_up(self) -> None:
        while True:
            # What a read returns is final: every event below the watermark, in
            # the log's order, so the head only ever moves on along that order.
            batch, self._held, full = await self._tail()
            if batch:
                self._ring.extend(batch)
                while len(self._ring) > self._ring_size:
                    self._floor = self._ring.popleft().position
                self.head = batch[-1].position
                self._wake()
            if not full:
                return  # a short page: nothing more was visible

    async def _tail(self) -> tuple[list[StoredEvent], bool, bool]:
        """The events after the feed's head, as far as they are final; whether later
        ones wait for an unfinished transaction; whether the page was full."""
        if not self.log.postgres:
            async with self.db.transaction(write=False) as conn:
                found = await self.log.read(conn, after=self.head, until=None, limit=FETCH,
                                            org=orgs.SYSTEM_SCOPE)
            return found, False, len(found) == FETCH
        if self._reader is None or self._reader.closed:
            self._reader = await bounded(self._connect_reader, READ_TIMEOUT)
        reader = self._reader
        xid, position = self.head

        async def read() -> list[Any]:
            cursor = await reader.execute(self.log.tail_sql, {"xid": xid, "position": position,
                                                              "limit": FETCH})
            return await cursor.fetchall()

        try:
            rows = await bounded(read, READ_TIMEOUT)
        except TimeoutError:
            # Left to close itself as it unwinds; the next read starts afresh.
            self._reader = None
            raise
        except psycopg.Error:
            await reader.close()
            raise
        final = [StoredEvent((x, p), t, lead, subject, bytes(payload), org)
                 for x, p, t, lead, subject, payload, org, ok in rows if ok]
        return final, len(final) < len(rows), len(rows) == FETCH and len(final) == len(rows)

    async def _connect_reader(self) -> psycopg.AsyncConnection[Any]:
        """The feed's own connection, in the system scope for as long as it lives."""
        reader = await psycopg.AsyncConnection.connect(
            self.db.libpq_conninfo(), autocommit=True, **FEED_CONNECTION)
        try:
            await reader.execute("SELECT set_config('crm.org', %s, false)",
                                 (orgs.SYSTEM_SCOPE,))
        except BaseException:
            await reader.close()
            raise
        return reader

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.db.libpq_conninfo(), autocommit=True, **FEED_CONNECTION,
                    application_name=self.listener_name,
                )
                async with conn:
                    self._listener_pid = conn.info.backend_pid
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

    position: Key
    head: Key


class HeadReads:
    """The log's head as streams starting at once read it: one read for them all.

    A stream must start from a head read after its call arrived (every commit
    answered before then is behind it). So a read in flight is never shared
    with a caller who came later: callers arriving meanwhile wait for the next
    read, which starts once that one ends and serves every one of them. A
    thousand streams opened at once cost a few reads of the head, not a
    thousand transactions (per org: the head is read in the org's scope).
    """

    def __init__(self, db: Database, event_log: EventLog) -> None:
        self.db = db
        self.log = event_log
        # Per org: the next read's outcome, for those who arrived since the last began.
        self._next: dict[str, asyncio.Future[Head]] = {}
        self._reading: dict[str, asyncio.Task[None]] = {}

    async def head(self, org: str, time_remaining: float | None) -> Head:
        waiting = self._next.get(org)
        if waiting is None:
            waiting = self._next[org] = asyncio.get_running_loop().create_future()
            # Nobody may be left to see a failure: never "exception never retrieved".
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        if org not in self._reading:
            self._reading[org] = asyncio.create_task(self._read(org), name="event-log-head")
        if time_remaining is None:
            return await asyncio.shield(waiting)
        # As `retrying` does: UNAVAILABLE a little before the caller's deadline.
        budget = max(0.001, time_remaining - min(ANSWER_MARGIN, time_remaining * 0.1))
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(waiting)
        except TimeoutError as error:
            raise Unavailable("the database did not answer in time",
                              reason="DATABASE_UNAVAILABLE", retry_after=1.0) from error

    async def _read(self, org: str) -> None:
        try:
            while (waiting := self._next.pop(org, None)) is not None:
                try:
                    head = await retrying(partial(self._read_once, org), time_remaining=None)
                except Exception as error:
                    waiting.set_exception(error)
                except BaseException:
                    waiting.cancel()
                    raise
                else:
                    waiting.set_result(head)
        finally:
            del self._reading[org]
            left = self._next.pop(org, None)
            if left is not None:  # cancelled (the process is closing) with callers waiting
                left.cancel()

    async def _read_once(self, org: str) -> Head:
        async with self.db.transaction(write=False) as conn:
            if not self.db.is_sqlite:
                sql.scope(conn, org, every_statement=True)
            return await self.log.head(conn)


async def start_position(
    heads: HeadReads, after_cursor: str, time_remaining: float | None, *, org: str,
) -> Start:
    """Resolve a Subscribe request's `after_cursor` against the log as it stands
    (read in `org`'s scope: the newest event it sees is its head)."""
    after = heads.log.position_of(after_cursor) if after_cursor else None
    head = await heads.head(org, time_remaining)
    if after is None:
        return Start(head.head, head.head)
    if not head.issued(after):
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
    return Start(after, max(after, head.head))


@dataclass(frozen=True)
class Tick:
    """A bookmark to send: the subscriber stands at `position`, the log at `head`."""

    position: Key
    head: Key


async def follow(
    feed: EventFeed,
    start: Start,
    where: Filter,
    *,
    org: str,
    heartbeat: float,
) -> AsyncIterator[StoredEvent | Tick]:
    """The events of `org` (and the services' own) after `start` that match
    `where`, then live ones, with bookmarks.

    Yields a Tick first (the subscription is live: from here on nothing is
    missed), then events in log order, and a Tick whenever `heartbeat` seconds
    pass without anything sent, even while events that do not match go by.
    Ends when the feed closes.
    """
    clock = asyncio.get_running_loop().time
    position = start.position
    yield Tick(position, start.head)
    last_sent = clock()
    feed.joined()
    try:
        while not feed.closed:
            if position >= feed.head:
                quiet = heartbeat - (clock() - last_sent)
                if quiet > 0 and await feed.wait_beyond(position, quiet):
                    continue
            else:
                matching, position = await _next_batch(feed, position, where, org)
                for event in matching:
                    yield event
                if matching:
                    last_sent = clock()
            if not feed.closed and clock() - last_sent >= heartbeat:
                yield Tick(position, max(position, feed.head))
                last_sent = clock()
    finally:
        feed.left()


async def _next_batch(
    feed: EventFeed, position: Key, where: Filter, org: str
) -> tuple[list[StoredEvent], Key]:
    """The matching events of `org` after `position`, and the position they bring it to."""
    batch = feed.since(position)
    if batch is not None:
        return [e for e in batch if _visible(e, org) and where.matches(e)], batch[-1].position
    until = feed.head

    async def read() -> list[StoredEvent]:
        async with feed.db.transaction(write=False) as conn:
            if feed.log.postgres:
                sql.scope(conn, org, every_statement=True)
            return await feed.log.read(conn, after=position, until=until, where=where, org=org)

    # Fallen behind the ring: page through the log itself (final up to the feed's head).
    matching = await retrying(read, time_remaining=None, what="the event log")
    return matching, matching[-1].position if len(matching) == PAGE else until


def _visible(event: StoredEvent, org: str) -> bool:
    """Whether a stream of `org` may see the event: its org's, or the services' own."""
    return event.org in (org, orgs.SYSTEM_SCOPE)


def purge_cutoff(retention_seconds: int) -> datetime:
    return utcnow() - timedelta(seconds=retention_seconds)
