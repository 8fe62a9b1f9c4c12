"""What every gRPC servicer does around a use case: proto in → command → result → proto out.

    @idempotent
    async def UpdateLeadStatus(self, request, context) -> pb.Lead:
        command = service.UpdateStatus(…, caller=caller(), key=key(request))
        return await self.run_command(context, service.update_status, command, messages.lead)

`run_query` and `run_command` run a use case in a fresh unit of work, again on
a transient failure (a serialization conflict, a dropped connection, a lost
race) within the caller's deadline, and answer its result through `respond`.
A Stored outcome is answered as it was stored, marked `idempotent-replayed:
true` when it is a replay.

`@idempotent` marks a handler that changes state. A final refusal it raises —
from reading the request, from the use case — is an outcome of its key like
any other: stored (in a transaction of its own; the refused one rolled back)
and answered, so a retry gets it replayed. A transient one is raised, for the
call interceptor to translate, and not stored.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from services.shared import errors, metrics, status
from services.shared.auth import Caller
from services.shared.context import current_call
from services.shared.idempotency import Key, Stored
from services.shared.uow import UnitOfWork, Units

T = TypeVar("T")
C = TypeVar("C")
M = TypeVar("M", bound=Message)
U = TypeVar("U", bound=UnitOfWork)

REPLAYED = (("idempotent-replayed", "true"),)


def caller() -> Caller:
    """The caller of the call being served."""
    return current_call().caller


def key(request: Message) -> Key:
    """The idempotency key of the call being served, for this request."""
    return Key.of(current_call(), request)


class Entrypoint(Generic[U]):
    """The base of every servicer: its units of work, and how a use case is run."""

    def __init__(self, units: Units[U]) -> None:
        self.units = units

    async def run_query(
        self, context: grpc.aio.ServicerContext, use_case: Callable[[C, U], Awaitable[T]],
        query: C, respond: Callable[[T], M],
    ) -> M:
        """A read: the use case in a read-only unit of work, its result answered."""
        found = await self.units.attempt(lambda uow: use_case(query, uow),
                                         time_remaining=context.time_remaining())
        return respond(found)

    async def run_command(
        self, context: grpc.aio.ServicerContext,
        use_case: Callable[[C, U], Awaitable[T | Stored]], command: C, respond: Callable[[T], M],
    ) -> M:
        """A change, once per key: the use case in a unit of work that stores its
        outcome as `respond` answers it."""
        once = _RespondOnce(respond)  # the answer stored is the answer sent
        result = await self.units.answering(once).attempt(
            lambda uow: use_case(command, uow), time_remaining=context.time_remaining())
        return await self.answer_result(context, result, once)

    async def answer_result(self, context: grpc.aio.ServicerContext, result: T | Stored,
                            respond: Callable[[T], M]) -> M:
        """The answer to a use case's result: `respond`'s, or the stored outcome's."""
        if isinstance(result, Stored):
            return await self.answer(context, result)  # type: ignore[return-value]
        return respond(result)

    async def answer(self, context: grpc.aio.ServicerContext, stored: Stored) -> Message:
        """Send a stored outcome: the response, or the refusal; marked if replayed."""
        call = current_call()
        if stored.replayed:
            metrics.REPLAYS.labels(self.units.storage.service, call.rpc).inc()
            await context.send_initial_metadata(REPLAYED)
        if stored.outcome.code != 0:
            await status.abort(context, stored.outcome.status())
        return stored.outcome.response(call.method)


class _RespondOnce(Generic[T, M]):
    """`respond`, made once per outcome: the message stored under the key at commit
    is the one answered, not made again."""

    def __init__(self, respond: Callable[[T], M]) -> None:
        self._respond = respond
        self._last: tuple[object, M] | None = None

    def __call__(self, outcome: T) -> M:
        if self._last is not None and self._last[0] is outcome:
            return self._last[1]
        made = self._respond(outcome)
        self._last = (outcome, made)
        return made


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def idempotent(handler: Handler) -> Handler:
    """A handler that changes state: its final refusals are stored under the call's key."""

    @functools.wraps(handler)
    async def handle(self: Entrypoint[Any], request: Message,
                     context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except errors.DomainError as refusal:
            stored = await self.units.refused(caller(), key(request), refusal,
                                              time_remaining=context.time_remaining())
            return await self.answer(context, stored)

    handle.__idempotent__ = True  # type: ignore[attr-defined]
    return handle
