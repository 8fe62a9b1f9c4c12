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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, overload

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import errors, status
from services.shared.context import Call, current_call
from services.shared.db import Database, retrying, utcnow
from services.shared.schema import SharedTables

REPLAYED = (("idempotent-replayed", "true"),)
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


class IdempotencyStore:
    def __init__(self, tables: SharedTables, *, ttl_seconds: int, postgres: bool) -> None:
        self.keys = tables.idempotency_keys
        self.ttl = timedelta(seconds=ttl_seconds)
        self.postgres = postgres
        self._try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        self._lock = text("SELECT pg_advisory_xact_lock(:key)")

    async def lock(self, conn: AsyncConnection, call: Call, *, wait: bool = False) -> None:
        """Hold the key for this transaction.

        A call arriving with the key is refused at once (KeyInUse) if another
        holds it now. A call finishing what it started under the key (storing
        its outcome) waits instead: others hold the lock only for a moment.
        """
        if not self.postgres:
            return  # SQLite: this transaction is the only writer.
        digest = hashlib.sha256(f"{call.principal}\0{call.method}\0{call.idempotency_key}".encode())
        key = int.from_bytes(digest.digest()[:8], "big", signed=True)
        if wait:
            await conn.execute(self._lock, {"key": key})
        elif not (await conn.execute(self._try_lock, {"key": key})).scalar_one():
            raise KeyInUse()

    async def find(
        self, conn: AsyncConnection, call: Call, request_fingerprint: str | None
    ) -> Outcome | Pending | None:
        """The stored outcome for this key unless expired, or its pending call.

        With a fingerprint, a key stored for another request is KeyReused."""
        k = self.keys.c
        row = (
            await conn.execute(
                select(k.fingerprint, k.state, k.code, k.response, k.resource_id, k.created_at,
                       k.expires_at)
                .where(k.principal == call.principal, k.method == call.method,
                       k.key == call.idempotency_key)
            )
        ).first()
        if row is None or (row.state == DONE and row.expires_at <= utcnow()):
            return None
        if request_fingerprint is not None and row.fingerprint != request_fingerprint:
            raise KeyReused()
        if row.state == PENDING:
            return Pending(row.resource_id or "", row.created_at, row.expires_at, row.fingerprint)
        return Outcome(row.code, bytes(row.response))

    async def save(
        self,
        conn: AsyncConnection,
        call: Call,
        request_fingerprint: str,
        outcome: Outcome | Pending,
    ) -> None:
        """Store the key's outcome, or mark it pending until the lease's end;
        replaces an expired or pending row."""
        k = self.keys.c
        now = utcnow()
        expires_at = outcome.lease_until if isinstance(outcome, Pending) else now + self.ttl
        await conn.execute(
            delete(self.keys).where(
                k.principal == call.principal, k.method == call.method,
                k.key == call.idempotency_key,
            )
        )
        done = isinstance(outcome, Outcome)
        await conn.execute(
            insert(self.keys).values(
                principal=call.principal,
                method=call.method,
                key=call.idempotency_key,
                fingerprint=request_fingerprint,
                state=DONE if done else PENDING,
                code=outcome.code if isinstance(outcome, Outcome) else 0,
                response=outcome.body if isinstance(outcome, Outcome) else b"",
                resource_id=None if isinstance(outcome, Outcome) else outcome.resource_id,
                created_at=now,
                expires_at=expires_at,
            )
        )

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
                await runtime.idempotency.lock(conn, call)
                found = await runtime.idempotency.find(conn, call, request_fingerprint)
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
                await runtime.idempotency.save(conn, call, request_fingerprint, outcome)
                await uow.commit()
                fresh.append(response)
                return outcome, False

        outcome: Outcome | None = None
        replayed = False
        if prepare is not None:
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
        found = await runtime.idempotency.find(conn, call, request_fingerprint)
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
    await runtime.idempotency.lock(conn, call, wait=True)
    found = await runtime.idempotency.find(conn, call, request_fingerprint)
    if isinstance(found, Outcome):
        return found, True
    if isinstance(found, Pending):
        raise KeyInUse()
    outcome = Outcome.failure(refusal)
    await runtime.idempotency.save(conn, call, request_fingerprint, outcome)
    await conn.commit()
    return outcome, False


def _response_class(call: Call) -> type[Message]:
    return _response_class_of(call.method)


@functools.cache
def _response_class_of(method: str) -> type[Message]:
    found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    return message_factory.GetMessageClass(found.output_type)
