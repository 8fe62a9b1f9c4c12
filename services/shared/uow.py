"""The unit of work: one transaction in which a change, its events and its
idempotency record commit together, or not at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import metrics
from services.shared.events import EventRecord

if TYPE_CHECKING:
    from services.shared.runtime import ServiceRuntime


class UnitOfWork:
    """Subclasses add their repositories and say which events their changes recorded."""

    def __init__(self, conn: AsyncConnection, runtime: ServiceRuntime) -> None:
        self.conn = conn
        self.runtime = runtime
        self.dialect = runtime.db.dialect

    def collect_events(self) -> list[EventRecord]:
        """The events recorded by the aggregates this unit of work changed."""
        return []

    async def commit(self) -> None:
        records = self.collect_events()
        if records:
            await self.runtime.log.append(self.conn, records)
        await self.conn.commit()
        if records:
            metrics.EVENTS_WRITTEN.labels(self.runtime.name).inc(len(records))
            self.runtime.feed.poke()
