"""The gateway on 127.0.0.1:0 (a real aiohttp AppRunner) in front of in-process services.

The leads service always runs; bookings and messaging run once their
`bootstrap.SPEC` exists (until then their tests are skipped, saying so).
A scriptable fake upstream stands in where a test needs an answer the real
services give only with difficulty (a key in use, an open breaker, a slow call).

The gateway keeps nothing but the sessions logged out (gateway.ended_sessions, a
SQLite file in tmp_path here), so these tests run on SQLite only; test_identity
runs that store on PostgreSQL too.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import RunningGateway, start
from gateway.config import Settings
from services.shared.server import RunningService, ServiceSpec
from tests.integration.gateway.support import FakeUpstream
from tests.support import leaks
from tests.support.servers import TOKENS, TOKENS_ENV, start_in_process

TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
leaks.watch({TWILIO_TOKEN: "TWILIO_AUTH_TOKEN"})
PUBLIC_URL = "https://crm.example.com"

StartGateway = Callable[..., Awaitable[RunningGateway]]
Client = Callable[..., aiohttp.ClientSession]


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def spec_of(service: str) -> ServiceSpec:
    module = f"services.{service}.bootstrap"
    if not has_module(module):
        pytest.skip(f"{module} does not exist yet: the {service} service has not landed")
    return importlib.import_module(module).SPEC  # type: ignore[no-any-return]


def unused_target() -> str:
    """An address where nothing listens: an upstream that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
async def bookings_server(
    service_env: dict[str, str], leads_server: RunningService,
    new_database: Callable[[str], str],
) -> AsyncIterator[RunningService]:
    spec = spec_of("bookings")
    running = await start_in_process(spec, {
        **service_env, "CRM_DATABASE_URL": new_database("bookings"),
        "CRM_LEADS_TARGET": leads_server.target})
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
def messaging_env(service_env: dict[str, str], leads_server: RunningService,
                  new_database: Callable[[str], str]) -> dict[str, str]:
    return {**service_env, "CRM_DATABASE_URL": new_database("messaging"),
            "CRM_LEADS_TARGET": leads_server.target}


@pytest.fixture
async def messaging_server(messaging_env: dict[str, str]) -> AsyncIterator[RunningService]:
    spec = spec_of("messaging")
    running = await start_in_process(spec, messaging_env)
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Starts gateways (stopped at the end) with the test environment and `overrides`."""
    running: list[RunningGateway] = []

    async def start_one(port: int = 0, **overrides: str) -> RunningGateway:
        env = {
            "CRM_API_TOKENS": TOKENS_ENV,
            "CRM_LEADS_TARGET": unused_target(),
            "CRM_BOOKINGS_TARGET": unused_target(),
            "CRM_MESSAGING_TARGET": unused_target(),
            "CRM_PUBLIC_URL": PUBLIC_URL,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "CRM_SSE_HEARTBEAT_SECONDS": "1",
            "CRM_GATEWAY_DEADLINE_SECONDS": "5",
            "CRM_SHUTDOWN_GRACE_SECONDS": "2",
            "CRM_GATEWAY_STATIC_DIR": str(tmp_path),
            "CRM_DATA_DIR": str(tmp_path),  # ended sessions: tmp_path/gateway.db
            **overrides,
        }
        gateway = await start(Settings.from_env(env), host="127.0.0.1", port=port)
        running.append(gateway)
        return gateway

    yield start_one
    for gateway in running:
        await gateway.stop()


@pytest.fixture
async def gateway(start_gateway: StartGateway, leads_server: RunningService) -> RunningGateway:
    """Leads behind the gateway; bookings and messaging are down."""
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target)


@pytest.fixture
async def full_gateway(
    start_gateway: StartGateway, leads_server: RunningService, bookings_server: RunningService,
    messaging_server: RunningService,
) -> RunningGateway:
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                               CRM_BOOKINGS_TARGET=bookings_server.target,
                               CRM_MESSAGING_TARGET=messaging_server.target)


@pytest.fixture
async def bookings_gateway(
    start_gateway: StartGateway, leads_server: RunningService, bookings_server: RunningService,
) -> RunningGateway:
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                               CRM_BOOKINGS_TARGET=bookings_server.target)


@pytest.fixture
async def messaging_gateway(
    start_gateway: StartGateway, leads_server: RunningService, messaging_server: RunningService,
) -> RunningGateway:
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                               CRM_MESSAGING_TARGET=messaging_server.target)


@pytest.fixture
async def fake_gateway(start_gateway: StartGateway, fake: FakeUpstream) -> RunningGateway:
    """Every service played by the fake upstream."""
    return await start_gateway(CRM_LEADS_TARGET=fake.target, CRM_BOOKINGS_TARGET=fake.target,
                               CRM_MESSAGING_TARGET=fake.target)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """Opens HTTP sessions (closed at the end): `client(gateway, who="alice")`.

    `who=None` sends no Authorization header (a browser, or nobody).
    """
    opened: list[aiohttp.ClientSession] = []

    def open_session(gateway: RunningGateway, who: str | None = "alice",
                     **options: Any) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
        session = aiohttp.ClientSession(
            base_url=gateway.url, headers=headers,
            timeout=aiohttp.ClientTimeout(total=30), **options,
        )
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        await session.close()


@pytest.fixture
async def api(gateway: RunningGateway, client: Client) -> aiohttp.ClientSession:
    """Alice's API client of the leads-only gateway."""
    return client(gateway)
