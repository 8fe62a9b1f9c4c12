"""Two leads processes on one PostgreSQL database, as replicas run."""


from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.integration.conftest import create_lead, move
from tests.integration.test_subscribe import take
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, environment

Stub = leads_pb2_grpc.LeadsServiceStub


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    env = environment(postgres_url, tmp_path)
    started = [ServiceProcess("leads", env), ServiceProcess("leads", env)]
    try:
        for replica in started:
            replica.start()
        yield started[0], started[1]
    finally:
        for replica in started:
            if replica.process is not None:
                replica.kill()


async def test_a_key_used_on_one_replica_is_replayed_by_the_other(
    replicas: tuple[ServiceProcess, ServiceProcess], channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    a, b = (Stub(channel_for(r.target)) for r in replicas)
    key = new_key()
    first = await create_lead(a, key=key)
    call = b.CreateLead(pb.CreateLeadRequest(name="Ada Lovelace", phone="+14155550123",
                                             email="ada@example.com"),
                        metadata=idempotency(key))
    assert await call == first
    assert dict(await call.initial_metadata())["idempotent-replayed"] == "true"


async def test_a_key_raced_on_both_replicas_has_one_effect(
    replicas: tuple[ServiceProcess, ServiceProcess], channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    stubs = [Stub(channel_for(r.target)) for r in replicas]
    lead = await create_lead(stubs[0])
    key = new_key()

    async def attempt(stub: Stub) -> str:
        try:
            moved = await move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key)
            return f"version {moved.version}"
        except grpc.aio.AioRpcError as error:
            return refusal(error).reason

    outcomes = await asyncio.gather(*(attempt(stubs[i % 2]) for i in range(30)))
    assert set(outcomes) <= {"version 2", "IDEMPOTENCY_KEY_IN_USE"}
    assert "version 2" in outcomes
    trail = await stubs[1].ListStatusChanges(pb.ListStatusChangesRequest(lead_id=lead.lead_id))
    assert len(trail.status_changes) == 1


async def test_a_subscriber_on_one_replica_sees_every_event_of_both_in_one_order(
    replicas: tuple[ServiceProcess, ServiceProcess], channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    a, b = (Stub(channel_for(r.target)) for r in replicas)
    on_a, on_b = a.Subscribe(pb.SubscribeRequest()), b.Subscribe(pb.SubscribeRequest())
    await on_a.read()
    await on_b.read()

    async def writer(stub: Stub, n: int) -> list[str]:
        ids = []
        for i in range(n):
            lead = await create_lead(stub, name=f"w{i}")
            await move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
            ids.append(lead.lead_id)
        return ids

    written = await asyncio.gather(*(writer(stub, 10) for stub in (a, b, a, b)))
    expected = {lead_id for ids in written for lead_id in ids}
    seen_a, seen_b = await take(on_a, 80), await take(on_b, 80)
    assert seen_a == seen_b, "both replicas deliver one order"
    assert len({e.cursor for e in seen_a}) == 80
    assert {e.lead_id for e in seen_a} == expected
    for lead_id in expected:
        kinds = [e.type for e in seen_a if e.lead_id == lead_id]
        assert kinds == ["lead.created", "lead.status_changed"]

    middle = seen_a[37].cursor
    resumed = b.Subscribe(pb.SubscribeRequest(after_cursor=middle))
    assert await take(resumed, 42) == seen_a[38:]
    for stream in (on_a, on_b, resumed):
        stream.cancel()
