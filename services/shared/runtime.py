"""A running service's parts, assembled once by the server for its bootstrap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.shared.config import Settings
from services.shared.uow import Storage, UnitOfWork, Units

U = TypeVar("U", bound=UnitOfWork)
Closer = Callable[[], Awaitable[None]]


@dataclass
class ServiceRuntime(Generic[U]):
    """What a service's bootstrap builds its servicer from."""

    name: str
    settings: Settings
    # The database, the event log and its feed, the idempotency keys.
    storage: Storage
    # A unit of work of the service's own kind, per transaction.
    units: Units[U]
    # What the bootstrap opened (channels, providers, tasks): closed at stop, last first.
    closers: list[Closer] = field(default_factory=list)
