"""`GET /v1/events`: the three services' Subscribe streams, merged, as Server-Sent Events.

Query: `lead_id` (repeatable) → every service's `lead_ids`; `appointment_id`
(repeatable) → bookings' `appointment_ids`, and then only bookings is followed
(no other service has appointment events); `types` (repeatable or
comma-separated) → only the services owning a type's prefix are followed:
`lead.` leads, `appointment.` bookings, `message.`, `recipient.`, `provider.`
messaging. `last_event_id` stands in for the `Last-Event-ID` header for clients
that cannot set headers.

Each message:

    event: lead.status_changed              the upstream event's type
    id: eyJsZWFkcyI6IkFCQyJ9                the composite id (below)
    data: {"cursor": …, "type": …, …}       the upstream Event as JSON

The composite id is base64url (unpadded) of the JSON object
`{"leads": <cursor>, "bookings": <cursor>, "messaging": <cursor>}`: the latest
cursor of every service stream *as delivered to this browser*. A reconnect
with it as `Last-Event-ID` resumes each stream with `after_cursor`, so every
event written while the browser was away arrives exactly once. Cursors of
services the filters leave out are carried along unchanged.

- The first message is an `event: bookmark` (with `retry:`), sent once every
  followed stream has sent its first bookmark: from then on the page misses
  nothing. A service that has not answered within LIVE_WITHOUT_AFTER seconds
  does not hold the others back: the stream goes live without it, with a
  bookmark whose data names it (`{"type": "bookmark", "unavailable": [...]}`),
  and its events join once it answers, from its cursor in the id. Upstream
  bookmarks that follow (heartbeats) are forwarded as `event: bookmark`; they
  advance the id.
- `: heartbeat` comments go out every CRM_SSE_HEARTBEAT_SECONDS (15).
- An upstream stream that ends or fails is subscribed again from its last
  cursor, with backoff. A cursor past the upstream's retention (OUT_OF_RANGE)
  gives `event: reset` — data `{"service": …, "error": <google.rpc.Status>}` —
  telling the page to reload its state; that stream continues from the head.
- A refusal before the stream has started (bad filters, bad credentials, a
  malformed Last-Event-ID: 400) is an ordinary HTTP error. One after it has
  started ends the stream; the browser's reconnect then gets the HTTP error.
- When the browser goes away, or the gateway shuts down, every upstream call
  is cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, status_pb2
from multidict import MultiMapping

from gateway import contracts, metrics
from gateway.config import Settings
from gateway.errors import GatewayError, from_rpc_error, response, status_json
from gateway.json_mapping import to_json
from gateway.sessions import Sessions
from gateway.upstream import Upstreams, metadata_for
from services.shared.db import backoff

log = logging.getLogger("crm.gateway.events")

ORDER = ("leads", "bookings", "messaging")
OWNERS = {"lead.": "leads", "appointment.": "bookings", "message.": "messaging",
          "recipient.": "messaging", "provider.": "messaging"}
QUERY_KEYS = {"lead_id", "appointment_id", "types", "last_event_id"}
MAX_ID_LENGTH = 4096
MAX_CURSOR_LENGTH = 512
RECONNECT_MS = 2000
# How long the merged stream waits for every service before going live without some.
LIVE_WITHOUT_AFTER = 3.0
# Refusals that a new subscription would get again: the browser must hear of them.
FINAL_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED,
})


@dataclass(frozen=True)
class Selection:
    """What one browser follows: which services, with which filters."""

    services: tuple[str, ...]
    lead_ids: tuple[str, ...] = ()
    appointment_ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def request(self, service: str, after_cursor: str) -> Message:
        request_class = GetMessageClass(
            contracts.SERVICES[service].methods_by_name["Subscribe"].input_type
        )
        request = request_class(after_cursor=after_cursor, lead_ids=self.lead_ids,
                              types=[t for t in self.types if OWNERS[_prefix(t)] == service])
        if service == "bookings":
            request.appointment_ids.extend(self.appointment_ids)  # type: ignore[attr-defined]
        return request


def _prefix(kind: str) -> str:
    return kind.split(".", 1)[0] + "."


def select(query: MultiMapping[str]) -> Selection:
    """The services and filters a query asks for; 400 naming the parameter if it cannot."""
    for key in query:
        if key not in QUERY_KEYS:
            raise GatewayError.bad_field(
                key, f"unknown parameter; use {', '.join(sorted(QUERY_KEYS))}",
                reason="INVALID_QUERY_PARAMETER")
    lead_ids = tuple(_ids(query, "lead_id"))
    appointment_ids = tuple(_ids(query, "appointment_id"))
    types = tuple(dict.fromkeys(
        part.strip() for value in query.getall("types", []) for part in value.split(",")
        if part.strip()
    ))
    for kind in types:
        if _prefix(kind) not in OWNERS or kind.endswith("."):
            raise GatewayError.bad_field(
                "types", f"unknown event type {kind!r}; types start with "
                + ", ".join(sorted(OWNERS)), reason="INVALID_QUERY_PARAMETER")
    services = set(ORDER)
    if appointment_ids:
        services &= {"bookings"}
    if types:
        services &= {OWNERS[_prefix(t)] for t in types}
    if not services:
        raise GatewayError.bad_field(
            "types", "no service has events of these types for appointments",
            reason="INVALID_QUERY_PARAMETER")
    return Selection(tuple(s for s in ORDER if s in services), lead_ids, appointment_ids, types)


def _ids(query: MultiMapping[str], key: str) -> list[str]:
    values = list(dict.fromkeys(query.getall(key, [])))
    for value in values:
        if not value or len(value) > 64:
            raise GatewayError.bad_field(key, "must be 1 to 64 characters",
                                         reason="INVALID_QUERY_PARAMETER")
    return values


def encode_id(cursors: Mapping[str, str]) -> str:
    raw = json.dumps({s: cursors[s] for s in ORDER if cursors.get(s)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_id(raw: str, source: str = "Last-Event-ID") -> dict[str, str]:
    """The cursors of a composite id; 400 naming `source` if it is not one of ours."""
    def refuse() -> GatewayError:
        return GatewayError.bad_field(
            source, "not an event id of this gateway; reconnect without it",
            reason="INVALID_LAST_EVENT_ID")

    if len(raw) > MAX_ID_LENGTH:
        raise refuse()
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise refuse() from None
    if not isinstance(value, dict) or not set(value) <= set(ORDER) or not all(
        isinstance(c, str) and 0 < len(c) <= MAX_CURSOR_LENGTH for c in value.values()
    ):
        raise refuse()
    return dict(value)


# -- what the upstream followers hand the writer ------------------------------------


@dataclass(frozen=True)
class Delivered:
    service: str
    event: Message


@dataclass(frozen=True)
class Reset:
    service: str
    status: status_pb2.Status


@dataclass(frozen=True)
class Failed:
    service: str
    error: grpc.aio.AioRpcError
    final: bool


Item = Delivered | Reset | Failed


class EventStreams:
    """Serves /v1/events; ends every open stream at shutdown."""

    def __init__(self, settings: Settings, upstreams: Upstreams, sessions: Sessions) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.sessions = sessions
        self.closing = asyncio.Event()
        self.open = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/events", self.serve, name="events", allow_head=False)]

    async def close(self) -> None:
        """Shutdown: every stream writes what it has and ends."""
        self.closing.set()

    async def serve(self, request: web.Request) -> web.StreamResponse:
        caller = self.sessions.caller(request)
        selection = select(request.query)
        last = request.headers.get("Last-Event-ID", "").strip()
        source = "Last-Event-ID"
        if not last and request.query.get("last_event_id"):
            last, source = request.query["last_event_id"].strip(), "last_event_id"
        cursors = decode_id(last, source) if last else {}
        metadata = metadata_for(request, caller.authorization)
        stream = _Stream(self, request, selection, cursors, metadata)
        return await stream.run()


class _Stream:
    """One browser's merged stream: a follower task per service, one writer (this)."""

    def __init__(self, owner: EventStreams, request: web.Request, selection: Selection,
                 cursors: dict[str, str], metadata: list[tuple[str, str]]) -> None:
        self.owner = owner
        self.request = request
        self.selection = selection
        self.cursors = cursors
        self.metadata = metadata
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=64)
        self.live = asyncio.Event()
        self.response: web.StreamResponse | None = None
        self.heartbeat = owner.settings.heartbeat_seconds
        self._getter: asyncio.Task[Item] | None = None
        self._waiting = set(selection.services)
        self._held: list[Reset] = []
        self._next_heartbeat = 0.0
        self._start_by = 0.0
        self._live_by = 0.0

    # -- the followers -----------------------------------------------------------

    async def follow(self, service: str) -> None:
        """Follow one service from its cursor, for as long as the browser listens."""
        cursor = self.cursors.get(service, "")
        attempt = 0
        reported = False
        while True:
            call = self.owner.upstreams.subscribe(
                service, self.selection.request(service, cursor), self.metadata)
            try:
                async for event in call:
                    await self.queue.put(Delivered(service, event))
                    cursor = event.cursor or cursor  # type: ignore[attr-defined]
                    if event.type == "bookmark":  # type: ignore[attr-defined]
                        attempt, reported = 0, False
                        if not self.live.is_set():
                            await self.live.wait()
                log.info("the %s stream ended; subscribing again", service)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.OUT_OF_RANGE:
                    await self.queue.put(Reset(service, from_rpc_error(error, service).status))
                    cursor = ""
                    continue
                final = error.code() in FINAL_CODES
                if final or not reported:
                    await self.queue.put(Failed(service, error, final))
                    reported = True
                if final:
                    return
                log.warning("the %s stream failed (%s); subscribing again", service,
                            error.code().name)
            finally:
                call.cancel()
            await asyncio.sleep(backoff(attempt, base=0.2, cap=5.0))
            attempt += 1

    # -- the writer --------------------------------------------------------------

    async def run(self) -> web.StreamResponse:
        followers = [asyncio.create_task(self.follow(s), name=f"sse-{s}")
                     for s in self.selection.services]
        closing = asyncio.create_task(self.owner.closing.wait())
        try:
            return await self._write(closing)
        finally:
            closing.cancel()
            if self._getter is not None:
                self._getter.cancel()
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, closing, return_exceptions=True)
            if self.response is not None:
                self.owner.open -= 1
                metrics.SSE_STREAMS.dec()

    async def _write(self, closing: asyncio.Task[Any]) -> web.StreamResponse:
        """Write what the followers hand over until the browser or the gateway goes."""
        now = time.monotonic()
        self._start_by = now + min(5.0, self.heartbeat)
        self._live_by = now + LIVE_WITHOUT_AFTER
        while True:
            if self._getter is None:
                self._getter = asyncio.create_task(self.queue.get())
            done, _ = await asyncio.wait({self._getter, closing},
                                         timeout=max(0.0, self._wake_at() - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                return await self._finish()
            ended = None
            if self._getter in done:
                item = self._getter.result()
                self._getter = None
                ended = await self._handle(item)
            if ended is None:
                ended = await self._on_time()
            if ended is not None:
                return ended

    def _wake_at(self) -> float:
        moments = [self._start_by if self.response is None else self._next_heartbeat]
        if not self.live.is_set():
            moments.append(self._live_by)
        return min(moments)

    async def _on_time(self) -> web.StreamResponse | None:
        """What is due now: headers, going live without a silent service, a heartbeat."""
        now = time.monotonic()
        if self.response is None and now >= self._start_by:
            # Headers go out by now even if an upstream is slow to go live.
            await self._start()
        if not self.live.is_set() and now >= self._live_by:
            return await self._go_live_without_the_silent()
        if self.response is not None and now >= self._next_heartbeat:
            # Heartbeats keep their beat however busy the stream is.
            self._next_heartbeat = now + self.heartbeat
            return None if await self._send(b": heartbeat\n\n") else self.response
        return None

    async def _go_live_without_the_silent(self) -> web.StreamResponse | None:
        """A service that cannot be reached must not hold back the others' events.

        Its cursor stays as it was in the composite id, and its follower keeps
        trying: once it answers, its events flow from that cursor on (from the
        head, for a browser that never had one of its cursors).
        """
        if self.response is None:
            await self._start()
        self.live.set()
        silent = sorted(self._waiting)
        log.warning("events are live without %s", ", ".join(silent))
        data = {"type": "bookmark", "cursor": "", "unavailable": silent}
        text = (f"event: bookmark\nid: {encode_id(self.cursors)}\nretry: {RECONNECT_MS}\n"
                f"data: {json.dumps(data, separators=(',', ':'))}\n\n")
        if not await self._send(text.encode()):
            return self._gone()
        return await self._flush_held()

    async def _handle(self, item: Item) -> web.StreamResponse | None:
        """Write one item; the response once the stream is over, else None."""
        if isinstance(item, Failed):
            return await self._failed(item)
        if isinstance(item, Reset):
            self.cursors.pop(item.service, None)
            if not self.live.is_set():
                self._held.append(item)
                return None
            return None if await self._reset(item) else self._gone()
        event: Any = item.event
        if event.cursor:
            self.cursors[item.service] = event.cursor
        self._waiting.discard(item.service)
        if self.live.is_set():
            return None if await self._event(item) else self._gone()
        # Before the merged stream is live only first bookmarks arrive.
        if self._waiting:
            return None
        if self.response is None:
            await self._start()
        self.live.set()
        if not await self._event(item, retry=True):
            return self._gone()
        return await self._flush_held()

    async def _flush_held(self) -> web.StreamResponse | None:
        for reset in self._held:
            if not await self._reset(reset):
                return self._gone()
        self._held.clear()
        return None

    async def _failed(self, item: Failed) -> web.StreamResponse | None:
        if not item.final:
            if self.response is None:
                await self._start()
            return None
        refused = from_rpc_error(item.error, item.service)
        if self.response is None:
            return response(refused)
        log.warning("the %s stream was refused (%s); ending the stream",
                    item.service, refused.reason)
        return await self._finish()

    def _gone(self) -> web.StreamResponse:
        assert self.response is not None
        return self.response

    async def _start(self) -> None:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(self.request)
        self.response = response
        self._next_heartbeat = time.monotonic() + self.heartbeat
        self.owner.open += 1
        metrics.SSE_STREAMS.inc()

    async def _send(self, data: bytes) -> bool:
        """Write to the browser; False once it has gone away."""
        assert self.response is not None
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _event(self, item: Delivered, *, retry: bool = False) -> bool:
        event: Any = item.event
        lines = [f"event: {event.type}", f"id: {encode_id(self.cursors)}"]
        if retry:
            lines.append(f"retry: {RECONNECT_MS}")
        lines.append(f"data: {json.dumps(to_json(event), separators=(',', ':'))}")
        return await self._send(("\n".join(lines) + "\n\n").encode())

    async def _reset(self, reset: Reset) -> bool:
        data = {"service": reset.service, "error": status_json(reset.status)}
        text = (f"event: reset\nid: {encode_id(self.cursors)}\n"
                f"data: {json.dumps(data, separators=(',', ':'))}\n\n")
        return await self._send(text.encode())

    async def _finish(self) -> web.StreamResponse:
        if self.response is None:
            return response(GatewayError(
                code_pb2.UNAVAILABLE, "GATEWAY_STOPPING", "the gateway is shutting down",
                retry_after=1).refusal)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.response.write_eof()
        return self.response

