"""The upstream side of `GET /v1/events`: one Subscribe per service per org, shared.

A `Feed` is one upstream Subscribe stream of one service for one org, opened
with the gateway's own token (principal `gateway`, role `service`) and
`x-crm-org: <org>` metadata, unfiltered, from the head. Every browser of that
org that follows that service reads it; the feed opens with the first such
browser and closes LINGER_SECONDS after the last one leaves.

Each event is turned into its SSE frame once: `Entry.head` (`event:` and the
start of `id:`) and `Entry.tail` (the event as JSON in `data:`), between which
a browser's composite id goes; browsers in the same place share that too (see
gateway.events). The feed keeps the latest RING_SIZE entries in a ring, and an
index from cursor to place, so a browser resuming from a cursor the ring still
reaches back to is served from memory; one it no longer reaches is caught up
by a private Subscribe with `after_cursor` (gateway.events), at most
CATCH_UPS_PER_SERVICE of them at once per service, which hands over to the
feed at the first cursor both have seen: no gap, no repeat.

An upstream stream that ends or fails is followed again from its last cursor,
with backoff, so the ring stays gap-free; one whose cursor the upstream no
longer knows (OUT_OF_RANGE) starts again from the head and every browser on it
is told `event: reset`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import status_pb2

from gateway import contracts, metrics
from gateway.errors import GatewayError, from_rpc_error
from gateway.json_mapping import to_json
from gateway.upstream import Upstreams
from services.shared.retry import backoff

if TYPE_CHECKING:
    from gateway.events import Browser

log = logging.getLogger("crm.gateway.events")

# Recent events a feed keeps for resuming browsers (per service per org).
RING_SIZE = 4096
# A browser further behind than this is caught up upstream rather than from the ring.
HANDOVER_WITHIN = 256
# How long a feed stays open after its last browser left (a reload comes back).
LINGER_SECONDS = 1.0
# Private catch-up streams open at once, per service (every org together).
CATCH_UPS_PER_SERVICE = 32


@dataclass(eq=False, slots=True)
class Entry:
    """One upstream event as browsers get it: its frame is head + id + tail."""

    seq: int
    cursor: str
    type: str
    lead_id: str
    appointment_id: str
    head: bytes
    tail: bytes

    def frame(self, event_id: str, *, retry: int | None = None) -> bytes:
        middle = event_id.encode() + (f"\nretry: {retry}".encode() if retry else b"")
        return self.head + middle + self.tail


def entry_of(seq: int, event: Any) -> Entry:
    """An upstream Event, encoded once."""
    data = json.dumps(to_json(event), separators=(",", ":")).encode()
    kind = str(event.type)
    return Entry(seq, str(event.cursor), kind, str(event.lead_id),
                 str(getattr(event, "appointment_id", "")),
                 b"event: " + kind.encode() + b"\nid: ", b"\ndata: " + data + b"\n\n")


# A message class made from a descriptor, called with its fields as keywords (the
# type of Message says nothing of its fields).
MessageClass = Callable[..., Message]


def event_class(service: str) -> MessageClass:
    return GetMessageClass(  # type: ignore[no-any-return]
        contracts.SERVICES[service].methods_by_name["Subscribe"].output_type)


def subscribe_request(service: str, after_cursor: str) -> Message:
    request_class: MessageClass = GetMessageClass(
        contracts.SERVICES[service].methods_by_name["Subscribe"].input_type)
    return request_class(after_cursor=after_cursor)


class Feed:
    """One service's upstream stream for one org, and its ring of recent entries."""

    def __init__(self, hub: Hub, org: str, service: str) -> None:
        self.hub = hub
        self.org = org
        self.service = service
        self.cursor = ""
        # True once the upstream sent its first bookmark: the feed has a place in the log.
        self.live = False
        self.seq = 0
        self.ring: deque[Entry] = deque()
        self.index: dict[str, int] = {}
        # The latest bookmark's cursor when no entry has it (the start, another
        # org's events passed by), and the place it stands for.
        self.mark: tuple[str, int] = ("", -1)
        self.members: set[Browser] = set()      # every browser following this service
        self.browsers: set[Browser] = set()     # those reading the feed itself
        self.waiting: set[Browser] = set()      # those waiting for it to go live
        self.awaiting: dict[str, set[Browser]] = {}  # catch-ups standing at a cursor
        self.closing: asyncio.TimerHandle | None = None
        self.metadata = [("authorization", f"Bearer {hub.token}"), ("x-crm-org", org)]
        self.task = asyncio.create_task(self._follow(), name=f"sse-feed-{service}")

    # -- what browsers ask ---------------------------------------------------------

    def reaches(self, cursor: str) -> int | None:
        """The place of `cursor` if the ring holds every entry after it, else None."""
        seq = self.index.get(cursor)
        if seq is None and cursor and cursor == self.mark[0]:
            seq = self.mark[1]
        if seq is None:
            return None
        first = self.ring[0].seq if self.ring else self.seq + 1
        return seq if seq >= first - 1 else None

    def after(self, seq: int) -> list[Entry]:
        if not self.ring:
            return []
        return list(islice(self.ring, max(0, seq + 1 - self.ring[0].seq), None))

    def await_at(self, cursor: str, browser: Browser) -> None:
        self.awaiting.setdefault(cursor, set()).add(browser)

    def stop_awaiting(self, cursor: str, browser: Browser) -> None:
        found = self.awaiting.get(cursor)
        if found is not None:
            found.discard(browser)
            if not found:
                del self.awaiting[cursor]

    # -- the upstream ------------------------------------------------------------------

    async def _follow(self) -> None:
        attempt = 0
        reported = False
        while True:
            try:
                call = self.hub.upstreams.subscribe(
                    self.service, subscribe_request(self.service, self.cursor), self.metadata)
            except GatewayError:
                return  # the gateway is shutting down
            try:
                async for event in call:
                    if event.type == "bookmark":  # type: ignore[attr-defined]
                        attempt, reported = 0, False
                        self._bookmark(event)
                    else:
                        self._event(event)
                log.info("the shared %s stream ended; subscribing again", self.service)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.OUT_OF_RANGE:
                    self._restart(from_rpc_error(error, self.service).status)
                    continue
                if not reported:
                    log.warning("the shared %s stream failed (%s); subscribing again",
                                self.service, error.code().name,
                                extra={"service": self.service, "org": self.org})
                    reported = True
            finally:
                call.cancel()
            await asyncio.sleep(backoff(attempt, base=0.2, cap=5.0))
            attempt += 1

    def _bookmark(self, event: Any) -> None:
        cursor = str(event.cursor)
        self.cursor = cursor
        if cursor not in self.index:
            self.mark = (cursor, self.seq)
        if not self.live:
            self.live = True
            waiting, self.waiting = self.waiting, set()
            for browser in waiting:
                browser.feed_live(self.service)
        else:
            # A heartbeat (or a resumed stream's first bookmark): it advances every id.
            self._dispatch(entry_of(self.seq, event), bookmark=True)
        self._hand_over(cursor)

    def _event(self, event: Any) -> None:
        self.seq += 1
        entry = entry_of(self.seq, event)
        self.ring.append(entry)
        self.index[entry.cursor] = entry.seq
        while len(self.ring) > RING_SIZE:
            old = self.ring.popleft()
            if self.index.get(old.cursor) == old.seq:
                del self.index[old.cursor]
        self.cursor = entry.cursor
        self._dispatch(entry, bookmark=False)
        self._hand_over(entry.cursor)

    def _dispatch(self, entry: Entry, *, bookmark: bool) -> None:
        frames: dict[tuple[str, ...], bytes] = {}
        for browser in self.browsers:
            browser.deliver(self.service, entry, frames, bookmark=bookmark)

    def _hand_over(self, cursor: str) -> None:
        """Catch-ups standing where the feed now stands join it."""
        found = self.awaiting.pop(cursor, None)
        for browser in found or ():
            browser.hand_over(self.service, cursor)

    def _restart(self, status: status_pb2.Status) -> None:
        log.warning("the shared %s stream's cursor is no longer known upstream; following "
                    "from the head", self.service, extra={"service": self.service})
        self.cursor = ""
        self.live = False
        self.ring.clear()
        self.index.clear()
        self.mark = ("", -1)
        for browser in list(self.browsers):
            browser.feed_reset(self.service, status)


class Hub:
    """Every feed of this gateway process, by (org, service)."""

    def __init__(self, upstreams: Upstreams, token: str) -> None:
        self.upstreams = upstreams
        self.token = token
        self.feeds: dict[tuple[str, str], Feed] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    def slots(self, service: str) -> asyncio.Semaphore:
        found = self._slots.get(service)
        if found is None:
            found = self._slots[service] = asyncio.Semaphore(CATCH_UPS_PER_SERVICE)
        return found

    def join(self, org: str, service: str, browser: Browser) -> Feed:
        feed = self.feeds.get((org, service))
        if feed is None:
            feed = self.feeds[(org, service)] = Feed(self, org, service)
            metrics.SSE_UPSTREAMS.set(len(self.feeds))
        if feed.closing is not None:
            feed.closing.cancel()
            feed.closing = None
        feed.members.add(browser)
        return feed

    def leave(self, feed: Feed, browser: Browser, awaiting: Iterable[str] = ()) -> None:
        feed.members.discard(browser)
        feed.browsers.discard(browser)
        feed.waiting.discard(browser)
        for cursor in awaiting:
            feed.stop_awaiting(cursor, browser)
        if not feed.members and feed.closing is None:
            feed.closing = asyncio.get_running_loop().call_later(
                LINGER_SECONDS, self._close_if_unused, feed)

    def _close_if_unused(self, feed: Feed) -> None:
        feed.closing = None
        if feed.members or self.feeds.get((feed.org, feed.service)) is not feed:
            return
        del self.feeds[(feed.org, feed.service)]
        metrics.SSE_UPSTREAMS.set(len(self.feeds))
        feed.task.cancel()

    async def close(self) -> None:
        feeds = list(self.feeds.values())
        self.feeds.clear()
        metrics.SSE_UPSTREAMS.set(0)
        for feed in feeds:
            if feed.closing is not None:
                feed.closing.cancel()
            feed.task.cancel()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError):
                await feed.task

    @property
    def upstream_streams(self) -> int:
        return len(self.feeds)
