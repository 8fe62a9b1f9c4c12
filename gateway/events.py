"""`GET /v1/events`: the three services' events, merged, as Server-Sent Events.

Query: `lead_id` (repeatable) → events of these leads; `appointment_id`
(repeatable) → bookings' events of these appointments, and then only bookings
is followed (no other service has appointment events); `types` (repeatable or
comma-separated) → only these types, and only the services owning a type's
prefix are followed: `lead.` leads, `appointment.` bookings, `message.`,
`recipient.`, `provider.`, `template.` messaging. `last_event_id` stands in for
the `Last-Event-ID` header for clients that cannot set headers. Bad filters are
400 naming the parameter (an unknown type: the owning service's domain and
field, as its Subscribe says).

Each message:

    event: lead.status_changed              the upstream event's type
    id: eyJsZWFkcyI6IkFCQyJ9                the composite id (below)
    data: {"cursor": …, "type": …, …}       the upstream Event as JSON

The composite id is base64url (unpadded) of the JSON object
`{"leads": <cursor>, "bookings": <cursor>, "messaging": <cursor>}`: the latest
cursor of every service stream *as delivered to this browser*. A reconnect
with it as `Last-Event-ID` resumes every service after its cursor, so every
event written while the browser was away arrives exactly once. Cursors of
services the filters leave out are carried along unchanged.

How it is served (gateway.hub): the browsers of one org share one upstream
Subscribe per service per gateway process, opened with the gateway's own token
and `x-crm-org`; the gateway applies each browser's filters itself. The
browser's own credentials are checked here (its token, or its session's) and
its org comes from them. A resume is served from the feed's ring of recent
events when it reaches back to the browser's cursor, else by a private
catch-up Subscribe from that cursor that hands over to the shared feed at the
first cursor both have seen. The browser cannot tell these apart but by speed.

- The first message is an `event: bookmark` (with `retry:`), sent once every
  followed service has a place for this browser: from then on the page misses
  nothing. A service that has none within LIVE_WITHOUT_AFTER seconds does not
  hold the others back: the stream goes live without it, with a bookmark
  whose data names it (`{"type": "bookmark", "unavailable": [...]}`), and its
  events join once it answers, from its cursor in the id (from the head, for a
  browser that had none). Upstream bookmarks (heartbeats) are forwarded as
  `event: bookmark`; they advance the id.
- `: heartbeat` comments go out every CRM_SSE_HEARTBEAT_SECONDS (15).
- A cursor past the upstream's retention (OUT_OF_RANGE) gives `event: reset` —
  data `{"service": …, "error": <google.rpc.Status>}` — telling the page to
  reload its state; that service continues from the head.
- Every browser has a bounded buffer (CRM_SSE_BUFFER_BYTES, 256 KiB) of frames
  not yet taken by its connection. One that does not read falls behind: once
  its buffer is full it is cut off (its connection closed), never slowing the
  others nor growing memory; its EventSource reconnects with the id of the
  last event it read and resumes exactly there.
- A refusal before the stream starts (bad filters, bad credentials, a
  malformed Last-Event-ID: 400, too many streams) is an ordinary HTTP error.
- When the browser goes away, or the gateway shuts down, its catch-up calls
  are cancelled; a feed no browser reads closes a second later.
- A principal holds at most CRM_SSE_MAX_STREAMS_PER_PRINCIPAL streams (20) and
  the gateway at most CRM_SSE_MAX_STREAMS (1000): one more is 429
  RESOURCE_EXHAUSTED / TOO_MANY_STREAMS with Retry-After; open ones go on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from crm.common.v1 import common_pb2
from google.rpc import code_pb2, status_pb2
from multidict import MultiMapping

from gateway import metrics
from gateway.bodies import loads
from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    Refused,
    from_domain_error,
    from_rpc_error,
    refusal,
    status_json,
)
from gateway.hub import (
    HANDOVER_WITHIN,
    Entry,
    Feed,
    Hub,
    entry_of,
    event_class,
    subscribe_request,
)
from gateway.json_mapping import to_json
from gateway.sessions import Caller, Sessions
from gateway.upstream import Upstreams
from services.shared import auth
from services.shared import errors as domain_errors
from services.shared.limits import StreamLimits
from services.shared.protos import now
from services.shared.retry import backoff
from services.shared.status import to_status
from services.shared.validation import identifier

log = logging.getLogger("crm.gateway.events")

ORDER = ("leads", "bookings", "messaging")
OWNERS = {"lead.": "leads", "appointment.": "bookings", "message.": "messaging",
          "recipient.": "messaging", "provider.": "messaging", "template.": "messaging"}
# Every service's event types (the services' own EVENT_TYPES; a unit test keeps them equal).
EVENT_TYPES = {
    "leads": ("lead.created", "lead.status_changed"),
    "bookings": ("appointment.created", "appointment.confirmed", "appointment.cancelled",
                 "appointment.completed"),
    "messaging": ("message.created", "message.status_changed", "recipient.opted_out",
                  "recipient.opted_in", "provider.state_changed", "template.saved",
                  "template.deleted"),
}
QUERY_KEYS = {"lead_id", "appointment_id", "types", "last_event_id"}
MAX_FILTER_IDS = 100
MAX_ID_LENGTH = 4096
MAX_CURSOR_LENGTH = 512
RECONNECT_MS = 2000
# How long a stream waits for every service before going live without some.
LIVE_WITHOUT_AFTER = 3.0
HEARTBEAT = b": heartbeat\n\n"


@dataclass(frozen=True)
class Selection:
    """What one browser follows: which services, with which filters."""

    services: tuple[str, ...]
    lead_ids: frozenset[str] = frozenset()
    appointment_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, service: str, entry: Entry) -> bool:
        return ((not self.types or entry.type in self.types)
                and (not self.lead_ids or entry.lead_id in self.lead_ids)
                and (service != "bookings" or not self.appointment_ids
                     or entry.appointment_id in self.appointment_ids))


def _prefix(kind: str) -> str:
    return kind.split(".", 1)[0] + "."


_SELECTIONS: dict[str, Selection] = {}
SELECTIONS_KEPT = 10_000


def selection_of(request: web.Request) -> Selection:
    """`select` of the request's query, one object for every browser asking the same."""
    raw = request.query_string
    found = _SELECTIONS.get(raw)
    if found is None:
        found = select(request.query)
        if len(_SELECTIONS) >= SELECTIONS_KEPT:
            _SELECTIONS.clear()
        _SELECTIONS[raw] = found
    return found


def select(query: MultiMapping[str]) -> Selection:
    """The services and filters a query asks for; 400 naming the parameter if it cannot."""
    for key in query:
        if key not in QUERY_KEYS:
            raise GatewayError.bad_field(
                key, f"unknown parameter; use {', '.join(sorted(QUERY_KEYS))}",
                reason="INVALID_QUERY_PARAMETER")
    lead_ids = _ids(query, "lead_id")
    appointment_ids = _ids(query, "appointment_id")
    types = list(dict.fromkeys(
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
    followed = tuple(s for s in ORDER if s in services)
    for service in followed:
        # What the service's Subscribe would refuse, refused in its name.
        own = [t for t in types if OWNERS[_prefix(t)] == service]
        for i, kind in enumerate(own):
            if kind not in EVENT_TYPES[service]:
                raise Refused(refusal(to_status(domain_errors.InvalidArgument.field(
                    f"types[{i}]", f"unknown event type {kind!r}; known: "
                    + ", ".join(sorted(EVENT_TYPES[service]))), service)))
    return Selection(followed, frozenset(lead_ids), frozenset(appointment_ids),
                     frozenset(types))


def _ids(query: MultiMapping[str], key: str) -> list[str]:
    values = list(dict.fromkeys(query.getall(key, [])))
    if len(values) > MAX_FILTER_IDS:
        raise GatewayError.bad_field(key, f"at most {MAX_FILTER_IDS} ids",
                                     reason="INVALID_QUERY_PARAMETER")
    for value in values:
        try:
            identifier(value, key)
        except domain_errors.InvalidArgument:
            raise GatewayError.bad_field(
                key, "must be 1 to 64 printable characters",
                reason="INVALID_QUERY_PARAMETER") from None
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
        value = loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise refuse() from None
    if not isinstance(value, dict) or not set(value) <= set(ORDER) or not all(
        isinstance(c, str) and 0 < len(c) <= MAX_CURSOR_LENGTH for c in value.values()
    ):
        raise refuse()
    return dict(value)


_BOOKMARKS: dict[str, dict[str, Any]] = {}


def bookmark_json(service: str, cursor: str, head: str) -> dict[str, Any]:
    """A bookmark Event of `service` as JSON, as to_json writes it (every field there),
    from a template made once: thousands of browsers open at once."""
    template = _BOOKMARKS.get(service)
    if template is None:
        template = _BOOKMARKS[service] = to_json(event_class(service)(
            cursor="-", type="bookmark", occurred_at=now(),
            bookmark=common_pb2.Bookmark(head_cursor="-")))
    return {**template, "cursor": cursor, "occurredAt": now().ToJsonString(),
            "bookmark": {**template["bookmark"], "headCursor": head}}


class EventStreams:
    """Serves /v1/events; ends every open stream at shutdown."""

    def __init__(self, settings: Settings, upstreams: Upstreams, sessions: Sessions) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.sessions = sessions
        self.closing = False
        self.open = 0
        self.cut_off = 0
        self.browsers: set[Browser] = set()
        self.hub = Hub(upstreams, settings.service_token)
        self.buffer_bytes = settings.sse_buffer_bytes
        self.limits = StreamLimits(
            per_principal=settings.sse_max_per_principal, total=settings.sse_max_streams,
            what="event streams", per_principal_variable="CRM_SSE_MAX_STREAMS_PER_PRINCIPAL",
            total_variable="CRM_SSE_MAX_STREAMS")
        self._beat: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/events", self.serve, name="events", allow_head=False)]

    async def close(self) -> None:
        """Shutdown: every stream writes what it has and ends; every upstream call ends."""
        self.closing = True
        for browser in list(self.browsers):
            browser.end()
        if self._beat is not None:
            self._beat.cancel()
        await self.hub.close()

    def who(self, caller: Caller) -> auth.Caller:
        """The browser's own identity (a session's, or its token's or JWT's, checked here
        as the services would check it): who it is, in which org."""
        if caller.identity is not None:
            return caller.identity
        try:
            return self.sessions.tokens.caller(caller.authorization)
        except domain_errors.Unauthenticated as error:
            raise Refused(from_domain_error(error)) from None

    async def serve(self, request: web.Request) -> web.StreamResponse:
        who = self.who(await self.sessions.caller(request))
        selection = selection_of(request)
        last = request.headers.get("Last-Event-ID", "").strip()
        source = "Last-Event-ID"
        if not last and request.query.get("last_event_id"):
            last, source = request.query["last_event_id"].strip(), "last_event_id"
        cursors = decode_id(last, source) if last else {}
        if self.closing:
            raise GatewayError(code_pb2.UNAVAILABLE, "GATEWAY_STOPPING",
                               "the gateway is shutting down", retry_after=1)
        if not self.hub.token:
            raise GatewayError(
                code_pb2.UNAVAILABLE, "EVENTS_NOT_CONFIGURED",
                "the gateway has no token of its own to subscribe with: add a "
                "`gateway:<token>` entry to CRM_API_TOKENS or set CRM_SERVICE_TOKEN")
        # hold/release rather than `admit`: no context manager's objects for the
        # stream's whole life.
        self.limits.hold(who.principal)
        try:
            browser = Browser(self, request, selection, cursors, who.org)
            del cursors  # the browser's now; it swaps an emptied dict for a small one
            return await browser.run()
        finally:
            self.limits.release(who.principal)

    def _heartbeats(self) -> None:
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._beating(), name="sse-heartbeats")

    async def _beating(self) -> None:
        """One clock for every stream: `: heartbeat` to each, every interval."""
        while self.browsers:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            for browser in list(self.browsers):
                browser.push(HEARTBEAT)


class Browser:
    """One browser's stream: its place in every followed service, its buffer, its writer.

    For each followed service the browser either reads the shared feed (its
    cursor is then the feed's), or has a cursor of its own: carried along
    (a service it does not follow), waiting for the feed to go live, or being
    caught up by a private stream.
    """

    # Thousands are held open at once: no per-instance __dict__.
    __slots__ = (
        "_drained",
        "_live_timer",
        "_wake",
        "_went_live",
        "awaiting",
        "buffer",
        "catching",
        "cursors",
        "cut",
        "ended",
        "feeds",
        "held",
        "live",
        "on_feed",
        "org",
        "owner",
        "pending",
        "placed",
        "request",
        "selection",
        "size",
    )

    def __init__(self, owner: EventStreams, request: web.Request, selection: Selection,
                 cursors: dict[str, str], org: str) -> None:
        self.owner = owner
        self.request = request
        self.selection = selection
        self.cursors = cursors
        self.org = org
        self.feeds: dict[str, Feed] = {}
        # The services read from the feed (a tuple: at most three, and a set costs 216 B).
        self.on_feed: tuple[str, ...] = ()
        # Not yet placed: the first bookmark waits (once live, the shared empty frozenset).
        self.pending: set[str] | frozenset[str] = set(selection.services)
        self.placed: list[str] = []              # placed before going live: join then
        self.live = False
        self.buffer: list[bytes] = []
        self.size = 0
        self.ended = False
        self.cut = False
        self.held: list[tuple[str, status_pb2.Status]] = []
        self.catching: dict[str, asyncio.Task[None]] = {}
        self.awaiting: dict[str, str] = {}
        self._wake: asyncio.Future[None] | None = None
        self._went_live: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._live_timer: asyncio.TimerHandle | None = None

    # -- the composite id ------------------------------------------------------------

    def key(self) -> tuple[str, ...]:
        return tuple(self.feeds[s].cursor if s in self.on_feed else self.cursors.get(s, "")
                     for s in ORDER)

    def event_id(self) -> str:
        return encode_id(dict(zip(ORDER, self.key(), strict=True)))

    # -- the buffer ------------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        if self.ended:
            return
        self.buffer.append(frame)
        self.size += len(frame)
        if self.size > self.owner.buffer_bytes:
            self._cut_off()
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _cut_off(self) -> None:
        """A browser that does not read: drop what it has not taken and close its connection."""
        self.cut = True
        self.owner.cut_off += 1
        metrics.SSE_CUT_OFF.inc()
        log.warning("a browser that does not read was cut off; it resumes by its event id",
                    extra={"peer": self.request.remote or ""})
        self.buffer.clear()
        self.size = 0
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.end()

    def end(self) -> None:
        self.ended = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- from the feeds ----------------------------------------------------------------

    def deliver(self, service: str, entry: Entry, frames: dict[tuple[str, ...], bytes],
                *, bookmark: bool) -> None:
        """A feed's entry, written once per place in the logs for every browser there."""
        if not bookmark and not self.selection.matches(service, entry):
            return
        key = self.key()
        frame = frames.get(key)
        if frame is None:
            frame = frames[key] = entry.frame(encode_id(dict(zip(ORDER, key, strict=True))))
        self.push(frame)

    def feed_live(self, service: str) -> None:
        self._place(service)

    def feed_reset(self, service: str, status: status_pb2.Status) -> None:
        self._reset(service, status)

    def hand_over(self, service: str, cursor: str) -> None:
        """The feed reached where this browser's catch-up stands: read the feed from here."""
        self.awaiting.pop(service, None)
        task = self.catching.pop(service, None)
        if task is not None:
            task.cancel()
        self.cursors[service] = cursor
        self._join(service)

    # -- placing the browser in each service ---------------------------------------

    def _place(self, service: str) -> None:
        """Decide where this browser reads `service` from, once its feed is live."""
        feed = self.feeds[service]
        if not feed.live:
            feed.waiting.add(self)
            return
        cursor = self.cursors.get(service)
        if cursor is None:
            self.cursors[service] = feed.cursor   # from the head
        else:
            seq = feed.reaches(cursor)
            if seq is None or feed.seq - seq > HANDOVER_WITHIN:
                self._catch_up(service, cursor)
                return
        self._placed(service)

    def _placed(self, service: str) -> None:
        if self.live:
            self._join(service)
            return
        self.pending.discard(service)  # type: ignore[union-attr]  # a set until live
        self.placed.append(service)
        if not self.pending:
            self._go_live([])

    def _join(self, service: str) -> None:
        """From the browser's own cursor onto the feed, or a catch-up if it cannot."""
        if not self._joined(service):
            self._catch_up(service, self.cursors[service])

    def _joined(self, service: str) -> bool:
        """Onto the feed from the browser's own cursor, the ring's entries after it
        first; False (nothing done) if the ring no longer reaches back to it, or what
        it holds after it would not fit in half the browser's buffer."""
        feed = self.feeds[service]
        cursor = self.cursors[service]
        seq = feed.reaches(cursor)
        if seq is None:
            return False
        entries = [e for e in feed.after(seq) if self.selection.matches(service, e)]
        if sum(len(e.tail) + 256 for e in entries) > self.owner.buffer_bytes // 2:
            return False
        for entry in entries:
            self.cursors[service] = entry.cursor
            self.push(entry.frame(self.event_id()))
        del self.cursors[service]
        if not self.cursors:
            self.cursors = {}  # a dict keeps its table when emptied
        if service not in self.on_feed:
            self.on_feed = (*self.on_feed, service)
        feed.browsers.add(self)
        return True

    def _go_live(self, unavailable: list[str]) -> None:
        self.live = True
        self.pending = frozenset()  # never read once live
        if self._live_timer is not None:
            self._live_timer.cancel()
            self._live_timer = None
        event_id = self.event_id()
        if unavailable:
            log.warning("events are live without %s", ", ".join(unavailable))
            data = {"type": "bookmark", "cursor": "", "unavailable": unavailable}
        else:
            service = self.placed[-1]
            cursor = self.cursors.get(service, "")
            data = bookmark_json(service, cursor, self.feeds[service].cursor or cursor)
        self.push(f"event: bookmark\nid: {event_id}\nretry: {RECONNECT_MS}\n"
                  f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
        placed, self.placed = self.placed, []
        for service in placed:
            if service not in self.catching:
                self._join(service)
        held, self.held = self.held, []
        for service, status in held:
            self._push_reset(service, status)
        if self._went_live is not None and not self._went_live.done():
            self._went_live.set_result(None)

    def _live_without(self) -> None:
        if not self.live and not self.ended:
            self._go_live(sorted(self.pending))

    def _reset(self, service: str, status: status_pb2.Status) -> None:
        """The browser's cursor of `service` is past retention: from the head, and say so."""
        self.cursors.pop(service, None)
        self.on_feed = tuple(s for s in self.on_feed if s != service)
        feed = self.feeds[service]
        feed.browsers.discard(self)
        if self.live:
            self._place(service)
            self._push_reset(service, status)
        else:
            self.held.append((service, status))
            self._place(service)

    def _push_reset(self, service: str, status: status_pb2.Status) -> None:
        data = {"service": service, "error": status_json(status)}
        self.push(f"event: reset\nid: {self.event_id()}\n"
                  f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

    # -- catching up -----------------------------------------------------------------

    def _catch_up(self, service: str, cursor: str) -> None:
        self.cursors[service] = cursor
        self.catching[service] = asyncio.create_task(
            self._catching_up(service, cursor), name=f"sse-catch-up-{service}")

    async def _catching_up(self, service: str, cursor: str) -> None:
        """A private stream from `cursor` until it meets the feed."""
        feed = self.feeds[service]
        attempt = 0
        async with self.owner.hub.slots(service):
            while True:
                call = self.owner.upstreams.subscribe(
                    service, subscribe_request(service, cursor), feed.metadata)
                try:
                    async for event in call:
                        cursor = str(event.cursor)  # type: ignore[attr-defined]
                        if event.type == "bookmark":  # type: ignore[attr-defined]
                            attempt = 0
                            self.cursors[service] = cursor
                            if service in self.pending and not self.live:
                                self._placed(service)
                            if not self.live:
                                await self._live()
                        else:
                            entry = entry_of(0, event) if self._wants(service, event) else None
                            self.cursors[service] = cursor
                            if entry is not None:
                                self.push(entry.frame(self.event_id()))
                                if self.size > self.owner.buffer_bytes // 2:
                                    await self._room()
                        if self._meets(service, feed, cursor):
                            return
                except grpc.aio.AioRpcError as error:
                    if error.code() is grpc.StatusCode.OUT_OF_RANGE:
                        self.catching.pop(service, None)
                        self._unawait(service, feed)
                        self._reset(service, from_rpc_error(error, service).status)
                        return
                    log.warning("a catch-up of %s failed (%s); subscribing again", service,
                                error.code().name)
                finally:
                    call.cancel()
                await asyncio.sleep(backoff(attempt, base=0.2, cap=5.0))
                attempt += 1

    def _wants(self, service: str, event: Any) -> bool:
        return ((not self.selection.types or event.type in self.selection.types)
                and (not self.selection.lead_ids or event.lead_id in self.selection.lead_ids)
                and (service != "bookings" or not self.selection.appointment_ids
                     or event.appointment_id in self.selection.appointment_ids))

    def _meets(self, service: str, feed: Feed, cursor: str) -> bool:
        """Hand over to the feed if it holds everything after `cursor`; else wait there."""
        self._unawait(service, feed)
        if feed.live and self.live and self._joined(service):
            self.catching.pop(service, None)
            return True
        self.awaiting[service] = cursor
        feed.await_at(cursor, self)
        return False

    def _unawait(self, service: str, feed: Feed) -> None:
        standing = self.awaiting.pop(service, None)
        if standing is not None:
            feed.stop_awaiting(standing, self)

    async def _room(self) -> None:
        """A private stream waits for its browser to take what it has (the shared
        one never does: a browser that does not keep up with it is cut off)."""
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    async def _live(self) -> None:
        if self._went_live is None:
            self._went_live = asyncio.get_running_loop().create_future()
        await self._went_live

    # -- the writer --------------------------------------------------------------------

    async def run(self) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(self.request)
        # The head is sent (serialized by prepare): its headers, the security headers
        # among them, would otherwise be held for the stream's whole life, ~3 KiB a
        # browser.
        response.headers.clear()
        owner = self.owner
        owner.open += 1
        metrics.SSE_STREAMS.inc()
        owner.browsers.add(self)
        owner._heartbeats()
        try:
            for service in self.selection.services:
                self.feeds[service] = owner.hub.join(self.org, service, self)
            self._live_timer = asyncio.get_running_loop().call_later(
                LIVE_WITHOUT_AFTER, self._live_without)
            for service in self.selection.services:
                if not self.ended:
                    self._place(service)
            # The writer, here rather than in a coroutine of its own: one frame fewer
            # held by every idle browser.
            loop = asyncio.get_running_loop()
            while True:
                if self.buffer:
                    data = self.buffer[0] if len(self.buffer) == 1 else b"".join(self.buffer)
                    self.buffer.clear()
                    self.size = 0
                    try:
                        await response.write(data)
                    except (ConnectionError, RuntimeError):
                        break  # the browser went away, or was cut off
                    del data  # not held while idle
                    if self._drained is not None and not self._drained.done():
                        self._drained.set_result(None)
                    continue
                if self.ended:
                    if not self.cut:
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await response.write_eof()
                    break
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
        finally:
            self._leave()
        return response

    def _leave(self) -> None:
        """The stream ended: let go of the feeds, timers and catch-ups."""
        owner = self.owner
        self.ended = True
        owner.open -= 1
        metrics.SSE_STREAMS.dec()
        owner.browsers.discard(self)
        if self._live_timer is not None:
            self._live_timer.cancel()
        for task in self.catching.values():
            task.cancel()
        for service, feed in self.feeds.items():
            owner.hub.leave(feed, self, [c for s, c in self.awaiting.items() if s == service])
        for waiter in (self._went_live, self._drained):
            if waiter is not None and not waiter.done():
                waiter.cancel()

