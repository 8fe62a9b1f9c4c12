"""The unit of work: one transaction in which a change, its events and its
idempotency record commit together, or not at all.

A use case reads as its transaction does:

    async def update_status(cmd: UpdateStatus, uow: LeadsUnitOfWork) -> Lead | Stored:
        async with uow.for_caller(cmd.caller):            # the caller's transaction
            if (stored := await uow.keys.claim(cmd.key)) is not None:
                return stored                             # a replay: nothing runs twice
            lead = await uow.leads.get(cmd.lead_id, for_update=True)
            change = lead.move_to(cmd.status, actor=cmd.caller.principal, …)
            await uow.leads.save(lead, change)
            await uow.commit(outcome=lead)                # effect + events + stored outcome
            return lead

One unit of work is one transaction: a use case that needs several (SendSms)
takes `Units`, which makes one for each. Leaving the `async with` without
`commit()` rolls everything back. The connection is taken on first use, so a
replay this process remembers touches no database (and, on SQLite, waits for
no writer).

On PostgreSQL a key's claim costs no round trip of its own: the first attempt
of a call (`Units.attempt`) expects its key new and sends the claim (the key's
lock, then a check that the key holds nothing) ahead of the unit of work's next
statements, in their round trip (`KeyStep.claim`). Were the key not free, the
check fails, which aborts what rode with it, and the call runs again at once,
claiming before anything else as on SQLite: a replay the process does not
remember, a key in use or reused, costs two round trips more.

Writes go through `write()`. On PostgreSQL they go out with the commit, in one
round trip with the event log's append, the stored outcome and COMMIT, so read
what you need before you write; on SQLite they run at once. Either way a
guarded write (`expect_rows=1`, as an UPDATE naming the version it read) that
changes another number of rows is CONCURRENT_CHANGE and nothing commits.

Every unit of work acts in its caller's organization (`uow.org`): the
repositories name it in every statement, and on PostgreSQL the transaction is
scoped to it as well (`sql.scope`: row-level security, see services.shared.rls),
so a statement that forgot it still sees that org only. Work of the service
itself across every org (the recovery sweep) enters `for_system()` instead.

A final refusal is stored under the key too, in a transaction of its own, by
`Units.run` (the entrypoint's runner): the refused use case's own transaction
is rolled back.

Kept rows (PostgreSQL). A write that reads its row first (UpdateLeadStatus,
ConfirmAppointment) spends a round trip on the read before its commit's. So a
process keeps the rows it has seen committed (`keep`: what its reads returned,
what its commits wrote; `Storage.rows`, CRM_KEPT_ROWS of them across its orgs,
each under its org, the least recently used dropped first), and the first
attempt of a call may write from its kept copy instead (`kept_row`; a batch from
the copies of all its rows, or from none: `kept_rows`): the use
case decides on it exactly as
on a row it read, and its writes go out with the commit, in one round trip with
the key's claim. It is sound because every change of such a row raises its
version (an operator's hand-made change must too: see the README's "Running in
production") and every write of one is guarded by the version it started from: a
kept copy that is no longer the row's (another replica, or an operator, changed
it) changes no row, nothing commits, and the call runs again at once, reading
(`Misread`). Whatever else the first attempt ends in, a refusal included, it is
not answered either: a refusal may rest on the stale copy, so the call runs
again reading, and answers what that finds (a transient failure, as a dropped
connection, is retried as any is, after a pause, and reading too). A batch starts
from copies only if every row it names is kept (`kept_rows`), and checks and
locks each with its commit, in id order (`check`): a row it leaves as it is
must be as its copy says too. What it costs: a copy that is not
current costs that call a round trip more than reading would have (a
`crm_kept_rows_total{outcome="misread"}`), so a lead moved through one replica
after another gains nothing; and a ConfirmAppointment written from a kept copy
leaves the check of the agent's other confirmed appointments to the exclusion
constraint that referees racing confirms anyway (a conflict runs the call again,
reading, and that answers SLOT_TAKEN as before). Where copies are often stale
(replicas that take turns with each lead) that would make writes slower, not
faster, so a process judges how often its copies were stale lately: the writes
that started from one, and the writes that read a row it kept a copy of (was the
copy what they read?). While more than MOST_STALE of them were, writes read
first (`KeptRows.worth_it`); the reads keep judging, and writing from copies
resumes once they are current again. A connection the server dropped forgets
every kept row (`Database.on_lost`): a failover to a standby may have lost commits
already acknowledged, so a row's version may mean another row there. SQLite, one
writer whose reads are function calls, keeps none.

An attempt may also assume what it would have read (`assume`), where one answer is
all but certain: a text assumes its number has not opted out. The commit's round
trip checks the assumption (a read that must find no row, failing the transaction
if it does), an attempt whose assumption failed runs again, reading, as one from a
stale copy does, and both count in the same judgement (the writes that read what
they could have assumed say whether it would have held: `judge_assumption`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

from google.protobuf.message import Message
from psycopg.errors import InvalidTextRepresentation
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import errors, group_commit, metrics, orgs, sql
from services.shared.auth import Caller
from services.shared.db import Database, RunAgain, is_transient, retrying
from services.shared.events import EventFeed, EventLog, EventRecord
from services.shared.idempotency import (
    IdempotencyStore,
    Key,
    KeyInUse,
    KeyReused,
    Outcome,
    Pending,
    Stored,
    claim_failed,
    lock_of,
)
from services.shared.kept import Kept

T = TypeVar("T")
U = TypeVar("U", bound="UnitOfWork")

# A service's mapping of its domain events to event log records.
EventMapper = Callable[[Any], EventRecord]
# How the outcome a use case commits is answered (and so stored): a response message.
Respond = Callable[[Any], Message]


# Writes start from kept rows while at most this share of the recent copies they
# could have started from was stale (see "Kept rows"); each write weighs 1/32.
MOST_STALE = 0.25
_WEIGHT = 1 / 32


class KeptRows(Kept[tuple[str, str, str], Any]):
    """The rows a process keeps for writes to start from, by (org, kind, id), and how
    often lately a copy was stale."""

    def __init__(self, most: int) -> None:
        super().__init__(most)
        self.stale_share = 0.0

    def judge(self, *, stale: bool) -> None:
        self.stale_share += (float(stale) - self.stale_share) * _WEIGHT

    @property
    def worth_it(self) -> bool:
        """Whether the next write should start from a kept copy, if there is one."""
        return self.most > 0 and self.stale_share <= MOST_STALE


@dataclass(frozen=True)
class Storage:
    """What every unit of work of one service writes through; assembled once at start."""

    # Names the service in metrics and as the domain of the refusals it stores.
    service: str
    db: Database
    log: EventLog
    feed: EventFeed
    keys: IdempotencyStore
    # PostgreSQL: the rows committed that writes may start from (see "Kept rows"),
    # by (org, kind, id); none kept on SQLite.
    rows: KeptRows = dataclasses.field(default_factory=lambda: KeptRows(0))

    @property
    def postgres(self) -> bool:
        return not self.db.is_sqlite


class ConcurrentChange(errors.Aborted):
    """A guarded write found its row changed, though the row was read under lock:
    never expected, and nothing was committed."""

    reason = "CONCURRENT_CHANGE"


class ClaimAtOnce(RunAgain):
    """A claim sent ahead found its key not free: the call runs again at once."""

    at_once = True


class Misread(RunAgain):
    """An attempt that started from a kept row did not succeed: the row may have
    changed, so the call runs again at once, reading it (see "Kept rows")."""

    at_once = True


class KeyStep:
    """The idempotency key, as a step of one unit of work (`uow.keys`)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._store = uow.storage.keys
        # The key this unit of work holds, and the outcome to store with its commit.
        self.claimed: Key | None = None
        # PostgreSQL: claim a key by sending its claim ahead of the next statements,
        # expecting it new (see `claim`); set by `Units.attempt` for a first attempt.
        self.ahead = False
        self._outcome: Outcome | Pending | None = None

    async def claim(self, key: Key) -> Stored | None:
        """Take the key for this unit of work; a Stored outcome if it already has one.

        A replay this process remembers is answered without the database. A key
        whose call is still under way (another's, or pending) is KeyInUse; one
        used with another request is KeyReused.
        """
        found = await self.claim_or_pending(key)
        if isinstance(found, Pending):
            raise KeyInUse()
        return found

    def remembered(self, key: Key) -> Stored | None:
        """The outcome this process remembers for the key, if any: no database."""
        found = self._store.recall(self._uow.caller, key)
        return None if found is None else Stored(found)

    async def claim_or_pending(self, key: Key) -> Stored | Pending | None:
        """`claim`, but a key pending for a call that ended (or is under way, its
        transaction committed) is returned rather than refused: for a use case that
        may take such a call over."""
        if (remembered := self.remembered(key)) is not None:
            return remembered
        caller = self._uow.caller
        conn = await self._uow.connection()
        if not self._uow._take_key(key):
            raise KeyInUse()  # an earlier call of its group holds it, uncommitted
        if self.ahead and self._uow.postgres:
            # A new key, most likely: its claim rides with the next statements, a
            # round trip saved. Were it not free, they fail, and the call runs
            # again claiming at once (`Units.attempt`).
            sql.ahead(conn, self._store.claim_ahead(caller, key))
            self.claimed = key
            return None
        found = await self._store.claim(conn, caller, key)
        if isinstance(found, Pending):
            return found
        if found is not None:
            return Stored(found)
        self.claimed = key
        return None

    async def take(self, key: Key, *, wait: bool) -> Outcome | Pending | None:
        """Take the key to go on with what a call started under it, and say what it
        holds: a pending key may be this very call's, a stored outcome is returned.

        `wait`: wait while another call holds the key for a moment (to finish what
        this call started); else KeyInUse at once (to take over an ended call's).
        """
        conn = await self._uow.connection()
        if not self._uow._take_key(key):
            # An earlier call of its group holds it, uncommitted: alone, this one
            # would wait for that commit, so it runs again after it.
            if wait:
                raise RunAgain("the key is held by a call committing with this one")
            raise KeyInUse()
        found = await self._store.claim(conn, self._uow.caller, key, wait=wait)
        self.claimed = key
        return found

    async def hold(self, key: Key) -> None:
        """Take the key to finish what this call started under it, waiting while
        another call holds it for a moment, without reading what it holds (`take`
        does). On PostgreSQL its lock rides with the unit of work's next statements."""
        conn = await self._uow.connection()
        if not self._uow._take_key(key):
            raise RunAgain("the key is held by a call committing with this one")
        if self._uow.postgres:
            sql.ahead(conn, [self._store.waiting_lock(self._uow.caller, key)])
        self.claimed = key

    async def abandoned(self, *, lease_ended_before: datetime, limit: int = 100
                        ) -> list[tuple[Caller, Key, str]]:
        """Every caller's pending keys whose lease ended before then: (caller, key,
        what the call was creating), for recovery."""
        return await self._store.pending(await self._uow.connection(),
                                         lease_ended_before=lease_ended_before, limit=limit)

    async def stored(self, key: Key) -> Stored | None:
        """The outcome the key holds, read without taking it: for a use case that must
        know before it calls another service. KeyInUse while its call is under way."""
        if (remembered := self.remembered(key)) is not None:
            return remembered
        found = await self.peek(key)
        if isinstance(found, Pending):
            raise KeyInUse()
        return None if found is None else Stored(found)

    async def peek(self, key: Key) -> Outcome | Pending | None:
        """What the key holds, read in this unit of work without taking it."""
        conn = await self._uow.connection()
        if self._uow._seat is not None and self._uow._seat.holds_other(lock_of(
                self._uow.caller, key)):
            raise KeyInUse()  # an earlier call of its group holds it, uncommitted
        return await self._store.peek(conn, self._uow.caller, key)

    def pend(self, pending: Pending) -> None:
        """Mark the claimed key pending with this commit: its call's effect is under way."""
        self._outcome = pending

    def refuse(self, refusal: errors.DomainError) -> Stored:
        """Store this final refusal under the claimed key with this commit (along with
        what the refused call leaves behind, as a failed message); how to answer it."""
        outcome = Outcome.refusal(refusal, self._uow.storage.service)
        if outcome is None:
            raise refusal
        self._outcome = outcome
        return Stored(outcome, replayed=False)

    def forget(self) -> None:
        """Drop the claimed key with this commit: its call was abandoned, with no effect."""
        assert self.claimed is not None
        self._outcome = None
        self._uow.writes.append(self._store.forget(self._uow.caller, self.claimed))
        self.claimed = None

    def _record(self, outcome: object) -> Outcome | None:
        """The key's write for this commit, if it holds one; the outcome it stores."""
        if self.claimed is None:
            return None
        stored = self._outcome
        if stored is None:
            stored = Outcome.success(self._uow.respond(outcome))
        self._uow.writes.append(self._store.record(self._uow.caller, self.claimed, stored))
        return stored if isinstance(stored, Outcome) else None


class UnitOfWork:
    """One transaction of one caller. Services subclass it with their repositories
    and say which domain events their aggregates recorded (`recorded_events`)."""

    def __init__(self, storage: Storage, *, events: EventMapper,
                 respond: Respond | None = None) -> None:
        self.storage = storage
        self.postgres = storage.postgres
        self.keys = KeyStep(self)
        # PostgreSQL: the writes that go out with the commit.
        self.writes: list[tuple[sql.Statement | sql.Guarded, sql.Params]] = []
        self._events = events
        self._respond = respond
        self._recorded: list[object] = []
        self._caller: Caller | None = None
        self._write = True
        self._stack: contextlib.AsyncExitStack | None = None
        self._conn: AsyncConnection | None = None
        # PostgreSQL writes: its place with the process's committer (group commit).
        self._seat: group_commit.Seat | None = None
        self._used = False
        self._committed = False  # through a seat: its connection is no longer its own
        # Whether this attempt may start from kept rows (set by `Units.attempt`), the
        # keys of those it did, and whether it took a read as given (`assume`).
        self.speculate = False
        self._served: list[tuple[str, str, str]] = []
        self._assumed = False
        # Whether what this attempt reads judges its assumptions (not after an
        # attempt that misread: that one was judged already).
        self.judging = True

    # -- the transaction --------------------------------------------------------------

    def for_caller(self, caller: Caller, *, read_only: bool = False) -> Self:
        """This unit of work as `caller`'s transaction: `async with uow.for_caller(c):`.
        A read-only one takes no writer lock and needs no BEGIN on PostgreSQL."""
        if caller.org == orgs.SYSTEM_SCOPE:
            raise RuntimeError("the system scope is entered with `for_system`, not by a caller")
        self._caller = caller
        self._write = not read_only
        return self

    def for_system(self, principal: str, *, read_only: bool = False) -> Self:
        """This unit of work as the service's own, over every org at once (on
        PostgreSQL the system scope of row-level security): for background work
        that finds what to do in every org, then does it in each org's own unit."""
        self._caller = orgs.system_caller(principal)
        self._write = not read_only
        return self

    async def __aenter__(self) -> Self:
        if self._caller is None:
            raise RuntimeError("enter a unit of work with `async with uow.for_caller(caller)`")
        if self._used:
            raise RuntimeError("a unit of work is one transaction: make another for the next")
        self._used = True
        self._stack = contextlib.AsyncExitStack()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack, self._conn, self._seat = self._stack, None, None, None
        if stack is not None:
            await stack.__aexit__(*exc_info)  # rolls back whatever was not committed

    @property
    def org(self) -> str:
        """The organization this unit of work acts in: every row it reads or writes is its."""
        return self.caller.org

    @property
    def caller(self) -> Caller:
        if self._caller is None:
            raise RuntimeError("this unit of work was not entered for a caller")
        return self._caller

    def respond(self, outcome: object) -> Message:
        if self._respond is None:
            raise RuntimeError("this unit of work was given no way to answer an outcome")
        return self._respond(outcome)

    async def connection(self) -> AsyncConnection:
        """The transaction's connection, taken on first use."""
        if self._conn is None:
            if self._committed:
                raise RuntimeError("this unit of work has committed: make another for more")
            if self._stack is None:
                raise RuntimeError("use a unit of work inside `async with uow.for_caller(…)`")
            committer = group_commit.committer(self.storage.db) if self._write else None
            if committer is not None:
                # A write on PostgreSQL: alone, or in a group's transaction (scoped).
                self._seat = await self._stack.enter_async_context(
                    committer.seat(self.caller.org, self.storage.service))
                self._conn = self._seat.conn
                return self._conn
            conn = await self._stack.enter_async_context(
                self.storage.db.transaction(write=self._write))
            if self.postgres:
                # A read-only transaction is autocommit: each statement carries the scope.
                sql.scope(conn, self.caller.org, every_statement=not self._write)
            self._conn = conn
        return self._conn

    def _take_key(self, key: Key) -> bool:
        """Note the key this call takes; False if a call of its group holds it."""
        seat = self._seat
        return seat is None or seat.take_key(lock_of(self.caller, key))

    # -- kept rows ----------------------------------------------------------------------

    def kept_row(self, kind: str, row_id: str) -> Any | None:
        """A committed copy of the row to write from instead of reading it, if this
        attempt may (see "Kept rows") and this process keeps one: the repository's
        to copy before it changes it."""
        found = self.kept_rows(kind, [row_id])
        return None if found is None else found[0]

    def kept_rows(self, kind: str, row_ids: Sequence[str]) -> list[Any] | None:
        """Committed copies of every one of the rows, to write from instead of reading
        them; None if this attempt may not start from kept rows (see "Kept rows") or
        any of them is not kept (then none is used: the caller reads them all)."""
        if not (self.speculate and self._write):
            return None
        keys = [(self.org, kind, row_id) for row_id in row_ids]
        found = [self.storage.rows.get(key) for key in keys]
        if not found or any(row is None for row in found):
            return None
        self._served.extend(keys)
        return found

    @property
    def speculated(self) -> bool:
        """Whether this attempt started from a kept row or an assumption."""
        return bool(self._served) or self._assumed

    def assume(self, statement: sql.Statement, params: sql.Params, *, rows: int) -> bool:
        """Take as given, without reading, that `statement` finds `rows` rows, if this
        attempt may (as it may start from a kept row): True if so, and then its commit
        checks it, in the same round trip, and fails the attempt if it does not hold
        (the call runs again, reading: `Units.attempt`). False: read it.

        For a write that depends on a row being absent, as a text on the number not
        having opted out: the common case costs no round trip of its own."""
        if not (self.speculate and self._write and self.postgres):
            return False
        self.check(statement, params, rows=rows)
        self._assumed = True
        return True

    def check(self, statement: sql.Statement, params: sql.Params, *, rows: int) -> None:
        """PostgreSQL: with the commit, in its round trip and in the order of the
        writes, a read that must find exactly `rows` rows, or nothing commits
        (CONCURRENT_CHANGE; from a kept row or an assumption, the call runs again,
        reading). For what an attempt took as given instead of reading it."""
        self.writes.append((sql.Guarded(statement, rows, read=True), params))

    def judge_assumption(self, *, held: bool) -> None:
        """A write that read what it could have assumed (`assume`): whether the
        assumption would have held counts as a kept copy's being current would."""
        if self._write and self.judging and self.storage.rows.most:
            self.storage.rows.judge(stale=not held)

    def saw(self, kind: str, row_id: str, row: Any) -> None:
        """A row this unit of work read from the database (a copy, with its `version`).
        A read-only one read it committed: it is kept. A write's read judges the copy
        kept of it, if any: would the write have started from the row as it is?"""
        rows = self.storage.rows
        if not rows.most:
            return
        if not self._write:
            self.keep(kind, row_id, row)
        elif (kept := rows.get((self.org, kind, row_id))) is not None:
            rows.judge(stale=kept.version != row.version)

    def keep(self, kind: str, row_id: str, row: Any) -> None:
        """Keep a committed copy of a row (with its `version`), unless a newer one is
        kept: a read that returns after a write of this process has committed must not
        put the older version back."""
        rows = self.storage.rows
        if not rows.most:
            return
        key = (self.org, kind, row_id)
        kept = rows.get(key)
        if kept is None or kept.version <= row.version:
            rows.put(key, row)

    def committed_rows(self) -> Iterable[tuple[str, str, Any]]:
        """(kind, id, copy) of the rows this unit of work has seen, as its commit left
        them: kept once it has committed. Services whose writes start from kept rows
        say which."""
        return ()

    def _keep_committed(self) -> None:
        for kind, row_id, row in self.committed_rows():
            self.keep(kind, row_id, row)
        if self.speculated:
            self.storage.rows.judge(stale=False)
            metrics.KEPT_ROWS.labels(self.storage.service, "written").inc()

    def misread(self) -> None:
        """The attempt did not succeed: the kept rows it started from are dropped."""
        self.drop_served()
        self.storage.rows.judge(stale=True)
        metrics.KEPT_ROWS.labels(self.storage.service, "misread").inc()

    def drop_served(self) -> None:
        """Drop the kept rows this attempt started from, judging nothing."""
        for key in self._served:
            self.storage.rows.drop(key)

    # -- statements ---------------------------------------------------------------------

    async def read(self, statement: sql.Statement, params: sql.Params) -> list[Any]:
        """The rows of one prebuilt statement, with attribute access by column name."""
        return await sql.fetch(await self.connection(), statement, params)

    async def read_many(self, statements: list[tuple[sql.Statement, sql.Params]]
                        ) -> list[list[Any]]:
        """The rows of each of several prebuilt statements, run in order (on
        PostgreSQL in one round trip), with attribute access by column name."""
        return await sql.fetch_many(await self.connection(), statements)

    async def execute(self, statement: sql.Statement) -> list[Any]:
        """The rows of a statement built for this call, with attribute access by column name."""
        return await sql.rows(await self.connection(), statement)

    async def write(self, statement: sql.Statement, params: sql.Params, *,
                    expect_rows: int | None = None) -> None:
        """A write of this unit of work, the same on both databases: it takes effect
        with the commit, and a guarded one (`expect_rows`) that changes another
        number of rows is CONCURRENT_CHANGE, with nothing committed.

        On PostgreSQL it goes out with the commit, in the same round trip (so read
        what you need before you write); on SQLite it runs now.
        """
        guarded = statement if expect_rows is None else sql.Guarded(statement, expect_rows)
        if self.postgres:
            self.writes.append((guarded, params))
            return
        result = await (await self.connection()).execute(statement, params)  # type: ignore[arg-type]
        if expect_rows is not None and result.rowcount != expect_rows:
            raise ConcurrentChange(
                f"a write expected to change {expect_rows} rows changed {result.rowcount}")

    # -- events and commit --------------------------------------------------------------

    def record(self, event: object) -> None:
        """An event no aggregate of this unit of work recorded (the SMS breaker's)."""
        self._recorded.append(event)

    def recorded_events(self) -> Iterable[object]:
        """The domain events of the aggregates this unit of work changed."""
        return ()

    async def commit(self, outcome: object = None) -> None:
        """Commit the writes, the events and the key's outcome, or nothing.

        The outcome is stored under the claimed key as the answer `respond` makes
        of it (unless the key was marked pending or refused). On PostgreSQL the
        pending writes, the event log's append and COMMIT go out in one round
        trip (the append takes no lock that other writers wait for).
        """
        stored = self.keys._record(outcome)
        # Every event is its caller's org's (the system scope's: the services' own).
        records = [dataclasses.replace(self._events(e), org=self.caller.org)
                   for e in (*self.recorded_events(), *self._recorded)]
        conn = await self.connection()
        if self.postgres:
            statements = list(self.writes)
            if records:
                statements.append(self.storage.log.append_statement(records))
            self.writes.clear()
            try:
                if self._seat is not None:
                    await self._seat.commit(statements)
                    # A group's connection goes to the next transaction once the
                    # group has committed: nothing more of this one may run on it.
                    self._conn, self._committed = None, True
                else:
                    await sql.batch(conn, statements, commit=True)
            except sql.GuardFailed as failed:
                raise ConcurrentChange(str(failed)) from failed
        else:
            for statement, params in self.writes:  # the key's record, the key's forgetting
                await conn.execute(statement, params)  # type: ignore[arg-type]
            self.writes.clear()
            if records:
                await self.storage.log.append(conn, records)
            await conn.commit()
        if stored is not None and self.keys.claimed is not None:
            self.storage.keys.remember(self.caller, self.keys.claimed, stored)
        if self.storage.rows.most:
            self._keep_committed()
        if records:
            metrics.EVENTS_WRITTEN.labels(self.storage.service).inc(len(records))
            self.storage.feed.announce()


class Units(Generic[U]):
    """Units of work of one service: a fresh one per transaction."""

    def __init__(self, storage: Storage, make: Callable[..., U],
                 respond: Respond | None = None) -> None:
        self.storage = storage
        self._make = make
        self._respond = respond

    def answering(self, respond: Respond) -> Units[U]:
        """Units whose commits store an outcome as `respond` answers it."""
        return Units(self.storage, self._make, respond)

    def __call__(self) -> U:
        return self._make(self.storage, respond=self._respond)

    async def attempt(self, step: Callable[[U], Awaitable[T]], *,
                      time_remaining: float | None) -> T:
        """Run `step` in a fresh unit of work, again on transient failures (a
        serialization conflict, a dropped connection, a lost race), within the time.

        The first attempt claims its key ahead (`KeyStep.claim`); if the key was not
        free, the attempt is undone and the next claims at once, without a pause.
        Attempts may start from kept rows ("Kept rows", while they are worth it) until
        one that did fails: the next runs at once, reading.
        """
        ahead = True
        speculate = self.storage.rows.worth_it
        misread = False

        async def once() -> T:
            nonlocal ahead, speculate, misread
            uow = self()
            uow.keys.ahead = ahead
            uow.speculate = speculate
            uow.judging = not misread
            try:
                return await step(uow)
            except InvalidTextRepresentation as error:
                if not (uow.keys.ahead and claim_failed(error)):
                    raise
                ahead = False
                raise ClaimAtOnce("the key was not free: claim it at once") from error
            except Exception as error:
                if not uow.speculated:
                    raise
                speculate = False
                if is_transient(error) and not isinstance(error, RunAgain):
                    # A dropped connection, a deadlock: nothing to do with the copies,
                    # which go all the same (they may be stale too), and the failure
                    # is retried as any transient one is, after a pause, logged.
                    uow.drop_served()
                    raise
                misread = True
                uow.misread()
                raise Misread(f"an attempt from a kept row failed: {error!r}"[:300]) from error

        return await retrying(once, time_remaining=time_remaining)

    async def refused(self, caller: Caller, key: Key, refusal: errors.DomainError, *,
                      time_remaining: float | None) -> Stored:
        """Store a final refusal under the key, in a transaction of its own; raised
        again if it is transient. Another call's outcome stored meanwhile is
        answered instead, as a replay."""
        if isinstance(refusal, KeyInUse | KeyReused):
            # These speak of the key, not of the call: never its outcome. Storing
            # KeyInUse would wait on the key's holder (forever, if its transaction
            # is stranded by a lost connection) and could answer it for good.
            raise refusal
        outcome = Outcome.refusal(refusal, self.storage.service)
        if outcome is None:
            raise refusal

        async def store(uow: U) -> Stored:
            async with uow.for_caller(caller):
                found = await uow.keys.take(key, wait=True)
                if isinstance(found, Outcome):
                    return Stored(found)
                if isinstance(found, Pending):
                    raise KeyInUse()
                uow.keys.refuse(refusal)
                await uow.commit()
                return Stored(outcome, replayed=False)

        return await self.attempt(store, time_remaining=time_remaining)
