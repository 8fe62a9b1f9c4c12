"""The one server interceptor: every call's request id, principal and
idempotency key, its refusal if unauthenticated, the translation of domain
errors to statuses, an access log line and metrics.

Which calls need what comes from the contract: health and reflection need
nothing; methods marked `idempotency_level = NO_SIDE_EFFECTS` need a token;
every other method needs a token and an `idempotency-key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import Enum
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc import code_pb2

from services.shared import context, errors, metrics, status
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


class Unauthenticated(errors.Unauthenticated):
    def __init__(self, why: str) -> None:
        super().__init__(
            f"{why}; send `authorization: Bearer <token>` with a token from CRM_API_TOKENS",
            reason="INVALID_TOKEN" if "not accepted" in why else "MISSING_CREDENTIALS",
        )


class Tokens:
    """Accepted bearer tokens. Looked up by digest, so timing reveals nothing of them."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._by_digest = {_digest(t): principal for t, principal in tokens.items()}

    def principal(self, authorization: str | None) -> str:
        if not authorization:
            raise Unauthenticated("no credentials")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization is not a Bearer token")
        principal = self._by_digest.get(_digest(token.strip()))
        if principal is None:
            raise Unauthenticated("the token is not accepted")
        return principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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
        principal = self.tokens.principal(headers.get("authorization"))
        if kind is Kind.MUTATING:
            if "idempotency-key" not in headers:
                raise KeyMissing()
            key = check_key(headers["idempotency-key"])
        return context.Call(
            self.service,
            method,
            (headers.get("x-request-id") or uuid.uuid4().hex)[:128],
            principal=principal,
            idempotency_key=key,
        )


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
