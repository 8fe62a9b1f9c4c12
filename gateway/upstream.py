"""Calls to the services: one channel each, and the metadata an HTTP request carries.

Channels come from `services.shared.clients.open_channel` (round robin over a
`dns:///` target's addresses, UNAVAILABLE retried with backoff, TLS when
CRM_TLS_CA is set); every unary call gets the gateway's deadline. Methods are
called by their descriptors, so no RPC is written out here either.

What an HTTP request carries upstream:

    Authorization: …                       authorization: …   (API clients, as sent)
    session cookie                          authorization: Bearer <the principal's own token>
    Idempotency-Key / X-Idempotency-Key     idempotency-key
    X-Request-Id (or a new one)             x-request-id

and what comes back: `idempotent-replayed: true` in the initial metadata
becomes `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2

from gateway import contracts
from gateway.config import Settings
from gateway.errors import GatewayError, Refusal, Refused, from_rpc_error
from services.shared import clients

Metadata = Sequence[tuple[str, str]]
REPLAYED = "Idempotent-Replayed"
# Set on every request by the gateway's first middleware.
REQUEST_ID = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class Answer:
    response: Message
    replayed: bool

    @property
    def headers(self) -> dict[str, str]:
        return {REPLAYED: "true"} if self.replayed else {}


def _service_config(deadline: float) -> str:
    """The shared service config, its default deadline no shorter than the gateway's.

    Every unary call also sets the gateway's deadline itself: gRPC (1.85) fails
    calls at once when a service config's timeout is a second or less.
    """
    config = json.loads(clients.SERVICE_CONFIG)
    config["methodConfig"][0]["timeout"] = f"{math.ceil(max(deadline, 10.0))}s"
    return json.dumps(config)


class Upstreams:
    """The channels to the three services, opened at start and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deadline = settings.deadline_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}

    def open(self) -> None:
        options = [("grpc.service_config", _service_config(self.deadline))]
        for service, target in self.settings.targets.items():
            self._channels[service] = clients.open_channel(
                target, tls_ca=self.settings.tls_ca, options=options
            )

    async def close(self, grace: float | None = None) -> None:
        for channel in self._channels.values():
            await channel.close(grace)
        self._channels.clear()
        self._unary.clear()
        self._streams.clear()

    def _callable(self, service: str, method: MethodDescriptor, streaming: bool) -> Any:
        cache = self._streams if streaming else self._unary
        path = contracts.full_method(method)
        found = cache.get(path)
        if found is None:
            channel = self._channels.get(service)
            if channel is None:
                raise GatewayError(code_pb2.UNAVAILABLE, "GATEWAY_STOPPING",
                                   "the gateway is shutting down", retry_after=1)
            make = channel.unary_stream if streaming else channel.unary_unary
            found = make(
                path,
                request_serializer=GetMessageClass(method.input_type).SerializeToString,
                response_deserializer=GetMessageClass(method.output_type).FromString,
            )
            cache[path] = found
        return found

    async def call(
        self, service: str, method: MethodDescriptor, request: Message, metadata: Metadata
    ) -> Answer:
        """One unary call; a refusal raises `Refused` with the HTTP answer decided."""
        call = self._callable(service, method, False)(
            request, metadata=list(metadata), timeout=self.deadline
        )
        try:
            response = await call
            headers = await call.initial_metadata()
        except grpc.aio.AioRpcError as error:
            refused = from_rpc_error(error, service)
            if _replayed(error.initial_metadata()):
                refused = Refusal(refused.status, refused.http_status,
                                  {**refused.headers, REPLAYED: "true"})
            raise Refused(refused) from None
        return Answer(response, _replayed(headers))

    def subscribe(
        self, service: str, request: Message, metadata: Metadata
    ) -> grpc.aio.UnaryStreamCall:
        method = contracts.SERVICES[service].methods_by_name["Subscribe"]
        return self._callable(service, method, True)(request, metadata=list(metadata))  # type: ignore[no-any-return]


def _replayed(metadata: Any) -> bool:
    if not metadata:
        return False
    return any(key == "idempotent-replayed" and value == "true" for key, value in metadata)


def _printable(value: str) -> bool:
    return all(32 <= ord(c) <= 126 for c in value)


def metadata_for(request: web.Request, authorization: str | None) -> list[tuple[str, str]]:
    """The gRPC metadata of one HTTP request (see the module's table)."""
    metadata: list[tuple[str, str]] = [("x-request-id", request[REQUEST_ID])]
    if authorization:
        metadata.append(("authorization", authorization))
    key = idempotency_key(request)
    if key is not None:
        metadata.append(("idempotency-key", key))
    return metadata


def idempotency_key(request: web.Request) -> str | None:
    primary = request.headers.get("Idempotency-Key")
    legacy = request.headers.get("X-Idempotency-Key")
    if primary is not None and legacy is not None and primary != legacy:
        raise GatewayError.bad_field(
            "Idempotency-Key", "Idempotency-Key and X-Idempotency-Key differ; send one",
            reason="IDEMPOTENCY_KEY_INVALID",
        )
    key = primary if primary is not None else legacy
    if key is not None and not _printable(key):
        raise GatewayError.bad_field(
            "Idempotency-Key", "must be 1 to 255 printable ASCII characters",
            reason="IDEMPOTENCY_KEY_INVALID",
        )
    return key
