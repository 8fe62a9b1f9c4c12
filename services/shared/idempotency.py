"""Exactly one effect per idempotency key (after Stripe and the IETF draft).

A key is scoped to its principal and RPC. The first call with a key runs; its
final outcome (success or a final refusal) is stored in the same transaction
as its effect, and a later call with the same key and the same request gets
that outcome back, marked `idempotent-replayed: true`, for the TTL. The same
key with a different request is IDEMPOTENCY_KEY_REUSED. Transient outcomes
(UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED…) are not stored, so a retry runs
again.

Concurrent calls with one key: on PostgreSQL the first holds a transaction
advisory lock on the key, and a second that arrives meanwhile is refused at
once with ABORTED / IDEMPOTENCY_KEY_IN_USE (retry it shortly to get the
outcome). On SQLite writes are serialized anyway, so the second waits for the
first's commit and replays its outcome. A call whose external effect is still
under way (a `pending` key, as when an SMS is being handed to the provider)
is IDEMPOTENCY_KEY_IN_USE on either.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import errors, sql, status
from services.shared.context import Call, current_call
from services.shared.db import Database, retrying, utcnow
from services.shared.schema import SharedTables

if TYPE_CHECKING:
    from services.shared.uow import UnitOfWork

REPLAYED = (("idempotent-replayed", "true"),)
_TRY_LOCK = sql.raw("SELECT pg_try_advisory_xact_lock(%(lock)s)")
_WAIT_FOR_LOCK = sql.raw("SELECT pg_advisory_xact_lock(%(lock)s)")
MAX_KEY_LENGTH = 255
DONE, PENDING = "done", "pending"


class KeyMissing(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_MISSING"

    def __init__(self) -> None:
        super().__init__(
            "idempotency-key: this call changes state and needs an idempotency-key "
            "(HTTP: Idempotency-Key)",
            violations=[errors.FieldViolation("idempotency-key", "required on mutating calls")],
        )


class KeyInvalid(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_INVALID"

    def __init__(self) -> None:
        description = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        super().__init__(
            f"idempotency-key: {description}",
            violations=[errors.FieldViolation("idempotency-key", description)],
        )


class KeyReused(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "idempotency-key: this key was used with a different request; "
            "use a new key for a new request",
            violations=[
                errors.FieldViolation("idempotency-key", "already used for another request")
            ],
        )


class KeyInUse(errors.Aborted):
    reason = "IDEMPOTENCY_KEY_IN_USE"

    def __init__(self) -> None:
        super().__init__(
            "a call with this idempotency key is still running; retry shortly for its outcome"
        )


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise KeyInvalid()
    return key


def fingerprint(request: Message) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What a call answered: a response on success, else a google.rpc.Status."""

    code: int
    body: bytes

    @classmethod
    def success(cls, response: Message) -> Outcome:
        return cls(0, response.SerializeToString())

    @classmethod
    def failure(cls, failed: status_pb2.Status) -> Outcome:
        return cls(failed.code, failed.SerializeToString())


@dataclass(frozen=True)
class Pending:
    """A key whose call is under way, what it is creating, and until when the
    call holds it (its lease); past the lease, a retry may take the call over."""

    resource_id: str
    created_at: datetime
    lease_until: datetime
    fingerprint: str = ""

    def expired(self, now: datetime) -> bool:
        return self.lease_until <= now


# Outcomes a process keeps in memory to answer replays without the database.
REMEMBERED_OUTCOMES = 10_000


@dataclass(frozen=True)
class _Remembered:
    fingerprint: str
    outcome: Outcome
    expires_at: datetime


class IdempotencyStore:
    def __init__(self, tables: SharedTables, *, ttl_seconds: int, postgres: bool) -> None:
        self.keys = tables.idempotency_keys
        self.ttl = timedelta(seconds=ttl_seconds)
        self.postgres = postgres
        # A stored outcome never changes until it expires (only an expired row is
        # ever replaced), so replays of recent keys are answered from memory.
        self._remembered: OrderedDict[tuple[str, str, str], _Remembered] = OrderedDict()
        k = self.keys.c
        self._find = select(
            k.fingerprint, k.state, k.code, k.response, k.resource_id, k.created_at, k.expires_at
        ).where(k.principal == bindparam("principal"), k.method == bindparam("method"),
                k.key == bindparam("key"))
        upsert = postgresql.insert(self.keys) if postgres else sqlite.insert(self.keys)
        self._record = upsert.on_conflict_do_update(
            index_elements=[k.principal, k.method, k.key],
            set_={name: getattr(upsert.excluded, name) for name in (
                "fingerprint", "state", "code", "response", "resource_id", "created_at",
                "expires_at")},
        )

    async def claim(
        self, conn: AsyncConnection, call: Call, request_fingerprint: str | None, *,
        wait: bool = False,
    ) -> Outcome | Pending | None:
        """Take the key for this transaction, and say what it holds.

        A stored outcome is returned even while another call holds the key:
        replays never queue behind each other. Otherwise a call arriving while
        another holds the key is refused at once (KeyInUse); a call finishing
        what it started under the key (`wait`) waits instead, as others hold
        the lock only for a moment. With a fingerprint, a key stored for
        another request is KeyReused. On PostgreSQL the lock and the read go
        out in one round trip, the read after the lock, so it sees any outcome
        committed by the call that held it.
        """
        names = {"principal": call.principal, "method": call.method,
                 "key": call.idempotency_key}
        if self.postgres:
            digest = hashlib.sha256(f"{call.principal}\0{call.method}\0{call.idempotency_key}"
                                    .encode()).digest()
            lock = int.from_bytes(digest[:8], "big", signed=True)
            locking = _WAIT_FOR_LOCK if wait else _TRY_LOCK
            locked_rows, found_rows = await sql.batch(
                conn, [(locking, {"lock": lock}), (self._find, names)])
            locked = wait or bool(locked_rows[0][0])
            row = found_rows[0] if found_rows else None
        else:  # SQLite: this transaction is the only writer.
            locked = True
            row = (await conn.execute(self._find, names)).first()
        found = self._read(row, request_fingerprint, call)
        if not locked and not isinstance(found, Outcome):
            raise KeyInUse()
        return found

    def _read(self, row: Any, request_fingerprint: str | None,
              call: Call | None = None) -> Outcome | Pending | None:
        if row is None:
            return None
        fingerprint, state, code, response, resource_id, created_at, expires_at = row
        if state == DONE and expires_at <= utcnow():
            return None
        if request_fingerprint is not None and fingerprint != request_fingerprint:
            raise KeyReused()
        if state == PENDING:
            return Pending(resource_id or "", created_at, expires_at, fingerprint)
        outcome = Outcome(code, bytes(response))
        if call is not None:
            self.remember(call, fingerprint, outcome, expires_at)
        return outcome

    def recall(self, call: Call, request_fingerprint: str) -> Outcome | None:
        """The outcome stored under this key, if this process remembers it."""
        name = (call.principal, call.method, call.idempotency_key)
        found = self._remembered.get(name)
        if found is None:
            return None
        if found.expires_at <= utcnow():
            del self._remembered[name]
            return None
        if found.fingerprint != request_fingerprint:
            raise KeyReused()
        self._remembered.move_to_end(name)
        return found.outcome

    def remember(self, call: Call, request_fingerprint: str, outcome: Outcome,
                 expires_at: datetime | None = None) -> None:
        """Keep a committed outcome in memory, for replays (least recently used go first)."""
        name = (call.principal, call.method, call.idempotency_key)
        self._remembered[name] = _Remembered(request_fingerprint, outcome,
                                             expires_at or utcnow() + self.ttl)
        self._remembered.move_to_end(name)
        if len(self._remembered) > REMEMBERED_OUTCOMES:
            self._remembered.popitem(last=False)

    async def record(
        self, uow: UnitOfWork, call: Call, request_fingerprint: str, outcome: Outcome | Pending,
    ) -> None:
        """Store the key's outcome with the unit of work's other writes, or mark it
        pending until its lease's end; an expired or pending row is replaced."""
        now = utcnow()
        done = isinstance(outcome, Outcome)
        await uow.write(self._record, {
            "principal": call.principal,
            "method": call.method,
            "key": call.idempotency_key,
            "fingerprint": request_fingerprint,
            "state": DONE if done else PENDING,
            "code": outcome.code if isinstance(outcome, Outcome) else 0,
            "response": outcome.body if isinstance(outcome, Outcome) else b"",
            "resource_id": None if isinstance(outcome, Outcome) else outcome.resource_id,
            "created_at": now,
            "expires_at": now + self.ttl if isinstance(outcome, Outcome) else outcome.lease_until,
        })

    async def peek(
        self, conn: AsyncConnection, call: Call, request_fingerprint: str | None
    ) -> Outcome | Pending | None:
        """What the key holds, read without taking it."""
        names = {"principal": call.principal, "method": call.method,
                 "key": call.idempotency_key}
        return self._read((await conn.execute(self._find, names)).first(), request_fingerprint,
                          call)

    async def stored(
        self, conn: AsyncConnection, call: Call, request_fingerprint: str | None
    ) -> Outcome | None:
        """A stored outcome of the key, read without taking it; KeyInUse if pending."""
        found = await self.peek(conn, call, request_fingerprint)
        if isinstance(found, Pending):
            raise KeyInUse()
        return found

    async def purge(self, conn: AsyncConnection, *, limit: int = 1000) -> int:
        """Delete up to `limit` expired keys; returns how many. Pending keys stay."""
        k = self.keys.c
        expired = (
            select(k.principal, k.method, k.key)
            .where(k.expires_at < utcnow(), k.state == DONE)
            .limit(limit)
        )
        rows = (await conn.execute(expired)).all()
        for row in rows:
            await conn.execute(
                delete(self.keys).where(
                    k.principal == row.principal, k.method == row.method, k.key == row.key
                )
            )
        return len(rows)

    async def forget(self, conn: AsyncConnection, call: Call) -> None:
        """Drop the key: its call was abandoned and had no effect."""
        k = self.keys.c
        await conn.execute(
            delete(self.keys).where(k.principal == call.principal, k.method == call.method,
                                    k.key == call.idempotency_key)
        )

    async def pending(self, conn: AsyncConnection, *, lease_ended_before: datetime,
                      limit: int = 100) -> list[tuple[Call, str]]:
        """Pending keys whose lease ended before the given time: (call, resource id)."""
        k = self.keys.c
        rows = await conn.execute(
            select(k.principal, k.method, k.key, k.resource_id)
            .where(k.state == PENDING, k.expires_at < lease_ended_before)
            .order_by(k.expires_at)
            .limit(limit)
        )
        return [
            (Call(service="", method=row.method, request_id="recovery", principal=row.principal,
                  idempotency_key=row.key), row.resource_id or "")
            for row in rows
        ]


class Runtime(Protocol):
    """What the handler wrappers need from a service."""

    @property
    def db(self) -> Database: ...
    @property
    def idempotency(self) -> IdempotencyStore: ...
    @property
    def domain(self) -> str: ...

    def unit_of_work(self, conn: AsyncConnection) -> Any: ...

    def on_replay(self, call: Call) -> None: ...


class Servicer(Protocol):
    @property
    def runtime(self) -> Runtime: ...


S = TypeVar("S", bound=Servicer)
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def reads(
    method: Callable[[S, Req, grpc.aio.ServicerContext, Any], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Run a read-only handler in a read transaction, retried on transient failures."""

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        runtime = self.runtime

        async def attempt() -> Resp:
            async with runtime.db.transaction(write=False) as conn:
                return await method(self, request, context, runtime.unit_of_work(conn))

        return await retrying(attempt, time_remaining=context.time_remaining())

    return handler


Handler = Callable[..., Awaitable[Any]]
Served = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


@overload
def idempotent(method: Handler, /) -> Served: ...
@overload
def idempotent(*, prepare: Served) -> Callable[[Handler], Served]: ...
def idempotent(
    method: Handler | None = None,
    /,
    *,
    prepare: Served | None = None,
) -> Served | Callable[[Handler], Served]:
    """Run a mutating handler once per idempotency key.

    The handler gets a unit of work inside a write transaction; the key is
    claimed in that transaction, and the outcome stored in it just before the
    unit of work commits. A final refusal rolls the effect back and stores the
    refusal instead.

    `prepare(self, request, context)`, if given, runs first and outside any
    transaction (for calls to other services); its result is passed to the
    handler as a fifth argument. A stored outcome is replayed before it runs,
    so a replay never depends on another service being up, and a final
    refusal from it is stored like any other.
    """
    if method is None:
        return lambda m: _idempotent(m, prepare)
    return _idempotent(method, prepare)


def _idempotent(handler_method: Handler, prepare: Served | None) -> Served:

    @functools.wraps(handler_method)
    async def handler(self: Any, request: Message, context: grpc.aio.ServicerContext) -> Message:
        runtime: Runtime = self.runtime
        call = current_call()
        request_fingerprint = fingerprint(request)
        time_remaining = context.time_remaining()
        fresh: list[Message] = []
        extra: tuple[Any, ...] = ()

        async def attempt() -> tuple[Outcome, bool]:
            fresh.clear()
            async with runtime.db.transaction(write=True) as conn:
                found = await runtime.idempotency.claim(conn, call, request_fingerprint)
                if isinstance(found, Pending):
                    raise KeyInUse()
                if found is not None:
                    return found, True
                uow = runtime.unit_of_work(conn)
                try:
                    response = await handler_method(self, request, context, uow, *extra)
                except errors.DomainError as error:
                    refusal = status.to_status(error, runtime.domain)
                    if not status.is_final(refusal):
                        raise
                    return await _store_refusal(runtime, conn, call, request_fingerprint, refusal)
                outcome = Outcome.success(response)
                await runtime.idempotency.record(uow, call, request_fingerprint, outcome)
                await uow.commit()
                runtime.idempotency.remember(call, request_fingerprint, outcome)
                fresh.append(response)
                return outcome, False

        outcome: Outcome | None = runtime.idempotency.recall(call, request_fingerprint)
        replayed = outcome is not None
        if outcome is None and prepare is not None:
            stored = await retrying(
                lambda: _stored_outcome(runtime, call, request_fingerprint),
                time_remaining=time_remaining,
            )
            if stored is not None:
                outcome, replayed = stored, True
            else:
                try:
                    extra = (await prepare(self, request, context),)
                except errors.DomainError as error:
                    outcome, replayed = await store_refusal(
                        runtime, call, request_fingerprint, error,
                        time_remaining=context.time_remaining(),
                    )
        if outcome is None:
            outcome, replayed = await retrying(attempt, time_remaining=context.time_remaining())
        if fresh:
            return fresh[0]
        assert outcome is not None
        return await answer(context, runtime, call, outcome, replayed=replayed)

    handler.__idempotent__ = True  # type: ignore[attr-defined]
    return handler


async def store_refusal(
    runtime: Runtime, call: Call, request_fingerprint: str, error: errors.DomainError,
    *, time_remaining: float | None,
) -> tuple[Outcome, bool]:
    """Store a final refusal under the key in a transaction of its own (or find the
    outcome another call stored meanwhile). A transient refusal is raised instead."""
    refusal = status.to_status(error, runtime.domain)
    if not status.is_final(refusal):
        raise error
    return await retrying(lambda: _refuse(runtime, call, request_fingerprint, refusal),
                          time_remaining=time_remaining)


async def answer(
    context: grpc.aio.ServicerContext, runtime: Runtime, call: Call, outcome: Outcome,
    *, replayed: bool,
) -> Message:
    """Send an outcome: the response, or the stored refusal; marked if replayed."""
    if replayed:
        runtime.on_replay(call)
        await context.send_initial_metadata(REPLAYED)
    if outcome.code != 0:
        await status.abort(context, status_pb2.Status.FromString(outcome.body))
    return _response_class(call).FromString(outcome.body)


async def _stored_outcome(runtime: Runtime, call: Call, request_fingerprint: str) -> Outcome | None:
    """A stored outcome of this key, read without taking the key."""
    async with runtime.db.transaction(write=False) as conn:
        found = await runtime.idempotency.stored(conn, call, request_fingerprint)
    if isinstance(found, Pending):
        raise KeyInUse()
    return found


async def _refuse(
    runtime: Runtime, call: Call, request_fingerprint: str, refusal: status_pb2.Status
) -> tuple[Outcome, bool]:
    async with runtime.db.transaction(write=True) as conn:
        return await _store_refusal(runtime, conn, call, request_fingerprint, refusal)


async def _store_refusal(
    runtime: Runtime,
    conn: AsyncConnection,
    call: Call,
    request_fingerprint: str,
    refusal: status_pb2.Status,
) -> tuple[Outcome, bool]:
    """Undo whatever the refused call wrote, then store the refusal under its key."""
    if conn.in_transaction():
        await conn.rollback()
    await conn.begin()
    found = await runtime.idempotency.claim(conn, call, request_fingerprint, wait=True)
    if isinstance(found, Outcome):
        return found, True
    if isinstance(found, Pending):
        raise KeyInUse()
    outcome = Outcome.failure(refusal)
    uow = runtime.unit_of_work(conn)
    await runtime.idempotency.record(uow, call, request_fingerprint, outcome)
    await uow.commit()
    runtime.idempotency.remember(call, request_fingerprint, outcome)
    return outcome, False


def _response_class(call: Call) -> type[Message]:
    return _response_class_of(call.method)


@functools.cache
def _response_class_of(method: str) -> type[Message]:
    found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    return message_factory.GetMessageClass(found.output_type)
