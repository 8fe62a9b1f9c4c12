"""Booking asks the leads service whether the lead exists: when leads is down,
slow or flaky, a booking is UNAVAILABLE (never INTERNAL), stores nothing, and
its retry with the same key books it once leads answers again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.leads.v1 import leads_pb2 as leads_pb
from crm.leads.v1 import leads_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.api import LeadsApi
from services.leads.bootstrap import SPEC as LEADS
from services.shared.clients import idempotency, new_key
from services.shared.errors import Unavailable
from services.shared.runtime import ServiceRuntime
from services.shared.server import RunningService
from tests.integration.bookings.conftest import Stub, booking
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import start_in_process


async def appointments_of(stub: Stub, lead_id: str) -> list[pb.Appointment]:
    return list((await stub.ListAppointments(pb.ListAppointmentsRequest(lead_id=lead_id)))
                .appointments)


@pytest.fixture
async def start_bookings(
    service_env: dict[str, str],
) -> AsyncIterator[Callable[[str], Awaitable[RunningService]]]:
    """Starts bookings servers that ask the leads service at a given target."""
    started: list[RunningService] = []

    async def start(leads_target: str) -> RunningService:
        running = await start_in_process(BOOKINGS, {**service_env,
                                                    "CRM_LEADS_TARGET": leads_target})
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(grace=1, drain=0)


async def test_while_leads_is_down_a_booking_is_unavailable_and_its_retry_books_once_it_is_back(
    service_env: dict[str, str],
    start_bookings: Callable[[str], Awaitable[RunningService]],
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    leads_server = await start_in_process(LEADS, service_env)
    port = leads_server.port
    try:
        lead = await create_lead(leads_pb2_grpc.LeadsServiceStub(channel_for(leads_server.target)))
        running = await start_bookings(leads_server.target)
    finally:
        await leads_server.stop(grace=1, drain=0)
    stub = Stub(channel_for(running.target, retries=False))
    key = new_key()
    request = booking(lead.lead_id, "agent-1")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.CreateAppointment(request, metadata=idempotency(key))
    refused = refusal(failed.value)
    assert (refused.code, refused.reason, refused.domain) == (
        grpc.StatusCode.UNAVAILABLE, "LEADS_UNAVAILABLE", "bookings")
    assert refused.retry_delay is not None
    assert await appointments_of(stub, lead.lead_id) == []

    leads_server = await start_in_process(LEADS, service_env, port=port)
    try:
        retrying = Stub(channel_for(running.target))
        call = retrying.CreateAppointment(request, metadata=idempotency(key))
        booked = await call
        assert "idempotent-replayed" not in dict(await call.initial_metadata())
        assert (booked.lead_id, booked.status) == (lead.lead_id, pb.APPOINTMENT_STATUS_PENDING)
        assert await appointments_of(stub, lead.lead_id) == [booked]
    finally:
        await leads_server.stop(grace=1, drain=0)


class Restarting(Unavailable):
    """What a caller's channel may retry at once, as a server going away."""

    retry_now = True


class FlakyLeadsApi(LeadsApi):
    """The real leads servicer, whose GetLead fails on command before answering."""

    unavailable: ClassVar[int] = 0
    stall: ClassVar[asyncio.Event | None] = None
    calls: ClassVar[int] = 0

    async def GetLead(  # type: ignore[override]
        self, request: leads_pb.GetLeadRequest, context: grpc.aio.ServicerContext
    ) -> leads_pb.Lead:
        FlakyLeadsApi.calls += 1
        if FlakyLeadsApi.stall is not None:
            await FlakyLeadsApi.stall.wait()
        if FlakyLeadsApi.unavailable > 0:
            FlakyLeadsApi.unavailable -= 1
            raise Restarting("leads is restarting", reason="RESTARTING")
        return await super().GetLead(request, context)


async def build_flaky(runtime: ServiceRuntime[Any]) -> LeadsApi:
    return FlakyLeadsApi(runtime.units, region=runtime.settings.default_region,
                         heartbeat_seconds=runtime.settings.heartbeat_seconds)


@pytest.fixture
async def flaky_leads(service_env: dict[str, str]) -> AsyncIterator[RunningService]:
    FlakyLeadsApi.unavailable, FlakyLeadsApi.stall, FlakyLeadsApi.calls = 0, None, 0
    running = await start_in_process(dataclasses.replace(LEADS, build=build_flaky), service_env)
    yield running
    if FlakyLeadsApi.stall is not None:
        FlakyLeadsApi.stall.set()
    await running.stop(grace=1, drain=0)


async def test_a_lead_check_that_fails_unavailable_at_first_is_retried_by_the_channel(
    flaky_leads: RunningService,
    start_bookings: Callable[[str], Awaitable[RunningService]],
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    lead = await create_lead(leads_pb2_grpc.LeadsServiceStub(channel_for(flaky_leads.target)))
    stub = Stub(channel_for((await start_bookings(flaky_leads.target)).target, retries=False))
    FlakyLeadsApi.unavailable = 2
    booked = await stub.CreateAppointment(booking(lead.lead_id, "agent-1"),
                                          metadata=idempotency(new_key()))
    assert booked.status == pb.APPOINTMENT_STATUS_PENDING
    assert FlakyLeadsApi.calls == 3
    assert await appointments_of(stub, lead.lead_id) == [booked]


async def test_a_lead_check_that_outlasts_the_callers_deadline_is_unavailable_not_internal(
    flaky_leads: RunningService,
    start_bookings: Callable[[str], Awaitable[RunningService]],
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    lead = await create_lead(leads_pb2_grpc.LeadsServiceStub(channel_for(flaky_leads.target)))
    stub = Stub(channel_for((await start_bookings(flaky_leads.target)).target, retries=False))
    FlakyLeadsApi.stall = asyncio.Event()
    key = new_key()
    request = booking(lead.lead_id, "agent-1")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.CreateAppointment(request, metadata=idempotency(key), timeout=1.0)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "LEADS_UNAVAILABLE")
    assert "DEADLINE_EXCEEDED" in refused.message
    FlakyLeadsApi.stall.set()
    booked = await stub.CreateAppointment(request, metadata=idempotency(key))
    assert booked.status == pb.APPOINTMENT_STATUS_PENDING
