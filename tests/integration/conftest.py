"""Servers and clients for integration tests: real gRPC servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as leads_pb
from crm.leads.v1 import leads_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.bootstrap import SPEC as LEADS
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared import sql
from services.shared.clients import idempotency, new_key
from services.shared.db import Database
from services.shared.server import RunningService
from tests.support.servers import environment, start_in_process


@pytest.fixture
def service_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return environment(database_url, tmp_path)


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    """A Database on PostgreSQL with one pooled connection (and one overflow): each
    checkout after the first takes the connection the last one gave back."""
    found = Database(postgres_url, pool_size=1)
    yield found
    await found.dispose()


@pytest.fixture
async def leads_server(service_env: dict[str, str]) -> AsyncIterator[RunningService]:
    running = await start_in_process(LEADS, service_env)
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
async def servers(new_database: Callable[[str], str], tmp_path: Path
                  ) -> AsyncIterator[dict[str, RunningService]]:
    """All three services, each on a database of its own, bookings and messaging
    looking leads up in the leads server."""
    running: dict[str, RunningService] = {}
    env = environment("", tmp_path)
    running["leads"] = await start_in_process(LEADS, {**env,
                                                      "CRM_DATABASE_URL": new_database("leads")})
    for name, spec in (("bookings", BOOKINGS), ("messaging", MESSAGING)):
        running[name] = await start_in_process(spec, {
            **env, "CRM_DATABASE_URL": new_database(name),
            "CRM_LEADS_TARGET": running["leads"].target})
    yield running
    for server in running.values():
        await server.stop(grace=1, drain=0)


@pytest.fixture
def leads(
    leads_server: RunningService, channel_for: Callable[[str, str], grpc.aio.Channel]
) -> leads_pb2_grpc.LeadsServiceStub:
    return leads_pb2_grpc.LeadsServiceStub(channel_for(leads_server.target, "alice"))


async def create_lead(
    stub: leads_pb2_grpc.LeadsServiceStub, name: str = "Ada Lovelace",
    phone: str = "+14155550123", key: str | None = None,
) -> leads_pb.Lead:
    return await stub.CreateLead(
        leads_pb.CreateLeadRequest(name=name, phone=phone, email="ada@example.com"),
        metadata=idempotency(key or new_key()),
    )


async def move(
    stub: leads_pb2_grpc.LeadsServiceStub, lead_id: str, status: int, key: str | None = None,
    **fields: int,
) -> leads_pb.Lead:
    return await stub.UpdateLeadStatus(
        leads_pb.UpdateLeadStatusRequest(lead_id=lead_id, status=status, **fields),  # type: ignore[arg-type]
        metadata=idempotency(key or new_key()),
    )


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many statements each PostgreSQL round trip of this process sends."""
    sent: list[int] = []
    at_once = sql._at_once

    async def counted(raw: Any, statements: Any, *rest: Any, **options: Any) -> Any:
        sent.append(len(statements))
        return await at_once(raw, statements, *rest, **options)

    monkeypatch.setattr(sql, "_at_once", counted)
    return sent


@pytest.fixture
def sent_strings(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The statements (their SQL, values unbound) of each PostgreSQL round trip of
    this process, in the order they went out."""
    sent: list[list[str]] = []
    at_once = sql._at_once

    async def recorded(raw: Any, statements: Any, *rest: Any, **options: Any) -> Any:
        sent.append([text for text, _ in statements])
        return await at_once(raw, statements, *rest, **options)

    monkeypatch.setattr(sql, "_at_once", recorded)
    return sent
