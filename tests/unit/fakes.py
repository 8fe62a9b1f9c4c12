"""Fakes of the unit of work and its key step, for the service layer's unit tests.

They implement the Protocols the use cases are written against (each
service's `…UnitOfWork` and `KeySteps`) with dictionaries and no IO, after
cosmicpython's FakeUnitOfWork: writes are staged and applied at commit, or
dropped when the `async with` ends without one; the key's outcome is stored
with the commit, as the answer `respond` makes of it.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

from google.protobuf.message import Message

from services.shared import errors
from services.shared.auth import Caller
from services.shared.idempotency import Key, KeyInUse, KeyReused, Outcome, Pending, Stored
from services.shared.orgs import system_caller
from services.shared.uow import ConcurrentChange

T = TypeVar("T")
U = TypeVar("U", bound="FakeUnitOfWork")
DOMAIN = "fake"


@dataclass
class FakeDatabase:
    """What the fakes keep between units of work."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, str, str], tuple[str | None, Outcome | Pending]] = field(
        default_factory=dict)
    events: list[object] = field(default_factory=list)
    # Every transaction: (caller, read_only, committed).
    transactions: list[tuple[Caller, bool, bool]] = field(default_factory=list)

    def table(self, name: str) -> dict[str, Any]:
        return self.rows.setdefault(name, {})

    def committed(self) -> list[tuple[Caller, bool, bool]]:
        return [t for t in self.transactions if t[2]]


def _scope(caller: Caller, key: Key) -> tuple[str, str, str]:
    return caller.principal, key.method, key.value


class FakeKeys:
    """The key step of a fake unit of work (the KeySteps Protocols)."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.uow = uow
        self.claimed: Key | None = None
        self.outcome: Outcome | Pending | None = None
        self.forgotten = False

    def _found(self, key: Key) -> Outcome | Pending | None:
        stored = self.uow.db.keys.get(_scope(self.uow.caller, key))
        if stored is None:
            return None
        fingerprint, outcome = stored
        if key.fingerprint is not None and fingerprint != key.fingerprint:
            raise KeyReused()
        return outcome

    async def claim(self, key: Key) -> Stored | None:
        stored = await self.stored(key)
        if stored is None:
            self.claimed = key
        return stored

    def remembered(self, key: Key) -> Stored | None:
        return None  # as a process just started: replays are read from the database

    async def claim_or_pending(self, key: Key) -> Stored | Pending | None:
        found = self._found(key)
        if isinstance(found, Pending):
            return found
        if found is None:
            self.claimed = key
            return None
        return Stored(found)

    async def stored(self, key: Key) -> Stored | None:
        found = self._found(key)
        if isinstance(found, Pending):
            raise KeyInUse()
        return None if found is None else Stored(found)

    async def take(self, key: Key, *, wait: bool) -> Outcome | Pending | None:
        found = self._found(key)
        self.claimed = key
        return found

    async def hold(self, key: Key) -> None:
        self.claimed = key

    async def peek(self, key: Key) -> Outcome | Pending | None:
        return self._found(key)

    async def abandoned(self, *, lease_ended_before: datetime
                        ) -> list[tuple[Caller, Key, str]]:
        return [(Caller(principal), Key(method, value, fingerprint), pending.resource_id)
                for (principal, method, value), (fingerprint, pending) in self.uow.db.keys.items()
                if isinstance(pending, Pending) and pending.lease_until < lease_ended_before]

    def pend(self, pending: Pending) -> None:
        self.outcome = pending

    def refuse(self, refusal: errors.DomainError) -> Stored:
        outcome = Outcome.refusal(refusal, DOMAIN)
        assert outcome is not None
        self.outcome = outcome
        return Stored(outcome, replayed=False)

    def forget(self) -> None:
        self.forgotten = True

    def commit(self, answer: Callable[[], Message]) -> None:
        if self.claimed is None:
            return
        scope = _scope(self.uow.caller, self.claimed)
        if self.forgotten:
            self.uow.db.keys.pop(scope, None)
            return
        outcome = self.outcome if self.outcome is not None else Outcome.success(answer())
        self.uow.db.keys[scope] = (self.claimed.fingerprint, outcome)


class FakeUnitOfWork:
    """One fake transaction: writes staged, applied at commit, else dropped."""

    def __init__(self, db: FakeDatabase, respond: Callable[[Any], Message] | None = None
                 ) -> None:
        self.db = db
        self.respond = respond
        self.keys = FakeKeys(self)
        self._caller: Caller | None = None
        self._read_only = False
        self._staged: list[Callable[[], None]] = []
        self._recorded: list[object] = []
        self.committed = False

    @property
    def caller(self) -> Caller:
        assert self._caller is not None, "the use case entered no transaction"
        return self._caller

    def for_caller(self, caller: Caller, *, read_only: bool = False) -> Self:
        self._caller, self._read_only = caller, read_only
        return self

    def for_system(self, principal: str, *, read_only: bool = False) -> Self:
        return self.for_caller(system_caller(principal), read_only=read_only)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.db.transactions.append((self.caller, self._read_only, self.committed))
        self._staged.clear()

    def stage(self, write: Callable[[], None]) -> None:
        assert not self._read_only, "a write in a read-only unit of work"
        self._staged.append(write)

    def record(self, event: object) -> None:
        self._recorded.append(event)

    def recorded_events(self) -> Iterable[object]:
        return ()

    async def commit(self, outcome: object = None) -> None:
        assert not self.committed, "committed twice"
        for write in self._staged:
            write()
        self.keys.commit(lambda: self._answer(outcome))
        self.db.events.extend([*self.recorded_events(), *self._recorded])
        self.committed = True

    def _answer(self, outcome: object) -> Message:
        assert self.respond is not None, "an outcome to store, but no way to answer it"
        return self.respond(outcome)


class FakeUnits(Generic[U]):
    """A fresh fake unit of work per transaction, as services.shared.uow.Units."""

    def __init__(self, make: Callable[[FakeDatabase, Callable[[Any], Message] | None], U],
                 db: FakeDatabase | None = None,
                 respond: Callable[[Any], Message] | None = None) -> None:
        self.db = db or FakeDatabase()
        self._make = make
        self._respond = respond

    def __call__(self) -> U:
        return self._make(self.db, self._respond)

    async def attempt(self, step: Callable[[U], Awaitable[T]], *,
                      time_remaining: float | None) -> T:
        return await step(self())


class FakeRows(Generic[T]):
    """A fake repository's table: rows copied in and out, as a database would, added
    with the commit, and every row this unit of work loaded or added (for events)."""

    def __init__(self, uow: FakeUnitOfWork, table: str, id_of: Callable[[T], str],
                 not_found: Callable[[str], Exception]) -> None:
        self.uow = uow
        self.rows: dict[str, T] = uow.db.table(table)
        self.seen: dict[str, T] = {}
        self._id_of = id_of
        self._not_found = not_found

    async def add(self, item: T) -> None:
        row_id, row = self._id_of(item), copy.deepcopy(item)
        self.uow.stage(lambda: self.rows.__setitem__(row_id, row))
        self.seen[row_id] = item

    async def get(self, row_id: str, *, for_update: bool = False) -> T:
        if row_id not in self.rows:
            raise self._not_found(row_id)
        found = self.seen[row_id] = copy.deepcopy(self.rows[row_id])
        return found


def guarded(table: dict[str, Any], row_id: str, expected_version: int, row: Any) -> None:
    """A write guarded by the version it read, as the real repositories' are."""
    if table[row_id].version != expected_version:
        raise ConcurrentChange(f"{row_id} moved")
    table[row_id] = copy.deepcopy(row)
