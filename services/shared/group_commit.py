"""Group commit (PostgreSQL): concurrent write calls of one process share one
transaction, and so one COMMIT (one WAL flush) and one connection.

How a call is placed. Every write unit of work asks the process's committer for
a seat (one committer per Database). While fewer than `lanes` write transactions
are in flight (see "What it costs"), a call gets a transaction of its own at
once, exactly as without grouping: a lone call never waits for company. Once
every lane is busy, arriving calls queue; when a lane frees, everything queued
(up to `most` calls) goes out as one group: one connection, one transaction, one
COMMIT. Calls that arrive while a group runs wait for the next one.

What a member runs. Each member runs its WHOLE unit of work inside the group's
transaction, as a savepoint, one member after another on the group's connection:
`SAVEPOINT s_i` rides with its first statement (with its org's scope,
services.shared.sql), then its reads (the key's lock and row, SELECT … FOR
UPDATE), then its writes, event append and stored outcome with `RELEASE
SAVEPOINT s_i` as its commit. Only then does the next member start. A member
whose statements fail (a guard: CONCURRENT_CHANGE; a unique or exclusion
violation; a deadlock or lock timeout) or that refuses, or that answers a replay
without writing, is undone by `ROLLBACK TO SAVEPOINT s_i` (sent ahead of what
follows on the connection, so it costs no round trip of its own) and gets its
own answer; the others are not touched. The group ends with one COMMIT. If that
fails (the connection is lost, the backend is terminated) or the group breaks
mid-way (a member was cancelled while it may have had a statement in flight, or
a round trip was lost), every member, whatever it answered, gets a transient
error and runs again under its own key: nothing is half-applied, because
nothing was committed.

Held back. Most write calls read nothing before their commit (CreateLead; a
status change or a confirm from a kept row; a text: services.shared.uow), so a
member's whole unit of work is one string, from its SAVEPOINT to its RELEASE. A
member that has sent nothing when it commits does not send it: it is held back
(`sql.detach`, `sql.hold`) and the next member starts at once. What is held goes
out with the group's next round trip, ahead of everything else: the next
member's first read (`_flush`, in a round trip of its own just before it, so the
read sees those writes as it would have alone), or the group's COMMIT. So a group
of n such members costs one round trip, not n + 1. The members held go out
inside a savepoint of the flush (`SAVEPOINT f` … `RELEASE SAVEPOINT f`). If a
statement of one fails, the flush's string stops there, so it is undone (`ROLLBACK
TO SAVEPOINT f`) and the members go out again one by one, each in its own round
trip, and one that fails is undone alone (`ROLLBACK TO SAVEPOINT s_i`) and gets
its failure as its own answer, exactly as if it had sent its commit itself: what
a member held sees and does is what it would have seen and done had it sent it at
its turn (the statements are the same, their values bound; its locks are taken
as they run, before anything of the members after it). A member held back is
answered only once the group has committed, as any member.

Why this keeps each call isolated. The locks a member takes (its key's
advisory lock, its rows' FOR UPDATE locks, its writes' row locks) are the
group transaction's, held until the group's COMMIT: longer than alone, never
shorter, so against every other transaction a member is at least as isolated
as it would be alone (READ COMMITTED: each statement sees what was committed
when it ran, as alone). Inside the group, a later member sees what earlier
members wrote and released, uncommitted. That is the state it would have seen
had it run alone right after them: a row an earlier member changed is locked by
it, so alone the later call would have waited for that commit and then read
exactly this. The group is therefore the serial execution of its members in
turn order, and it commits all of it or none of it: no member's answer leaves
the process before the COMMIT has succeeded (a member waits for it even when it
refused or replayed, since its answer may rest on what earlier members wrote),
and if the COMMIT fails every member runs again. A member's savepoint that is
rolled back is undone before the next member starts, so nobody ever sees it.
One exception is made explicit: two members with the same idempotency key.
Alone, the second would find the key's lock held by a call not yet committed
and be refused (IDEMPOTENCY_KEY_IN_USE), or wait for it (`take(wait=True)`);
in one transaction the lock is re-entrant, so the committer tracks the keys
its members took and answers the same: KeyInUse, or run again (after the
group has committed). So a member never reads, nor remembers in this process,
another member's uncommitted outcome.

The event log. Every member's events are appended by the group transaction,
so they carry its one xid (pg_current_xact_id() is the top-level id inside a
savepoint) and positions from the sequence in append order: the log's order
(xid, position) puts each call's events in its own order and the members in
turn order. The watermark is about transactions and does not change: a group
is one transaction, a bit longer than each of its members alone (so it holds
the delivery of later events back a little longer). A rolled-back savepoint
leaves a gap in the positions, as an aborted transaction does. Each member
announces its events after the COMMIT, and the announcements coalesce into one
NOTIFY as before.

What it costs. Members run one after another on one connection, so a member waits
for the members before it: a group of n holds n times the members' own Python work,
and each member that reads first its read round trips (and a round trip for those
held back before it), before its COMMIT. In exchange the database runs one
transaction and one WAL flush instead of n, the process sends one round trip for the
members that read nothing instead of one each, and writes use `lanes` connections
instead of one per concurrent call. Lanes: two, narrowed to one while the last
group's members were all held back. Such a group costs one round trip however large,
so the calls queued behind a transaction in flight are best left to gather for the
next group (at CreateLead c=32: 0.19 round trips a call with one lane, 0.67 with
two); members that read take round trips of their own, one after another, and a
second lane lets another group work while they wait (ConfirmAppointment of rows the
process does not keep lost a third of its calls a second on one lane). README,
"Writes that scale", has the figures. Every group is capped at `most` members, and
holds members back only while its flushes' savepoints and its members' together stay
within 64 (PostgreSQL keeps 64 subtransactions per backend in shared memory; more
would slow every snapshot); past that, a member sends its commit itself. Two groups
(or a group and another transaction) can deadlock where their members alone would
have waited in turn: PostgreSQL detects it, aborts the waiting member's savepoint,
and that member runs again. A unit of work must not open another write unit of work
while it holds its seat (none does: SQLite's single writer would deadlock the same
way).

CRM_GROUP_COMMIT sets `most` (32 by default); 0 or 1 turns grouping off (every call
commits alone, as on SQLite, which keeps its single writer and never groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import metrics, sql
from services.shared.db import Database, RunAgain

# How many write transactions may be in flight before calls queue to be grouped
# (one while the last group's members were all held back: see "What it costs").
LANES = 2
# The most calls one group carries.
MOST = 32
# The subtransactions PostgreSQL keeps per backend in shared memory: a group's
# savepoints (its members', its flushes') stay within them.
SUBTRANSACTIONS = 64

INERROR = TransactionStatus.INERROR
INTRANS = TransactionStatus.INTRANS
IDLE = TransactionStatus.IDLE
_RELEASE = "RELEASE SAVEPOINT {}"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT {}"
# The savepoint a flush of held-back members runs in (see "Held back").
_FLUSH = "f"


class GroupFailed(RunAgain):
    """The group this call ran in did not commit: nothing of it was applied."""


@dataclass(eq=False)
class _Member:
    turn: asyncio.Future[_Group]


@dataclass(eq=False)
class _Held:
    """A member's whole unit of work, from its SAVEPOINT to its RELEASE, held back to go
    out with the group's next round trip."""

    statements: list[tuple[str, sql.Params]]
    savepoint: str
    # None once it has run; its own failure if it did not (it was undone alone).
    ran: asyncio.Future[BaseException | None]

    def resolve(self, failure: BaseException | None) -> None:
        if not self.ran.done():  # a member cancelled meanwhile no longer waits for it
            self.ran.set_result(failure)


@dataclass(eq=False)
class _Group:
    conn: AsyncConnection
    done: asyncio.Future[None]
    # Members held back, to go out with the next round trip (`_flush`).
    held: list[_Held] = field(default_factory=list)
    # Set by the member whose turn it is when it gives the connection back.
    handed: asyncio.Event = field(default_factory=asyncio.Event)
    # To send before whatever follows on the connection (a failed member's rollback).
    after: list[tuple[sql.Statement, sql.Params]] = field(default_factory=list)
    # The idempotency keys' locks its members took.
    keys: set[int] = field(default_factory=set)
    seated: int = 0
    # Its members that sent statements themselves (read first), not held back.
    sent_own: int = 0
    broken: bool = False
    # How many more flushes its subtransactions leave room for (see "What it costs").
    flushes_left: int = 0
    names: itertools.count[int] = field(default_factory=itertools.count)
    service: str = ""

    def room_to_hold(self) -> bool:
        """Whether a member may be held back: with those held already, or by a flush
        of its own the group's subtransactions leave room for."""
        if self.held:
            return True
        if self.flushes_left > 0:
            self.flushes_left -= 1
            return True
        return False


class Seat:
    """A unit of work's place: a transaction of its own (`group` None), or a turn in a
    group's transaction, inside savepoint `savepoint`."""

    def __init__(self, conn: AsyncConnection, group: _Group | None = None,
                 savepoint: str = "", *, clean: bool = True) -> None:
        self.conn = conn
        self.group = group
        self.savepoint = savepoint
        # Whether nothing goes out ahead of its savepoint (an earlier member's undoing).
        self.clean = clean
        self.released = False
        self.handed_over = False
        self.held = False  # its statements went out with the group's, held back
        self._keys: set[int] = set()

    def take_key(self, lock: int) -> bool:
        """Note that this call takes the key's lock; False if an earlier member of its
        group holds it (uncommitted: alone, this call would find it held)."""
        if self.group is None or lock in self._keys:
            return True
        if lock in self.group.keys:
            return False
        self.group.keys.add(lock)
        self._keys.add(lock)
        return True

    def holds_other(self, lock: int) -> bool:
        """Whether an earlier member of its group holds the key's lock."""
        return self.group is not None and lock in self.group.keys and lock not in self._keys

    async def commit(self, statements: list[tuple[sql.Statement | sql.Guarded, sql.Params]]
                     ) -> None:
        """Send the writes and commit: alone, with COMMIT; in a group, with the
        savepoint's RELEASE, then wait for the group's COMMIT."""
        if self.group is None:
            await sql.batch(self.conn, statements, commit=True)
            return
        release = sql.raw(_RELEASE.format(self.savepoint))
        if self.clean and not sql.scope_sent(self.conn) and self.group.room_to_hold():
            await self._held_back([*statements, (release, {})])
            return
        await sql.batch(self.conn, [*statements, (release, {})])
        self.released = True
        self.hand_over()
        await self.outcome()

    async def _held_back(self, statements: list[tuple[sql.Statement | sql.Guarded,
                                                      sql.Params]]) -> None:
        """Commit a member that has sent nothing yet: its whole unit of work goes out
        with the group's next round trip (see "Held back")."""
        group = self.group
        assert group is not None
        held = _Held(sql.detach(self.conn, statements), self.savepoint,
                     asyncio.get_running_loop().create_future())
        group.held.append(held)
        sql.hold(self.conn, functools.partial(_flush, group))
        self.released = True  # or undone by the flush, which sends its rollback itself
        self.held = True
        self.hand_over()
        failure = await held.ran
        if failure is not None:
            group.keys -= self._keys  # undone: its locks went with its savepoint
            raise failure
        await self.outcome()

    def hand_over(self) -> None:
        """Give the group's connection to the next member (undoing this one's
        savepoint first, unless it was released)."""
        group = self.group
        if group is None or self.handed_over:
            return
        self.handed_over = True
        if sql.scope_sent(self.conn) and not self.held:
            group.sent_own += 1
        if sql.scope_sent(self.conn):
            group.after = []  # it went out ahead of this member's first statement
            if not self.released:
                group.after = [(sql.raw(_ROLLBACK_TO.format(self.savepoint)), {})]
        if not self.released:
            group.keys -= self._keys
        group.handed.set()

    async def outcome(self) -> None:
        """Wait for the group's COMMIT; GroupFailed if it did not commit."""
        if self.group is not None:
            await asyncio.shield(self.group.done)


class GroupCommit:
    """The write transactions of one Database in this process (see the module)."""

    def __init__(self, db: Database, *, most: int = MOST, lanes: int = LANES) -> None:
        self.db = db
        self.most = most
        self.lanes = lanes
        # One lane only while the last group's members were all held back (see "What
        # it costs").
        self._narrowed = False
        self._open = 0
        self._queue: deque[_Member] = deque()
        self._service = ""

    @contextlib.asynccontextmanager
    async def seat(self, org: str, service: str) -> AsyncIterator[Seat]:
        """A place to run one write unit of work in `org`'s scope; leaving it
        without a commit rolls the unit of work back."""
        self._service = self._service or service
        if self._open < (1 if self._narrowed else self.lanes) and not self._queue:
            self._open += 1
            try:
                async with self.db.transaction(write=True) as conn:
                    sql.scope(conn, org, every_statement=False)
                    yield Seat(conn)
            finally:
                metrics.GROUP_COMMIT_CALLS.labels(service).observe(1)
                self._open -= 1
                self._dispatch()
            return
        member = _Member(asyncio.get_running_loop().create_future())
        self._queue.append(member)
        try:
            group = await member.turn
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._queue.remove(member)
            turn = member.turn
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                turn.result().handed.set()  # its turn came as it was cancelled
            raise
        group.seated += 1
        savepoint = f"s{next(group.names)}"
        sql.scope(group.conn, org, every_statement=False,
                  preamble=[*group.after, (sql.raw(f"SAVEPOINT {savepoint}"), {})])
        seat = Seat(group.conn, group, savepoint, clean=not group.after)
        try:
            yield seat
        except asyncio.CancelledError:
            if not seat.handed_over:
                group.broken = True  # a statement of its may be in flight on the connection
            seat.hand_over()
            raise
        except BaseException:
            seat.hand_over()
            await seat.outcome()  # its refusal may rest on what earlier members wrote
            raise
        seat.hand_over()
        await seat.outcome()

    def _dispatch(self) -> None:
        """Send what queued out as groups, while lanes are free."""
        while self._open < (1 if self._narrowed else self.lanes) and self._queue:
            members: list[_Member] = []
            while self._queue and len(members) < self.most:
                member = self._queue.popleft()
                if not member.turn.done():
                    members.append(member)
            if members:
                self._open += 1
                asyncio.get_running_loop().create_task(self._run(members),
                                                       name="group-commit")

    @contextlib.contextmanager
    def _retired_if_broken(self, conn: AsyncConnection) -> Iterator[None]:
        """A group that breaks off (a failure, a cancellation) may leave a member
        with a statement in flight on its connection: not one to keep for the next
        transaction."""
        try:
            yield
        except BaseException:
            self.db.retire(conn)
            raise

    async def _run(self, members: list[_Member]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieved)
        group: _Group | None = None
        try:
            async with self.db.transaction(write=True) as conn:
                group = _Group(conn, done, flushes_left=SUBTRANSACTIONS - self.most,
                               service=self._service)
                try:
                    with self._retired_if_broken(conn):
                        await _turns(group, members)
                        await _commit(group)
                finally:
                    sql.release_held(conn)  # never for the connection's next transaction
            done.set_result(None)
        except BaseException as error:
            _fail(done, members, error, group)
            if not isinstance(error, Exception):
                raise
        finally:
            if group is not None and group.seated:
                metrics.GROUP_COMMIT_CALLS.labels(self._service).observe(group.seated)
                self._narrowed = group.sent_own == 0
            self._open -= 1
            self._dispatch()


async def _turns(group: _Group, members: list[_Member]) -> None:
    """Give each member its turn on the group's connection, one after another."""
    for member in members:
        if member.turn.done():
            continue  # cancelled while it waited
        if group.broken:
            member.turn.set_exception(GroupFailed("the group broke off"))
            continue
        group.handed.clear()
        member.turn.set_result(group)
        await group.handed.wait()
        if sql.driver(group.conn).broken:
            group.broken = True  # the connection is gone: so is the group


async def _commit(group: _Group) -> None:
    """COMMIT the group, with the members still held back, in one round trip."""
    if group.broken:
        raise GroupFailed("the group broke off (a member cancelled mid-statement, "
                          "or a round trip lost)")
    if not group.after and sql.driver(group.conn).info.transaction_status == INERROR:
        # COMMIT would roll back without a word: the members must not be told their
        # work committed.
        raise GroupFailed("the group's transaction failed")
    sql.release_held(group.conn)  # sent here, with the COMMIT
    if group.held:
        await _flush(group, commit=True)
    else:
        # Not the scope named last: its member sent nothing and is gone (it failed,
        # refused or replayed), and its riders (a key's claim) are not the group's.
        await sql.send(group.conn, [(sql.postgres_sql(statement, params), params)
                                    for statement, params in group.after], commit=True)


async def _flush(group: _Group, *, commit: bool = False) -> None:
    """Send the members held back in one round trip (and COMMIT, if asked), inside a
    savepoint of the flush's own. If one of them fails, the flush is undone and they
    go out again one by one, each undone alone if it fails: its failure is its own."""
    held, group.held = group.held, []
    conn = group.conn
    ahead = [(sql.postgres_sql(statement, params), params) for statement, params in group.after]
    group.after = []
    try:
        try:
            await sql.send(conn, [
                *ahead, (f"SAVEPOINT {_FLUSH}", {}),
                *(statement for member in held for statement in member.statements),
                (_RELEASE.format(_FLUSH), {})], commit=commit)
            metrics.GROUP_COMMIT_FLUSHES.labels(group.service, "together").inc()
        except Exception:
            if (undo := _undoing(conn, _FLUSH)) is None:
                raise  # the transaction is lost, or has ended: so has the group
            metrics.GROUP_COMMIT_FLUSHES.labels(group.service, "one_by_one").inc()
            await sql.send(conn, undo or [*ahead, (f"SAVEPOINT {_FLUSH}", {})])
            for member in held:
                await _one_by_one(conn, member)
            await sql.send(conn, [(_RELEASE.format(_FLUSH), {})], commit=commit)
    except BaseException:
        group.broken = True  # what ran is unknown: the group does not commit
        raise
    finally:
        for member in held:
            member.resolve(None)  # ran; or the group's outcome decides (it fails)


async def _one_by_one(conn: AsyncConnection, member: _Held) -> None:
    """Send one member held back in a round trip of its own; undo it alone if it fails."""
    try:
        await sql.send(conn, member.statements)
    except Exception as failure:
        if (undo := _undoing(conn, member.savepoint)) is None:
            raise
        if undo:
            await sql.send(conn, undo)
        member.resolve(failure)


def _undoing(conn: AsyncConnection, savepoint: str) -> list[tuple[str, sql.Params]] | None:
    """What undoes a round trip that failed on `conn`, back to `savepoint`: its
    ROLLBACK TO if a statement failed, nothing if the string was never sent; None if
    the transaction is lost or has ended."""
    state = sql.driver(conn).info.transaction_status
    if state == INERROR:
        return [(_ROLLBACK_TO.format(savepoint), {})]
    if state == INTRANS or (state == IDLE and not sql.begun(conn)):
        return []
    return None


def _fail(done: asyncio.Future[None], members: list[_Member], error: BaseException,
          group: _Group | None) -> None:
    """The group did not commit: every member, seated or still waiting, runs again."""
    failed = (error if isinstance(error, RunAgain)
              else GroupFailed(f"the group did not commit: {error!r}"[:300]))
    if failed is not error:
        failed.__cause__ = error
    if not done.done():
        done.set_exception(failed)
    for member in members:
        if not member.turn.done():
            member.turn.set_exception(failed)
            member.turn.add_done_callback(_retrieved)
    for held in group.held if group is not None else ():
        held.resolve(None)  # never sent: the group's failure is its answer


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a group's failure seen, whether or not a member was left to wait for it."""
    if not future.cancelled():
        future.exception()


def committer(db: Database) -> GroupCommit | None:
    """The committer of `db`'s write transactions in this process; None where calls
    commit alone (SQLite, or grouping turned off)."""
    if db.is_sqlite or db.group_commit <= 1:
        return None
    found: GroupCommit | None = getattr(db, "_committer", None)
    if found is None:
        found = GroupCommit(db, most=db.group_commit)
        db._committer = found  # type: ignore[attr-defined]
    return found
