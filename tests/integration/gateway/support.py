"""What the gateway's tests talk to: a scriptable fake upstream and an SSE reader."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from multidict import CIMultiDict

from gateway.contracts import SERVICES
from tests.support import leaks

Behaviour = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]
StreamBehaviour = Callable[[Message, grpc.aio.ServicerContext], AsyncIterator[Message]]


@dataclass
class Received:
    service: str
    rpc: str
    request: Message
    metadata: dict[str, str]


def refusal(code: int, reason: str, message: str, *, domain: str = "fake",
            retry_after: float | None = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
    if retry_after is not None:
        whole = int(retry_after)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((retry_after - whole) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def aborting(status: status_pb2.Status) -> Behaviour:
    async def behave(request: Message, context: grpc.aio.ServicerContext) -> Message:
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("unreachable")

    return behave


@dataclass
class FakeUpstream:
    """One gRPC server answering every RPC of the three contracts as scripted.

    `script[(service, rpc)]` answers a unary call; `streams[service]` a Subscribe.
    Unscripted calls are UNIMPLEMENTED. Every call is recorded in `received`.
    """

    script: dict[tuple[str, str], Behaviour] = field(default_factory=dict)
    streams: dict[str, StreamBehaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    open_streams: int = 0
    server: grpc.aio.Server | None = None
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self, rpc: str) -> list[Received]:
        return [r for r in self.received if r.rpc == rpc]

    async def start(self) -> FakeUpstream:
        self.server = grpc.aio.server()
        for service, descriptor in SERVICES.items():
            handlers = {}
            for method in descriptor.methods:
                codec = {
                    "request_deserializer": GetMessageClass(method.input_type).FromString,
                    "response_serializer": GetMessageClass(method.output_type).SerializeToString,
                }
                if method.server_streaming:
                    handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                        self._stream(service, method.name), **codec)
                else:
                    handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                        self._unary(service, method.name), **codec)
            self.server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(descriptor.full_name, handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    def _record(self, service: str, rpc: str, request: Message,
                context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())
                    if isinstance(value, str)}
        self.received.append(Received(service, rpc, request, metadata))

    def _unary(self, service: str, rpc: str) -> Behaviour:
        async def handle(request: Message, context: grpc.aio.ServicerContext) -> Message:
            self._record(service, rpc, request, context)
            behaviour = self.script.get((service, rpc))
            if behaviour is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not scripted")
                raise AssertionError("unreachable")
            return await behaviour(request, context)

        return handle

    def _stream(self, service: str, rpc: str) -> StreamBehaviour:
        async def handle(request: Message, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Message]:
            self._record(service, rpc, request, context)
            behaviour = self.streams.get(service)
            if behaviour is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not scripted")
                return
            self.open_streams += 1
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                self.open_streams -= 1

        return handle


# -- Server-Sent Events -------------------------------------------------------------


@dataclass
class SseMessage:
    event: str
    id: str | None
    data: Any
    retry: int | None = None

    @property
    def cursors(self) -> dict[str, str]:
        assert self.id is not None
        return dict(json.loads(base64.urlsafe_b64decode(self.id + "=" * (-len(self.id) % 4))))


class SseReader:
    """Reads an event stream as a browser's EventSource would, keeping comments aside."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.last_id: str | None = None

    async def next(self, within: float = 10.0) -> SseMessage | None:
        """The next message, or None when the stream ends."""
        fields: dict[str, list[str]] = {}
        async with asyncio.timeout(within):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value.removeprefix(" "))
                    continue
                if "data" not in fields:
                    fields.clear()
                    continue
                message = SseMessage(
                    event=fields.get("event", ["message"])[-1],
                    id=fields.get("id", [None])[-1],
                    data=json.loads("\n".join(fields["data"])),
                    retry=int(fields["retry"][-1]) if "retry" in fields else None,
                )
                if message.id is not None:
                    self.last_id = message.id
                return message

    async def events(self, count: int, within: float = 10.0) -> list[SseMessage]:
        """The next `count` messages that are not bookmarks."""
        found: list[SseMessage] = []
        async with asyncio.timeout(within):
            while len(found) < count:
                message = await self.next(within)
                assert message is not None, "the stream ended"
                if message.event != "bookmark":
                    found.append(message)
        return found

    async def quiet(self, seconds: float) -> list[SseMessage]:
        """Every message but bookmarks that arrives within `seconds`."""
        found: list[SseMessage] = []
        try:
            async with asyncio.timeout(seconds):
                while (message := await self.next(seconds + 1)) is not None:
                    if message.event != "bookmark":
                        found.append(message)
        except TimeoutError:
            pass
        return found


def grpc_code(name: str) -> int:
    return int(code_pb2.Code.Value(name))


# -- HTTP helpers ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    headers: CIMultiDict[str]

    @property
    def reason(self) -> str:
        return str(error_info(self.body).get("reason", ""))

    @property
    def domain(self) -> str:
        return str(error_info(self.body).get("domain", ""))

    def detail(self, kind: str) -> dict[str, Any]:
        return next(d for d in self.body["details"]
                    if d["@type"] == f"type.googleapis.com/google.rpc.{kind}")


def error_info(body: Any) -> dict[str, Any]:
    for detail in body.get("details", []) if isinstance(body, dict) else []:
        if detail.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo":
            return dict(detail)
    return {}


async def request(session: aiohttp.ClientSession, method: str, path: str, *,
                  json_body: Any = None, key: str | None = None, **options: Any) -> Answer:
    """One request; `key` sends an Idempotency-Key."""
    headers = dict(options.pop("headers", {}))
    if key is not None:
        headers["Idempotency-Key"] = key
    if json_body is not None:
        options["json"] = json_body
    async with session.request(method, path, headers=headers, **options) as response:
        text = await response.text()
        # No response of the gateway, whoever asks, holds the value of a secret.
        where = leaks.found_in(text + str(response.headers), leaks.WATCHED)
        assert not where, f"{method} {path} answered the value of {where}"
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        return Answer(response.status, body, CIMultiDict(response.headers))


async def create_lead(session: aiohttp.ClientSession, name: str = "Ada Lovelace",
                      phone: str = "+14155550123", key: str | None = None) -> dict[str, Any]:
    answer = await request(session, "POST", "/v1/leads", key=key or new_key(),
                           json_body={"name": name, "phone": phone, "email": "ada@example.com"})
    assert answer.status == 200, answer.body
    return dict(answer.body)


def new_key() -> str:
    import uuid

    return uuid.uuid4().hex
