"""A running service's parts, assembled once by its bootstrap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import metrics
from services.shared.config import Settings
from services.shared.context import Call
from services.shared.db import Database
from services.shared.events import EventFeed, EventLog
from services.shared.idempotency import IdempotencyStore

if TYPE_CHECKING:
    from services.shared.uow import UnitOfWork


@dataclass
class ServiceRuntime:
    name: str
    domain: str
    settings: Settings
    db: Database
    log: EventLog
    feed: EventFeed
    idempotency: IdempotencyStore
    uow_class: type[UnitOfWork]
    # Whatever else the service's bootstrap wires in (clients, providers…).
    parts: dict[str, Any] = field(default_factory=dict)

    def unit_of_work(self, conn: AsyncConnection) -> UnitOfWork:
        return self.uow_class(conn, self)

    def on_replay(self, call: Call) -> None:
        metrics.REPLAYS.labels(self.name, call.rpc).inc()
