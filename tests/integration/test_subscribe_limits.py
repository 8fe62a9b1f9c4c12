"""Subscribe within bounds: streams capped per principal and per process, cursors of
ASCII digits in range; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared.server import RunningService
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import start_in_process, wait_until

Stub = leads_pb2_grpc.LeadsServiceStub


@pytest.fixture
async def capped(service_env: dict[str, str]) -> AsyncIterator[RunningService]:
    running = await start_in_process(LEADS, {
        **service_env, "CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL": "3",
        "CRM_SUBSCRIBE_MAX_STREAMS": "5"})
    yield running
    await running.stop(grace=1, drain=0)


async def opened(stub: Stub) -> grpc.aio.UnaryStreamCall:
    stream = stub.Subscribe(pb.SubscribeRequest(types=["lead.created"]))
    first = await stream.read()
    assert first.type == "bookmark"
    return stream


async def test_streams_are_capped_per_principal_and_per_process_and_open_ones_go_on(
    capped: RunningService, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    alice, bob = Stub(channel_for(capped.target)), Stub(channel_for(capped.target, "bob"))
    streams = [await opened(alice) for _ in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await opened(alice)
    refused = refusal(over.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              "TOO_MANY_STREAMS")
    assert refused.metadata == {"scope": "principal", "limit": "3"}
    assert refused.retry_delay is not None and refused.retry_delay > 0
    streams += [await opened(bob) for _ in range(2)]
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await opened(bob)
    assert refusal(full.value).metadata == {"scope": "process", "limit": "5"}
    lead = await create_lead(alice)
    for stream in streams:  # the open ones are untouched
        event = await stream.read()
        while event.type == "bookmark":
            event = await stream.read()
        assert event.lead_id == lead.lead_id
    streams.pop(0).cancel()
    await wait_until(lambda: capped.runtime.storage.feed.streams.held_by("alice") == 2)
    streams.append(await opened(alice))
    for stream in streams:
        stream.cancel()
    await wait_until(lambda: capped.runtime.storage.feed.streams.open == 0)


@pytest.mark.parametrize("position", ["٣", "²", " 3", "3 ", "+3", "1_0", "0" * 30,
                                      "1" + "0" * 30, "99999999999999999999"])
async def test_a_cursor_position_is_ascii_digits_within_a_bigint(
    leads: Stub, position: str,
) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest())
    head = (await stream.read()).cursor
    stream.cancel()
    log_id = base64.urlsafe_b64decode(head + "==").decode().split(":")[0]
    forged = base64.urlsafe_b64encode(f"{log_id}:{position}".encode()).decode().rstrip("=")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.Subscribe(pb.SubscribeRequest(after_cursor=forged)).read()
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                              "INVALID_CURSOR"), position
    assert set(refused.fields) == {"after_cursor"}
