"""GET /v1/events: merged, filtered, resumable Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
from crm.common.v1 import common_pb2
from crm.leads.v1 import leads_pb2
from google.protobuf.message import Message
from prometheus_client import REGISTRY

from gateway.app import EVENTS, SECURITY_HEADERS, RunningGateway
from gateway.events import encode_id
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import (
    FakeUpstream,
    SseReader,
    create_lead,
    new_key,
    request,
)
from tests.support.servers import wait_until

LEAD_TYPES = "?types=lead.created,lead.status_changed"


@asynccontextmanager
async def listen(session: aiohttp.ClientSession, query: str = "",
                 headers: dict[str, str] | None = None) -> AsyncIterator[SseReader]:
    async with session.get("/v1/events" + query, headers=headers or {},
                           timeout=aiohttp.ClientTimeout(total=60)) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-store"
        # The head is whole though the gateway lets go of its headers once it is sent.
        assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        assert response.headers["X-Request-Id"]
        assert response.headers["X-Accel-Buffering"] == "no"
        yield SseReader(response)


async def move(api: aiohttp.ClientSession, lead_id: str, status: str) -> None:
    answer = await request(api, "POST", f"/v1/leads/{lead_id}:updateStatus",
                           json_body={"status": status}, key=new_key())
    assert answer.status == 200, answer.body


async def test_the_first_message_is_a_bookmark_then_events_arrive_with_a_composite_id(
    api: aiohttp.ClientSession,
) -> None:
    async with listen(api, LEAD_TYPES) as stream:
        first = await stream.next()
        assert first is not None
        assert (first.event, first.retry, first.data["type"]) == ("bookmark", 2000, "bookmark")
        assert first.data["bookmark"]["headCursor"]
        assert set(first.cursors) == {"leads"}
        lead = await create_lead(api)
        (created,) = await stream.events(1)
        assert created.event == "lead.created"
        assert created.data["lead"]["leadId"] == lead["leadId"]
        assert created.data["actor"] == "alice"
        assert created.cursors == {"leads": created.data["cursor"]}
        assert created.data["statusChange"] is None  # stable shapes: unset messages are null


async def test_events_of_every_service_arrive_on_one_stream(
    full_gateway: RunningGateway, client: Client,
) -> None:
    api = client(full_gateway)
    async with listen(api) as stream:
        first = await stream.next()
        assert first is not None and first.event == "bookmark"
        assert set(first.cursors) == {"leads", "bookings", "messaging"}
        lead = await create_lead(api)
        start = datetime(2031, 6, 2, 9, tzinfo=UTC)
        booked = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
            "leadId": lead["leadId"], "agentId": "agent-sse", "startTime": start.isoformat(),
            "endTime": (start + timedelta(hours=1)).isoformat()})
        assert booked.status == 200, booked.body
        sent = await request(api, "POST", "/v1/messages", key=new_key(),
                             json_body={"leadId": lead["leadId"], "body": "Hi"})
        assert sent.status == 200, sent.body
        seen: dict[str, Any] = {}
        while not {"lead.created", "appointment.created", "message.created"} <= set(seen):
            (message,) = await stream.events(1)
            seen[message.event] = message
        assert seen["appointment.created"].data["appointment"]["leadId"] == lead["leadId"]
        assert seen["message.created"].data["message"]["body"] == "Hi"
        assert stream.last_id is not None
        assert set(json.loads(base64.urlsafe_b64decode(stream.last_id + "==="))) == {
            "leads", "bookings", "messaging"}


async def test_the_stream_goes_live_only_once_every_followed_service_is_live(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    """Bookings and messaging are down here: the page hears heartbeats, not a bookmark."""
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_SSE_HEARTBEAT_SECONDS="0.3")
    api = client(gateway)
    async with listen(api) as stream:
        assert await stream.quiet(1.5) == []
        assert stream.last_id is None
        assert "heartbeat" in stream.comments
    async with listen(api, "?types=lead.created") as stream:
        first = await stream.next()
        assert first is not None and first.event == "bookmark"


async def test_filters_by_lead_and_by_type(api: aiohttp.ClientSession) -> None:
    one, other = await create_lead(api, name="One"), await create_lead(api, name="Other")
    async with listen(api, f"?lead_id={one['leadId']}&types=lead.status_changed") as stream:
        assert (await stream.next()) is not None
        await move(api, other["leadId"], "LEAD_STATUS_CONTACTED")
        await create_lead(api, name="Third")
        await move(api, one["leadId"], "LEAD_STATUS_QUALIFIED")
        (event,) = await stream.events(1)
        assert (event.event, event.data["leadId"]) == ("lead.status_changed", one["leadId"])
        assert event.data["statusChange"]["toStatus"] == "LEAD_STATUS_QUALIFIED"
        assert await stream.quiet(0.8) == []


async def test_an_appointment_filter_follows_bookings_alone(
    bookings_gateway: RunningGateway, client: Client, leads_server: RunningService,
) -> None:
    api = client(bookings_gateway)
    async with listen(api, "?appointment_id=some-appointment") as stream:
        first = await stream.next()
        assert first is not None and set(first.cursors) == {"bookings"}
        assert leads_server.runtime.storage.feed.subscribers == 0


async def test_filters_the_services_cannot_serve_are_400_naming_the_parameter(
    api: aiohttp.ClientSession,
) -> None:
    cases = {
        "?types=lead.created,deal.closed": "types",
        "?appointment_id=a&types=lead.created": "types",
        "?leadId=x": "leadId",
        "?lead_id=" + "x" * 65: "lead_id",
    }
    for query, field in cases.items():
        refused = await request(api, "GET", "/v1/events" + query)
        assert (refused.status, refused.reason) == (400, "INVALID_QUERY_PARAMETER"), query
        assert refused.detail("BadRequest")["fieldViolations"][0]["field"] == field
    upstream = await request(api, "GET", "/v1/events?types=lead.exploded")
    assert (upstream.status, upstream.domain) == (400, "leads")


async def test_a_malformed_last_event_id_is_400(api: aiohttp.ClientSession) -> None:
    foreign = base64.urlsafe_b64encode(json.dumps({"billing": "x"}).encode()).decode()
    for value in ("not-base64-json!", foreign, base64.urlsafe_b64encode(b"[1]").decode()):
        refused = await request(api, "GET", "/v1/events", headers={"Last-Event-ID": value})
        assert (refused.status, refused.reason) == (400, "INVALID_LAST_EVENT_ID"), value
        assert refused.detail("BadRequest")["fieldViolations"][0]["field"] == "Last-Event-ID"
    query = await request(api, "GET", "/v1/events?last_event_id=%25%25")
    assert query.detail("BadRequest")["fieldViolations"][0]["field"] == "last_event_id"


async def test_a_reconnect_with_last_event_id_gets_what_it_missed_exactly_once(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api, name="Seen")
    async with listen(api, LEAD_TYPES) as stream:
        assert await stream.next() is not None
        await move(api, lead["leadId"], "LEAD_STATUS_CONTACTED")
        (seen,) = await stream.events(1)
        assert seen.event == "lead.status_changed"
        last_id = stream.last_id
    assert last_id is not None
    # Made while the browser was away:
    missed = await create_lead(api, name="Missed")
    await move(api, lead["leadId"], "LEAD_STATUS_QUALIFIED")
    await move(api, missed["leadId"], "LEAD_STATUS_LOST")
    expected = [("lead.created", missed["leadId"]), ("lead.status_changed", lead["leadId"]),
                ("lead.status_changed", missed["leadId"])]
    async with listen(api, LEAD_TYPES, headers={"Last-Event-ID": last_id}) as stream:
        first = await stream.next()
        assert first is not None and first.event == "bookmark"
        got = await stream.events(3)
        assert [(m.event, m.data["leadId"]) for m in got] == expected
        assert await stream.quiet(1.0) == []
        resumed_id = stream.last_id
    # The query parameter does the same for clients that cannot set the header.
    async with listen(api, f"{LEAD_TYPES}&last_event_id={last_id}") as stream:
        got = await stream.events(3)
        assert [(m.event, m.data["leadId"]) for m in got] == expected
    async with listen(api, LEAD_TYPES, headers={"Last-Event-ID": resumed_id or ""}) as stream:
        assert await stream.quiet(0.8) == []


async def test_heartbeat_comments_keep_an_idle_stream_open(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_SSE_HEARTBEAT_SECONDS="0.2")
    api = client(gateway)
    async with listen(api, "?types=lead.created") as stream:
        await stream.quiet(1.2)
        assert stream.comments.count("heartbeat") >= 4
        # A busy stream keeps the beat too.
        stream.comments.clear()

        async def busy() -> None:
            for i in range(12):
                await create_lead(api, name=f"Busy {i}")
                await asyncio.sleep(0.08)

        writer = asyncio.create_task(busy())
        assert len(await stream.events(12)) == 12
        await writer
        assert stream.comments.count("heartbeat") >= 3


async def test_upstream_calls_are_cancelled_when_the_browser_goes_away(
    gateway: RunningGateway, api: aiohttp.ClientSession, leads_server: RunningService,
) -> None:
    feed = leads_server.runtime.storage.feed
    async with listen(api, LEAD_TYPES) as stream:
        assert await stream.next() is not None
        assert feed.subscribers == 1
        assert gateway.app[EVENTS].open == 1
        assert (REGISTRY.get_sample_value("crm_gateway_sse_streams") or 0) >= 1
    await wait_until(lambda: feed.subscribers == 0, within=5)
    await wait_until(lambda: gateway.app[EVENTS].open == 0, within=5)


async def test_an_expired_cursor_resets_the_page_then_the_stream_continues_from_the_head(
    api: aiohttp.ClientSession,
) -> None:
    foreign = base64.urlsafe_b64encode(b"another-log:4").decode().rstrip("=")
    async with listen(api, LEAD_TYPES,
                      headers={"Last-Event-ID": encode_id({"leads": foreign})}) as stream:
        first = await stream.next()
        assert first is not None and first.event == "bookmark"
        reset = await stream.next()
        assert reset is not None and reset.event == "reset"
        assert reset.data["service"] == "leads"
        assert reset.data["error"]["details"][0]["reason"] == "CURSOR_UNKNOWN"
        assert reset.cursors["leads"] != foreign
        lead = await create_lead(api)
        (created,) = await stream.events(1)
        assert created.data["lead"]["leadId"] == lead["leadId"]


async def test_without_credentials_the_answer_is_401_not_a_stream(
    gateway: RunningGateway, client: Client,
) -> None:
    refused = await request(client(gateway, who=None), "GET", "/v1/events" + LEAD_TYPES)
    assert (refused.status, refused.reason) == (401, "MISSING_CREDENTIALS")


def event(cursor: str, kind: str = "lead.created") -> Message:
    if kind == "bookmark":
        return leads_pb2.Event(cursor=cursor, type=kind,
                               bookmark=common_pb2.Bookmark(head_cursor=cursor))
    return leads_pb2.Event(cursor=cursor, type=kind, lead_id=f"lead-{cursor}")


async def test_a_stream_that_fails_or_ends_is_followed_again_from_its_last_cursor(
    start_gateway: StartGateway, fake: FakeUpstream, client: Client,
) -> None:
    calls: list[str] = []

    async def subscribe(request_: Any, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[Message]:
        calls.append(request_.after_cursor)
        if len(calls) == 1:
            yield event("c1", "bookmark")
            yield event("c2")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the leads replica went away")
        elif len(calls) == 2:
            yield event("c2", "bookmark")
            yield event("c3")
        else:
            yield event(request_.after_cursor, "bookmark")
            await asyncio.sleep(30)

    fake.streams["leads"] = subscribe
    gateway = await start_gateway(CRM_LEADS_TARGET=fake.target)
    async with listen(client(gateway), "?types=lead.created") as stream:
        got = await stream.events(2)
        assert [m.data["cursor"] for m in got] == ["c2", "c3"]
        assert [m.cursors for m in got] == [{"leads": "c2"}, {"leads": "c3"}]
        await wait_until(lambda: len(calls) == 3, within=5)
        assert calls == ["", "c2", "c3"]
        assert await stream.quiet(0.5) == []
    await wait_until(lambda: fake.open_streams == 0, within=5)


async def test_shutdown_ends_every_stream_cleanly(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target)
    async with listen(client(gateway), LEAD_TYPES) as stream:
        assert await stream.next() is not None
        stopping = asyncio.create_task(gateway.stop())
        async with asyncio.timeout(5):
            while await stream.next() is not None:
                pass
        await asyncio.wait_for(stopping, 5)
    await wait_until(lambda: leads_server.runtime.storage.feed.subscribers == 0, within=5)


async def test_a_service_that_cannot_be_reached_does_not_hold_back_the_others(
    api: aiohttp.ClientSession,
) -> None:
    # Bookings and messaging are down behind this gateway; leads is up.
    async with listen(api) as stream:
        first = await stream.next()
        assert first is not None and first.event == "bookmark"
        assert first.data["unavailable"] == ["bookings", "messaging"]
        lead = await create_lead(api)
        (created,) = await stream.events(1)
        assert (created.event, created.data["lead"]["leadId"]) == ("lead.created", lead["leadId"])
