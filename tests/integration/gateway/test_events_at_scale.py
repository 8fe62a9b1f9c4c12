"""GET /v1/events at scale: shared upstream streams, resumes, slow browsers."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from crm.leads.v1 import leads_pb2
from google.protobuf.message import Message

from gateway import events
from gateway.app import EVENTS, RunningGateway
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import (
    FakeUpstream,
    SseReader,
    create_lead,
    new_key,
    request,
)
from tests.integration.gateway.test_events import event, listen
from tests.support.servers import TOKENS, wait_until

PATH = ("LEAD_STATUS_CONTACTED", "LEAD_STATUS_QUALIFIED", "LEAD_STATUS_PROPOSAL_SENT",
        "LEAD_STATUS_NEGOTIATING", "LEAD_STATUS_WON")


def test_the_gateway_knows_every_services_event_types() -> None:
    from services.bookings import messages as bookings
    from services.leads import messages as leads
    from services.messaging import messages as messaging

    assert {s: set(t) for s, t in events.EVENT_TYPES.items()} == {
        "leads": set(leads.EVENT_TYPES), "bookings": set(bookings.EVENT_TYPES),
        "messaging": set(messaging.EVENT_TYPES)}
    for types in events.EVENT_TYPES.values():
        for kind in types:
            assert events.OWNERS[events._prefix(kind)] in events.EVENT_TYPES


@dataclass
class Writes:
    """Changes made one after another, in commit order: (event type, lead id)."""

    api: aiohttp.ClientSession
    log: list[tuple[str, str]] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)

    async def create(self) -> None:
        lead = await create_lead(self.api, name=f"Scale {len(self.steps)}")
        self.steps[lead["leadId"]] = 0
        self.log.append(("lead.created", lead["leadId"]))

    async def move(self) -> None:
        lead_id = min(self.steps, key=lambda k: (self.steps[k], k))
        status = PATH[self.steps[lead_id]]
        answer = await request(self.api, "POST", f"/v1/leads/{lead_id}:updateStatus",
                               json_body={"status": status}, key=new_key())
        assert answer.status == 200, answer.body
        self.steps[lead_id] += 1
        self.log.append(("lead.status_changed", lead_id))

    async def some(self, count: int) -> None:
        for i in range(count):
            await (self.create() if i % 3 == 0 else self.move())


@dataclass
class Page:
    """One browser: its filters, where it joined the log, and everything it received."""

    query: str
    types: set[str]
    lead_ids: set[str]
    joined_at: int = 0
    got: list[tuple[str, str]] = field(default_factory=list)
    last_id: str | None = None
    resets: int = 0
    reader: asyncio.Task[None] | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)

    def expected(self, log: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(kind, lead) for kind, lead in log[self.joined_at:]
                if (not self.types or kind in self.types)
                and (not self.lead_ids or lead in self.lead_ids)]

    async def read(self, session: aiohttp.ClientSession) -> None:
        """Read until the stream ends, as an EventSource would (its last id kept)."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with listen(session, self.query, headers) as stream:
            stream.last_id = self.last_id
            while (message := await stream.next(within=60)) is not None:
                self.last_id = stream.last_id
                if message.event == "bookmark":
                    self.live.set()
                elif message.event == "reset":
                    self.resets += 1
                else:
                    self.got.append((message.event, message.data["leadId"]))


async def test_200_browsers_resume_after_a_gateway_restart_each_with_exactly_its_events(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    env = {"CRM_LEADS_TARGET": leads_server.target, "CRM_SSE_MAX_STREAMS_PER_PRINCIPAL": "1000"}
    feed = leads_server.runtime.storage.feed
    first = await start_gateway(**env)
    # Changes go through a gateway of their own, which stays up.
    writes = Writes(client(await start_gateway(**env)))
    for _ in range(6):
        await writes.create()
    ids = list(writes.steps)
    # One page that sees everything tells when a change has gone through the feed,
    # so that every page joins the log at a known place.
    watcher = Page(events_query(), set(), set())
    sessions = [client(first, connector=aiohttp.TCPConnector(limit=0))]
    watcher.reader = asyncio.create_task(watcher.read(sessions[0]))
    await watcher.live.wait()
    watcher.joined_at = len(writes.log)

    pages: list[Page] = []
    for wave in range(4):
        for i in range(50):
            n = wave * 50 + i
            chosen = {ids[n % 6], ids[(n * 5 + 1) % 6]} if n % 4 in (2, 3) else set()
            kinds = [set(), {"lead.status_changed"}, set(), {"lead.created", "lead.status_changed"},
                     {"lead.created"}][n % 5]
            page = Page(events_query(kinds, chosen), kinds, chosen, joined_at=len(writes.log))
            page.reader = asyncio.create_task(page.read(sessions[0]))
            pages.append(page)
        await asyncio.gather(*(p.live.wait() for p in pages[-50:]))
        await writes.some(7)
        await wait_until(lambda: len(watcher.got) == len(watcher.expected(writes.log)),
                         within=20)
    assert feed.subscribers == 1  # 201 browsers, one upstream stream
    assert first.app[EVENTS].hub.upstream_streams == 1

    # The gateway restarts; changes are made while it is down and while pages resume.
    await first.stop()
    await asyncio.gather(*(p.reader for p in [watcher, *pages] if p.reader))
    await writes.some(8)
    second = await start_gateway(**env)
    session = client(second, connector=aiohttp.TCPConnector(limit=0))
    for page in [watcher, *pages]:
        page.reader = asyncio.create_task(page.read(session))
    await writes.some(8)

    def done() -> bool:
        return all(len(p.got) >= len(p.expected(writes.log)) for p in [watcher, *pages])

    await wait_until(done, within=60)
    # Every catch-up has handed over to the one shared stream by now.
    await wait_until(lambda: feed.subscribers == 1, within=20)
    for n, page in enumerate([watcher, *pages]):
        assert page.got == page.expected(writes.log), f"page {n}: {page.query}"
        assert page.resets == 0
    assert {len(p.got) for p in pages} != {0}
    await second.stop()
    await asyncio.gather(*(p.reader for p in [watcher, *pages] if p.reader))


def events_query(types: set[str] | None = None, lead_ids: set[str] | None = None) -> str:
    parts = [f"lead_id={lead}" for lead in sorted(lead_ids or ())]
    parts.append("types=" + ",".join(sorted(types or {"lead.created", "lead.status_changed"})))
    return "?" + "&".join(parts)


async def test_browsers_share_one_upstream_stream_and_a_resume_the_ring_reaches_opens_none(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target)
    api = client(gateway)
    feed = leads_server.runtime.storage.feed
    lead = await create_lead(api, name="Shared")
    async with listen(api, "?types=lead.created") as created, \
            listen(api, f"?lead_id={lead['leadId']}") as mine:
        assert (await created.next()) is not None and (await mine.next()) is not None
        async with listen(api, "?types=lead.status_changed") as moves:
            assert await moves.next() is not None
            assert feed.subscribers == 1
            other = await create_lead(api, name="Other")
            answer = await request(api, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                                   json_body={"status": "LEAD_STATUS_CONTACTED"}, key=new_key())
            assert answer.status == 200
            assert [m.event for m in await moves.events(1)] == ["lead.status_changed"]
            last_id = moves.last_id
        (first,) = await created.events(1)
        assert first.data["leadId"] == other["leadId"]
        assert [m.event for m in await mine.events(1)] == ["lead.status_changed"]
        # While other pages hold the feed open, its ring serves a resume.
        await create_lead(api, name="Third")
        await request(api, "POST", f"/v1/leads/{other['leadId']}:updateStatus",
                      json_body={"status": "LEAD_STATUS_CONTACTED"}, key=new_key())
        async with listen(api, "?types=lead.status_changed",
                          {"Last-Event-ID": last_id or ""}) as again:
            (missed,) = await again.events(1)
            assert missed.data["leadId"] == other["leadId"]
            assert feed.subscribers == 1  # no catch-up stream was needed
            assert await again.quiet(0.5) == []
    await wait_until(lambda: feed.subscribers == 0, within=5)


# -- a browser that does not read ----------------------------------------------------

NAME = "x" * 3000


def big(i: int) -> Message:
    return leads_pb2.Event(cursor=f"c{i}", type="lead.created", lead_id=f"lead-{i}",
                           lead=leads_pb2.Lead(lead_id=f"lead-{i}", name=NAME))


@dataclass
class Script:
    """The fake's leads stream: a bookmark, then big events while `flowing` is set,
    until `stop` (a resume from `c<k>` gets the events after k up to the last made)."""

    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    made: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)

    async def subscribe(self, request_: Any, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[Message]:
        self.metadata.append(dict(context.invocation_metadata() or ()))  # type: ignore[arg-type]
        if request_.after_cursor:
            start = int(request_.after_cursor[1:])
            yield event(request_.after_cursor, "bookmark")
            for i in range(start + 1, self.made + 1):
                yield big(i)
            await asyncio.sleep(60)
            return
        yield event("c0", "bookmark")
        await self.flowing.wait()
        while not self.stop.is_set() and self.made < 20_000:
            self.made += 1
            yield big(self.made)
            if self.made % 20 == 0:
                await asyncio.sleep(0.001)
        await asyncio.sleep(60)


async def test_a_browser_that_does_not_read_is_cut_off_without_slowing_the_others(
    start_gateway: StartGateway, fake: FakeUpstream, client: Client,
) -> None:
    script = Script()
    fake.streams["leads"] = script.subscribe
    gateway = await start_gateway(CRM_LEADS_TARGET=fake.target, CRM_SSE_BUFFER_BYTES="65536")
    streams = gateway.app[EVENTS]
    api = client(gateway)
    # The slow browser: a small receive window, and it reads nothing after its bookmark.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (gateway.host, gateway.port))
    reader, writer = await asyncio.open_connection(sock=raw, limit=1024)
    writer.write(f"GET /v1/events?types=lead.created HTTP/1.0\r\nHost: x\r\n"
                 f"Authorization: Bearer {TOKENS['alice']}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert (await reader.readuntil(b"\n\n")).startswith(b"event: bookmark")

    async with listen(api, "?types=lead.created") as one, listen(api) as two:
        fast = [one, two]
        for stream in fast:
            assert (await stream.next()) is not None
        seen: list[list[str]] = [[], []]

        async def read(stream: SseReader, into: list[str]) -> None:
            while True:
                (message,) = await stream.events(1, within=60)
                into.append(message.data["cursor"])

        readers = [asyncio.create_task(read(s, into)) for s, into in zip(fast, seen, strict=True)]
        script.flowing.set()
        await wait_until(lambda: streams.cut_off == 1, within=60)
        script.stop.set()
        await wait_until(lambda: streams.open == 2, within=10)
        made = script.made
        await wait_until(lambda: all(len(into) >= made for into in seen), within=60)
        for task in readers:
            task.cancel()
        for into in seen:
            assert into == [f"c{i}" for i in range(1, made + 1)]
        assert streams.cut_off == 1
    assert made * len(NAME) > 65536  # far more than its buffer went by

    # The slow browser was cut off; it resumes by the id of the last event it read.
    rest = await reader.read()
    writer.close()
    frames = rest.split(b"\n\n")[:-1]  # the last may be cut in the middle
    ids = [line[4:].decode() for frame in frames for line in frame.split(b"\n")
           if line.startswith(b"id: ")]
    last = ids[-1] if ids else events.encode_id({"leads": "c0"})
    cursor = json.loads(base64.urlsafe_b64decode(last + "=" * (-len(last) % 4)))["leads"]
    async with listen(api, "?types=lead.created", {"Last-Event-ID": last}) as resumed:
        got = await resumed.events(made - int(cursor[1:]), within=30)
        assert [m.data["cursor"] for m in got] == [
            f"c{i}" for i in range(int(cursor[1:]) + 1, made + 1)]
    # The upstream was called with the gateway's own token and the org.
    assert all(m["authorization"] == f"Bearer {TOKENS['gateway']}" for m in script.metadata)
    assert all(m["x-crm-org"] == "default" for m in script.metadata)
    await wait_until(lambda: streams.open == 0, within=5)


async def test_a_browser_with_a_bad_token_is_refused_before_any_stream(
    gateway: RunningGateway, client: Client, leads_server: RunningService,
) -> None:
    session = client(gateway, who=None)
    refused = await request(session, "GET", "/v1/events",
                            headers={"Authorization": "Bearer not-a-token"})
    assert (refused.status, refused.reason) == (401, "INVALID_TOKEN")
    assert leads_server.runtime.storage.feed.subscribers == 0


async def test_each_org_has_its_own_upstream_stream_opened_in_its_name(
    start_gateway: StartGateway, fake: FakeUpstream, client: Client,
) -> None:
    """The browser's org comes from its credentials; browsers of one org share a stream."""
    script = Script()
    fake.streams["leads"] = script.subscribe
    gateway = await start_gateway(CRM_LEADS_TARGET=fake.target)
    hub = gateway.app[EVENTS].hub
    async with listen(client(gateway, who="alice"), "?types=lead.created") as alice, \
            listen(client(gateway, who="bob"), "?types=lead.created") as bob, \
            listen(client(gateway, who="carol@acme"), "?types=lead.created") as carol, \
            listen(client(gateway, who="dave@acme/viewer"), "?types=lead.created") as dave:
        for stream in (alice, bob, carol, dave):
            assert (await stream.next()) is not None
        assert sorted(hub.feeds) == [("acme", "leads"), ("default", "leads")]
        assert sorted(m["x-crm-org"] for m in script.metadata) == ["acme", "default"]
        assert {m["authorization"] for m in script.metadata} == {
            f"Bearer {TOKENS['gateway']}"}
    await wait_until(lambda: fake.open_streams == 0, within=5)
