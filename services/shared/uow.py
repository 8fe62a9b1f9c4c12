"""The unit of work: one transaction in which a change, its events and its
idempotency record commit together, or not at all."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import metrics, sql
from services.shared.events import EventRecord

if TYPE_CHECKING:
    from services.shared.runtime import ServiceRuntime


class UnitOfWork:
    """Subclasses add their repositories and say which events their changes recorded."""

    def __init__(self, conn: AsyncConnection, runtime: ServiceRuntime) -> None:
        self.conn = conn
        self.runtime = runtime
        self.dialect = runtime.db.dialect
        self.postgres = self.dialect == "postgresql"
        self._writes: list[tuple[sql.Statement, sql.Params]] = []

    def collect_events(self) -> list[EventRecord]:
        """The events recorded by the aggregates this unit of work changed."""
        return []

    async def read(self, statement: sql.Statement, params: sql.Params) -> list[Any]:
        """The rows of one prebuilt statement, in this unit of work's transaction."""
        return await sql.fetch(self.conn, statement, params)

    async def write(self, statement: sql.Statement, params: sql.Params) -> int | None:
        """A write of this unit of work.

        On PostgreSQL it goes out with the commit, in the same round trip, so read
        what you need before you write (None); on SQLite it runs now (the number of
        rows it changed).
        """
        if self.postgres:
            self._writes.append((statement, params))
            return None
        result = await self.conn.execute(statement, params)  # type: ignore[arg-type]
        return int(result.rowcount)

    async def commit(self) -> None:
        """Commit the writes, the events and the outcome stored with them, or nothing.

        On PostgreSQL the pending writes, the event log's append and COMMIT go
        out in one round trip, so the log's head row, locked from its update to
        the commit, is held for no longer than that.
        """
        records = self.collect_events()
        if self.postgres:
            statements = list(self._writes)
            if records:
                statements.append(self.runtime.log.append_statement(records))
            self._writes.clear()
            await sql.batch(self.conn, statements, commit=True)
        else:
            if records:
                await self.runtime.log.append(self.conn, records)
            await self.conn.commit()
        if records:
            metrics.EVENTS_WRITTEN.labels(self.runtime.name).inc(len(records))
            self.runtime.feed.poke()
