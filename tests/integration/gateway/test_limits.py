"""Bounded resources: connections that never finish, streams per principal and per
process, failed authentications, and the streams gauge after mass disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from gateway.app import EVENTS, RunningGateway
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import SseReader, create_lead, request
from tests.support.servers import TOKENS, environment, wait_until


@pytest.fixture
def service_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Services that take the hundreds of streams these tests open as one principal."""
    return environment(database_url, tmp_path, CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL="1000")


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 30.0) -> bool:
    """Whether the gateway closes this connection (EOF) within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_connections_that_never_finish_their_headers_are_closed(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(CRM_GATEWAY_IDLE_SECONDS="0.5")
    opened = []
    for i in range(150):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        if i % 3 == 0:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        elif i % 3 == 1:
            writer.write(b"GET /heal")
        opened.append((reader, writer))  # and a third send nothing at all
    try:
        closed = await asyncio.gather(*(closed_by_peer(reader) for reader, _ in opened))
        assert all(closed), f"{closed.count(False)} of {len(closed)} still open"
        assert gateway.runner.server is not None
        await wait_until(lambda: not gateway.runner.server.connections)  # type: ignore[union-attr]
    finally:
        for _, writer in opened:
            writer.close()


async def test_a_stream_outlives_the_idle_deadline_and_keep_alive_still_works(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway(CRM_GATEWAY_IDLE_SECONDS="0.3",
                                  CRM_SSE_HEARTBEAT_SECONDS="0.1")
    api = client(gateway)
    async with api.get("/v1/events") as response:
        assert response.status == 200
        reader = SseReader(response)
        await reader.quiet(1.5)
        assert len(reader.comments) >= 5  # heartbeats kept coming past the deadline
    for _ in range(3):  # one kept-alive connection, used again within the deadline
        async with api.get("/healthz") as answer:
            assert answer.status == 200


# -- the streams gauge -------------------------------------------------------------------


async def open_raw_stream(gateway: RunningGateway, who: str = "alice"
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A browser's /v1/events, read until it is live."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n"
                 + f"Authorization: Bearer {TOKENS[who]}\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"event: bookmark"), 30)
    return reader, writer


async def drain(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def keep_creating(api: aiohttp.ClientSession, created: list[object]) -> None:
    while True:
        created.append(await create_lead(api))


def sse_gauge() -> float:
    return REGISTRY.get_sample_value("crm_gateway_sse_streams") or 0.0


async def test_every_stream_that_opens_is_counted_closed_once_when_hundreds_drop_at_once(
    start_gateway: StartGateway, leads_server: RunningService,
    bookings_server: RunningService, messaging_server: RunningService, client: Client,
) -> None:
    """Browsers that go while events are being written to them: the writer sees the
    connection fail first, and aiohttp cancels it while it cleans up."""
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_BOOKINGS_TARGET=bookings_server.target,
                                  CRM_MESSAGING_TARGET=messaging_server.target,
                                  CRM_SSE_MAX_STREAMS_PER_PRINCIPAL="1000",
                                  CRM_SSE_MAX_STREAMS="1000")
    api = client(gateway)
    before = sse_gauge()
    for _ in range(4):
        opened = await asyncio.gather(*(open_raw_stream(gateway) for _ in range(250)))
        assert gateway.app[EVENTS].open == 250
        assert sse_gauge() == before + 250
        reading = [asyncio.create_task(drain(reader)) for reader, _ in opened]
        created: list[object] = []
        # Events on their way to every browser …
        creating = asyncio.create_task(keep_creating(api, created))
        await wait_until(lambda: len(created) >= 3, within=30)  # noqa: B023
        for _, writer in opened:  # … as every browser goes at once
            writer.transport.abort()
        await asyncio.gather(*reading)
        await asyncio.sleep(0.2)
        creating.cancel()
        await wait_until(lambda: gateway.app[EVENTS].open == 0 and sse_gauge() == before,
                         within=30)
    await wait_until(lambda: leads_server.runtime.storage.feed.subscribers == 0, within=30)


# -- streams per principal and per process --------------------------------------------------


async def test_streams_are_capped_per_principal_and_per_process_and_open_ones_go_on(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_SSE_MAX_STREAMS_PER_PRINCIPAL="3",
                                  CRM_SSE_MAX_STREAMS="5")
    alice, bob = client(gateway), client(gateway, who="bob")
    streams = [await open_raw_stream(gateway, "alice") for _ in range(3)]
    over = await request(alice, "GET", "/v1/events?types=lead.created")
    assert (over.status, over.reason) == (429, "TOO_MANY_STREAMS"), over.body
    assert over.detail("ErrorInfo")["metadata"] == {"scope": "principal", "limit": "3"}
    assert "CRM_SSE_MAX_STREAMS_PER_PRINCIPAL" in over.body["message"]
    assert int(over.headers["Retry-After"]) > 0
    streams += [await open_raw_stream(gateway, "bob") for _ in range(2)]
    full = await request(bob, "GET", "/v1/events?types=lead.created")
    assert (full.status, full.reason) == (429, "TOO_MANY_STREAMS"), full.body
    assert full.detail("ErrorInfo")["metadata"] == {"scope": "process", "limit": "5"}
    # The streams already open are untouched: each still gets the next event.
    lead = await create_lead(alice)
    for reader, _ in streams:
        seen = await asyncio.wait_for(reader.readuntil(b"event: lead.created"), 30)
        assert seen
        assert lead["leadId"].encode() in await asyncio.wait_for(reader.readuntil(b"\n\n"), 30)
    # One closed makes room for one more.
    streams.pop(0)[1].transport.abort()
    await wait_until(lambda: gateway.app[EVENTS].limits.held_by("alice") == 2, within=30)
    streams.append(await open_raw_stream(gateway, "alice"))
    for _, writer in streams:
        writer.close()


# -- failed authentications ------------------------------------------------------------------


async def test_failed_logins_and_bearer_tokens_are_limited_per_address_with_retry_after(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_AUTH_FAILURES_MAX="5",
                                  CRM_AUTH_FAILURES_WINDOW_SECONDS="3600",
                                  CRM_PUBLIC_URL="http://127.0.0.1:8080")  # cookies over http
    browser = client(gateway, who=None, cookie_jar=aiohttp.CookieJar(unsafe=True))
    # A browser logged in before the attack keeps its session.
    login = await request(browser, "POST", "/auth/login",
                          json_body={"token": TOKENS["bob"]})
    assert login.status == 200
    guesser = client(gateway, who=None)
    answers = [await request(guesser, "POST", "/auth/login",
                             json_body={"token": f"guess-{n:032d}"}) for n in range(4)]
    wrong_bearer = await request(guesser, "GET", "/v1/leads",
                                 headers={"Authorization": "Bearer not-a-token-0123456789"})
    assert [a.status for a in answers] + [wrong_bearer.status] == [401] * 5
    for attempt in (
        request(guesser, "POST", "/auth/login", json_body={"token": "guess-again-0123456789"}),
        request(guesser, "POST", "/auth/login", json_body={"token": TOKENS["alice"]}),
        request(guesser, "GET", "/v1/leads",
                headers={"Authorization": f"Bearer {TOKENS['alice']}"}),
    ):
        refused = await attempt
        assert (refused.status, refused.reason) == (429, "TOO_MANY_FAILED_AUTHENTICATIONS")
        assert 3500 < int(refused.headers["Retry-After"]) <= 3600
    assert (await request(browser, "GET", "/v1/leads")).status == 200
    refusals = [r for r in caplog.records if "too many failures" in r.getMessage()]
    assert len(refusals) == 3 and all(r.levelno == logging.WARNING for r in refusals)
    assert not any(TOKENS["alice"] in r.getMessage() for r in caplog.records)


async def test_the_limit_lifts_once_the_failures_leave_the_window(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                                  CRM_AUTH_FAILURES_MAX="2",
                                  CRM_AUTH_FAILURES_WINDOW_SECONDS="0.5")
    guesser = client(gateway, who=None)
    for _ in range(2):
        await request(guesser, "POST", "/auth/login", json_body={"token": "x" * 20})
    refused = await request(guesser, "POST", "/auth/login", json_body={"token": TOKENS["alice"]})
    assert refused.status == 429

    async def logged_in() -> bool:
        answer = await request(guesser, "POST", "/auth/login",
                               json_body={"token": TOKENS["alice"]})
        return answer.status == 200

    await wait_until(logged_in, within=30, interval=0.2)
