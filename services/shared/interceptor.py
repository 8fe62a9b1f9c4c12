"""The one server interceptor: every call's request id, principal and
idempotency key, its refusal if unauthenticated, the translation of domain
errors to statuses, an access log line and metrics.

Which calls need what comes from the contract: health and reflection need
nothing; methods marked `idempotency_level = NO_SIDE_EFFECTS` need a token;
every other method needs a token and an `idempotency-key`.

Who may call what is `services.shared.roles`: a caller whose role may not call
the method is refused PERMISSION_DENIED / ROLE_FORBIDS (before its idempotency
key is looked at), with ErrorInfo metadata `role` and `required_role`.

The caller acts in the org its credentials name. A `service` caller acting on a
user's behalf names the user's org in `x-crm-org` metadata and then acts in it;
from anyone else `x-crm-org` is refused PERMISSION_DENIED / ROLE_FORBIDS (a
user's org is the one of its credentials, never one it asks for), and a value
that is not an org name is INVALID_ARGUMENT / INVALID_ORG.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc import code_pb2

from services.shared import context, errors, ids, metrics, roles, status
from services.shared.auth import (
    ADMIN,
    AGENT,
    ORG_METADATA,
    SERVICE,
    VIEWER,
    Caller,
    Tokens,
    org_name,
)
from services.shared.idempotency import KeyMissing, check_key

log = logging.getLogger("crm.access")

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Kind(Enum):
    EXEMPT = "exempt"
    READ = "read"
    MUTATING = "mutating"


def kind_of(method: str) -> Kind:
    if method.startswith(EXEMPT_PREFIXES):
        return Kind.EXEMPT
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return Kind.READ
    level = found.GetOptions().idempotency_level
    return Kind.READ if level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS else Kind.MUTATING


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, service: str, domain: str, tokens: Tokens) -> None:
        self.service = service
        self.domain = domain
        self.tokens = tokens
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method  # type: ignore[attr-defined]
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._wrap(handler, method, kind_of(method))
            self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, kind: Kind) -> Any:
        if kind is Kind.EXEMPT:
            return handler
        serving = functools.partial(self._serving, method=method, kind=kind)
        codec = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                async with serving(ctx):
                    return await inner(_parsed(request, method), ctx)

            return grpc.unary_unary_rpc_method_handler(unary, **codec)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream
            serialize = handler.response_serializer

            async def stream(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with serving(ctx):
                    async for item in inner_stream(_parsed(request, method), ctx):
                        yield item

            # Streams may send messages already serialized (events sent to many).
            codec["response_serializer"] = (
                lambda message: message if isinstance(message, bytes) else serialize(message))
            return grpc.unary_stream_rpc_method_handler(stream, **codec)
        return handler

    @contextlib.asynccontextmanager
    async def _serving(
        self, ctx: grpc.aio.ServicerContext, *, method: str, kind: Kind
    ) -> AsyncIterator[None]:
        """Serve one call: its facts in context, its refusal as a status, its log line."""
        started = time.perf_counter()
        rpc = method.rsplit("/", 1)[-1]
        code = "OK"
        entered = None
        try:
            call = self._begin(ctx, method, kind)
            entered = context.enter(call)
            yield
        except errors.DomainError as error:
            refusal = status.to_status(error, self.domain)
            code = code_pb2.Code.Name(refusal.code)
            await status.abort(ctx, refusal,
                               retry_now=getattr(error, "retry_now", True))
        except grpc.aio.AbortError:
            code = _aborted_code(ctx)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unexpected failure in %s", rpc)
            await status.abort(ctx, status.internal(self.domain))
        finally:
            elapsed = time.perf_counter() - started
            self._measured(rpc, code).observe(elapsed)
            self._counted(rpc, code).inc()
            if log.isEnabledFor(logging.INFO):
                facts = context.maybe_call()
                log.info("%s %s", rpc, code, extra={
                    "code": code, "ms": round(elapsed * 1000, 2), "rpc": rpc,
                    "request_id": facts.request_id if facts else "",
                    "principal": facts.principal if facts else "",
                    "org": facts.caller.org if facts else "",
                    "role": facts.caller.role if facts else "",
                })
            if entered is not None:
                context.leave(entered)

    @functools.cache  # noqa: B019 - one interceptor per server, a handful of labels
    def _measured(self, rpc: str, code: str) -> Any:
        return metrics.RPC_SECONDS.labels(self.service, rpc)

    @functools.cache  # noqa: B019
    def _counted(self, rpc: str, code: str) -> Any:
        return metrics.RPCS.labels(self.service, rpc, code)

    def _begin(self, ctx: grpc.aio.ServicerContext, method: str, kind: Kind) -> context.Call:
        headers = dict(ctx.invocation_metadata() or ())
        key = ""
        caller = acting(self.tokens.caller(headers.get("authorization")),
                        headers.get(ORG_METADATA))
        permit(caller, method)
        if kind is Kind.MUTATING:
            if "idempotency-key" not in headers:
                raise KeyMissing()
            key = check_key(headers["idempotency-key"])
        return context.Call(
            self.service,
            method,
            (headers.get("x-request-id") or ids.uuid4().hex)[:128],
            caller=caller,
            idempotency_key=key,
        )


def acting(caller: Caller, org: str | None) -> Caller:
    """The caller as it acts: in the org a service names for it (`x-crm-org`)."""
    if org is None:
        return caller
    if caller.role != SERVICE:
        raise errors.PermissionDenied(
            f"{ORG_METADATA} is honoured from services only; {caller.principal} acts in the "
            "org of its credentials",
            reason="ROLE_FORBIDS", metadata={"role": caller.role, "required_role": SERVICE})
    try:
        return caller.in_org(org_name(org))
    except ValueError as why:
        raise errors.InvalidArgument(f"{ORG_METADATA} metadata: {why}",
                                     reason="INVALID_ORG") from None


_RANKED = (VIEWER, AGENT, ADMIN, SERVICE)


def permit(caller: Caller, method: str) -> None:
    """Nothing if the caller's role may call `method`; PERMISSION_DENIED if not."""
    allowed = roles.allowed(method)
    if caller.role in allowed:
        return
    rpc = method.rsplit("/", 1)[-1]
    needed = next((role for role in _RANKED if role in allowed), "")
    if needed == SERVICE:
        why = f"{rpc} is for services only (CRM_SERVICE_PRINCIPALS)"
    elif needed:
        why = f"{rpc} changes data, which the role {caller.role} may not do"
    else:
        why = f"{rpc} has no role decision: nobody may call it"
    raise errors.PermissionDenied(
        f"{why}; {caller.principal} has the role {caller.role}",
        reason="ROLE_FORBIDS", metadata={"role": caller.role, "required_role": needed})


class _Malformed:
    """What arrived instead of a request message that could be parsed."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A request parser that hands malformed bytes on, to be refused as a call."""
    if parse is None:
        return None

    def tolerant(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as error:
            return _Malformed(error)

    return tolerant


def _parsed(request: Any, method: str) -> Any:
    if isinstance(request, _Malformed):
        raise errors.InvalidArgument(
            f"the request is not a valid {method.rsplit('/', 1)[-1]} request message",
            reason="MALFORMED_REQUEST",
        )
    return request


def _aborted_code(ctx: grpc.aio.ServicerContext) -> str:
    code = ctx.code()
    return code.name if isinstance(code, grpc.StatusCode) else str(code or "UNKNOWN")
