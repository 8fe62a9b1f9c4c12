"""Storage: one async SQLAlchemy engine per service, and transactions that retry.

SQLite (the embedded default) runs in WAL mode; a write transaction starts with
BEGIN IMMEDIATE and, inside one process, writers queue on a lock rather than
spinning on SQLITE_BUSY. PostgreSQL runs through psycopg 3.

A transaction that fails on a serialization conflict, a deadlock, a lock
timeout or a dropped connection is run again with backoff and full jitter, as
long as the caller's deadline allows; past it the caller gets UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import DateTime, TypeDecorator

from services.shared import sql
from services.shared.errors import Unavailable
from services.shared.retry import backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# Budget for retrying a transaction when the caller set no deadline.
DEFAULT_RETRY_BUDGET = 10.0
# How long before the caller's deadline an outage is reported.
ANSWER_MARGIN = 0.25
# Tasks inside an SQLite transaction (see `bounded`).
_in_sqlite_transaction: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_IDLE = psycopg.pq.TransactionStatus.IDLE
_ENDED_BADLY = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "08000", "08003",
                        "08006", "08001", "08004"}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> Any:
    """In UTC: rows read on the driver directly come in the session's time zone."""
    return None if value is None else value.astimezone(UTC)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False,
                 group_commit: int = 0) -> None:
        self.url = make_url(url)
        # PostgreSQL: the most write calls one commit carries (services.shared.group_commit);
        # 0 or 1: every call commits alone.
        self.group_commit = group_commit
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0, echo=echo,
                connect_args={"timeout": 30},
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=5,
                echo=echo,
                # Statements are prepared by services.shared.sql, not psycopg (which
                # would DEALLOCATE ALL of them after every ROLLBACK).
                connect_args={"connect_timeout": 5, "application_name": "closed-loop",
                              "prepare_threshold": None},
            )
            _configure_postgres(self.engine)
        # SQLite has one writer at a time; queue here instead of in busy-wait loops.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # PostgreSQL: connections kept checked out of the engine's pool between
        # transactions, the one given back last on top (see `_lease`).
        self._idle: list[AsyncConnection] = []
        self._keep = pool_size
        self._retired: weakref.WeakSet[AsyncConnection] = weakref.WeakSet()  # see `retire`
        # Called when the server drops a connection (see `_give_back`): what this
        # process keeps of the database's rows may no longer be the database's.
        self.on_lost: list[Callable[[], None]] = []
        self._disposed = False

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    def libpq_conninfo(self) -> str:
        """The URL as psycopg takes it, for connections outside the pool (LISTEN)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction; committed by the caller, else rolled back."""
        if self._write_lock is not None and write:
            async with self._write_lock, self._connect(write) as conn:
                yield conn
        else:
            async with self._connect(write) as conn:
                yield conn

    @asynccontextmanager
    async def _connect(self, write: bool) -> AsyncIterator[AsyncConnection]:
        if self.is_sqlite:
            async with self._sqlite_transaction(write) as conn:
                yield conn
            return
        conn = await self._lease()
        raw = None
        try:
            # psycopg sends no BEGIN of its own here: it is kept in autocommit mode.
            # A read needs no BEGIN and ROLLBACK, two round trips of their own:
            # every read here is one statement, or statements that stay correct
            # without one snapshot (the event log's prefix property). A write's
            # BEGIN rides with its first statement (services.shared.sql sends them
            # to psycopg directly); psycopg's would wait for its answer first.
            # Set on psycopg's connection, not through SQLAlchemy's isolation
            # level, which costs a greenlet hop to set and another to reset as the
            # connection goes back. (A connection the server dropped is not IDLE:
            # psycopg would refuse the change; its first statement then fails as
            # it would have anyway, as a transient error.)
            raw = sql.driver(conn)
            if not raw.autocommit and raw.info.transaction_status == _IDLE:
                await raw.set_autocommit(True)
            if write:
                sql.begin_with_first_statement(conn)
            # SQLAlchemy's own begin, a greenlet hop that sends nothing, is left
            # out; a statement run through SQLAlchemy begins its books as it goes.
            # Whatever is left open is rolled back here, or by the pool as the
            # connection goes back (psycopg rolls back whatever transaction the
            # server has open, autocommit or not).
            try:
                yield conn
            finally:
                sql.forget(conn, raw)  # its pending BEGIN and scope: not the next user's
                if conn.in_transaction():
                    await conn.rollback()
                if raw.info.transaction_status in _ENDED_BADLY:
                    # Opened by a BEGIN of services.shared.sql, which SQLAlchemy's
                    # books never saw: a write that ended without its COMMIT. (If
                    # this fails, the connection is not kept: the pool sees to it.)
                    with contextlib.suppress(psycopg.Error):
                        await raw.rollback()
        finally:
            await self._give_back(conn, raw)

    async def _lease(self) -> AsyncConnection:
        """A connection for one transaction on PostgreSQL: one kept from an earlier
        transaction if there is one, else one checked out of the engine's pool.

        SQLAlchemy's checkout and check-in (a `Connection`, the pool's books, its
        events and reset, a greenlet hop each way) cost about 150 µs of CPU per
        transaction here, more than the round trip a read makes; taking a kept
        connection off a list costs next to nothing. The engine's pool still
        bounds how many connections are open and how long a caller waits for one
        (`pool_timeout`): a kept connection counts as checked out of it. Connections
        are kept only while the pool is within its size, so a burst's overflow
        connections go back to it and are closed there as before, and a caller
        waiting for the pool (which only happens in overflow) gets the next one.
        """
        if self._idle:
            return self._idle.pop()
        return await self.engine.connect()

    async def _give_back(self, conn: AsyncConnection, raw: Any) -> None:
        """Keep `conn` (over psycopg's `raw`) for the next transaction if it is as a
        new one would be: open, in autocommit mode, no transaction open on the server,
        nobody's BEGIN or scope pending (`sql.forget`), and the pool within its size;
        else hand it back to the engine's pool, which rolls back or drops it as it
        does every connection given back.

        A connection the server dropped (psycopg: broken, not closed on purpose)
        says that the others may be gone too (a restart, a partition): the kept ones
        are closed as well, and the next transaction opens a new one rather than
        meeting each dead one in turn. It may also be a failover that lost commits
        already acknowledged, so `on_lost` forgets what was kept of the rows.
        """
        if (raw is not None and not self._disposed and not conn.invalidated
                and not conn.closed and conn not in self._retired
                and len(self._idle) < self._keep
                and self.engine.pool.overflow() <= 0  # type: ignore[attr-defined]
                and not conn.in_transaction() and raw.autocommit and not raw.closed
                and raw.info.transaction_status == _IDLE):
            self._idle.append(conn)
            return
        broken = raw is not None and raw.broken
        if broken:
            for forget in self.on_lost:
                forget()
            await self._let_go_of_kept(invalidate=True)
        if (broken or self._disposed or conn in self._retired) and not conn.invalidated:
            # Closed, not pooled: not rolled back by the pool first, and not left
            # open in a pool that was disposed of.
            await conn.invalidate()
        # Closed as `async with` closes it: to completion, even if cancelled meanwhile.
        await conn.__aexit__(None, None, None)

    def retire(self, conn: AsyncConnection) -> None:
        """`conn` must not be kept when its transaction ends: something other than
        the transaction's own task may still hold it (a group's members)."""
        self._retired.add(conn)

    async def _let_go_of_kept(self, *, invalidate: bool) -> None:
        """Hand the kept connections back to the engine's pool; `invalidate`: to be
        closed there and replaced by new ones, not pooled again."""
        while self._idle:
            conn = self._idle.pop()
            if invalidate:
                await conn.invalidate()
            await conn.__aexit__(None, None, None)

    def connections_in_use(self) -> int:
        """How many connections transactions hold right now (none kept for later)."""
        return int(self.engine.pool.checkedout()) - len(self._idle)  # type: ignore[attr-defined]

    @asynccontextmanager
    async def _sqlite_transaction(self, write: bool) -> AsyncIterator[AsyncConnection]:
        """An SQLite transaction that runs to its end once it has begun.

        A task cancelled while a statement is in aiosqlite's thread has its
        connection invalidated by SQLAlchemy and dropped without a ROLLBACK:
        the file lock of its BEGIN IMMEDIATE stays held until the connection
        is collected, and every writer after it waits (`busy_timeout`) and
        times out. So `bounded` does not cancel work that is inside one of
        these; it lets the transaction finish (in milliseconds, on a local
        file) and collects how it ended.
        """
        task = asyncio.current_task()
        if task is not None:
            _in_sqlite_transaction.add(task)
        try:
            async with self.engine.connect() as conn:
                await conn.execution_options(crm_write=write)
                await conn.begin()  # BEGIN IMMEDIATE for a write (see _configure_sqlite)
                try:
                    yield conn
                finally:
                    if conn.in_transaction():
                        await conn.rollback()
        finally:
            if task is not None:
                _in_sqlite_transaction.discard(task)

    async def ping(self, within: float) -> None:
        """Reach the database afresh and run `SELECT 1`; raises if it cannot `within` seconds.

        On PostgreSQL this is a new connection, not one of the pool's: a busy
        pool says nothing about whether the database can be reached, and a
        pooled connection cut off by a partition would only hang.
        """
        async def probe() -> None:
            if self.is_sqlite:
                async with self.engine.connect() as pooled:
                    await pooled.exec_driver_sql("SELECT 1")
                return
            fresh = await psycopg.AsyncConnection.connect(
                self.libpq_conninfo(), autocommit=True,
                connect_timeout=max(2, math.ceil(within)))
            try:
                await fresh.execute("SELECT 1")
            finally:
                await fresh.close()

        await bounded(probe, within)

    async def dispose(self) -> None:
        self._disposed = True
        await self._let_go_of_kept(invalidate=False)
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let BEGIN below, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                       "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("crm_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _configure_postgres(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def begin_first(conn: Any, cursor: Any, *_: Any) -> None:
        # A write transaction's BEGIN, if a statement through SQLAlchemy comes
        # first (see `Database._connect`).
        sql.begin_if_pending(conn.connection.driver_connection, cursor)

    @event.listens_for(engine.sync_engine, "close")
    def closed(dbapi_connection: Any, _record: Any) -> None:
        # Dropped by the pool: an overflow given back, one invalidated, or disposed.
        if dbapi_connection is not None:
            sql.closed(dbapi_connection.driver_connection)

    @event.listens_for(engine.sync_engine, "close_detached")
    def closed_detached(dbapi_connection: Any) -> None:
        # One the pool let go of without closing it through its books (collected
        # before it was given back).
        if dbapi_connection is not None:
            sql.closed(dbapi_connection.driver_connection)


class RunAgain(Exception):
    """The transaction lost a race that the database refereed; running it again,
    from the start, decides it (`retrying` does)."""

    # Run again without the backoff's pause: the next attempt goes another way.
    at_once = False


def is_transient(error: BaseException) -> bool:
    """Whether running the transaction again may succeed."""
    if isinstance(error, RunAgain | sql.Replanned):
        return True
    if isinstance(error, exc.TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        original = error.orig
        if isinstance(original, psycopg.Error):
            state = original.sqlstate or ""
            return state in _RETRYABLE_SQLSTATES or isinstance(original, psycopg.OperationalError)
        if isinstance(original, sqlite3.OperationalError):
            return "locked" in str(original) or "busy" in str(original)
        return isinstance(error, exc.OperationalError | exc.InterfaceError)
    return isinstance(error, psycopg.OperationalError)


async def bounded(work: Callable[[], Awaitable[T]], seconds: float) -> T:
    """`work()`, or TimeoutError after `seconds`, without waiting for it to unwind.

    A query cut off by a network partition unwinds slowly: psycopg first asks
    the server to cancel it, over the network that no longer answers, for up
    to ten seconds. The caller's answer must not wait for that, so the work
    is cancelled and left to finish unwinding on its own (its connection is
    then closed, not returned to the pool as if nothing happened).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work(), loop=loop)
    # `asyncio.wait({task}, timeout=…)` by hand: one future and one timer, no sets
    # (this runs once a call, and the sets and their tasks' bookkeeping showed).
    ended = loop.create_future()

    def end(_: object) -> None:  # the first of the task's end and the timer
        if not ended.done():
            ended.set_result(None)

    task.add_done_callback(end)
    timer = loop.call_later(seconds, end, None)
    try:
        await ended
    except asyncio.CancelledError:
        _abandon(task)
        raise
    finally:
        timer.cancel()
    if task.done():
        return task.result()
    _abandon(task)
    raise TimeoutError


def _abandon(task: asyncio.Task[Any]) -> None:
    """Leave `task` to unwind on its own: cancelled, unless it is inside an SQLite
    transaction, which is left to finish (see `Database._sqlite_transaction`)."""
    if task not in _in_sqlite_transaction:
        task.cancel()
    task.add_done_callback(_unwound)


def _unwound(task: asyncio.Future[Any]) -> None:
    """Collect how abandoned work ended, so that no error of it goes unretrieved."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.info("abandoned database work ended", extra={"error": repr(error)[:300]})


async def retrying(
    work: Callable[[], Awaitable[T]],
    *,
    time_remaining: float | None,
    what: str = "the database",
) -> T:
    """Run `work` until it succeeds, fails for good, or the deadline draws near.

    Failures that `is_transient` recognizes are retried; when the deadline
    leaves no room for another attempt they surface as UNAVAILABLE.
    """
    budget = DEFAULT_RETRY_BUDGET if time_remaining is None else time_remaining
    # Answer UNAVAILABLE a little before the caller's deadline, never at it: a
    # caller that sees DEADLINE_EXCEEDED cannot tell an outage from a hang.
    deadline = time.monotonic() + budget - min(ANSWER_MARGIN, budget * 0.1)
    attempt = 0
    while True:
        try:
            return await bounded(work, max(0.001, deadline - time.monotonic()))
        except TimeoutError as error:
            raise Unavailable(f"{what} did not answer in time", reason="DATABASE_UNAVAILABLE",
                              retry_after=1.0) from error
        except Exception as error:
            if not is_transient(error):
                raise
            at_once = isinstance(error, RunAgain) and error.at_once
            delay = 0.0 if at_once else backoff(attempt)
            if time.monotonic() + delay >= deadline:
                log.warning("giving up on %s", what, extra={"error": repr(error)[:300]})
                raise Unavailable(f"{what} is unavailable", reason="DATABASE_UNAVAILABLE",
                                  retry_after=1.0) from error
            # Running again at once is the plan going another way (reading a row a
            # kept copy had wrong, claiming a key that was not free), not a failure:
            # a busy deployment makes many, so they are not logged at INFO.
            details = {"error": repr(error)[:300], "attempt": attempt + 1}
            if at_once:
                log.debug("running again another way", extra=details)
            else:
                log.info("retrying after a transient failure", extra=details)
            attempt += 1
            await asyncio.sleep(delay)
