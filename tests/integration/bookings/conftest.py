"""A leads server and a bookings server that asks it about leads, both in this
process on the test's backend (one database, each service with its own tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.bookings.v1 import bookings_pb2_grpc
from crm.leads.v1 import leads_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from services.shared.server import RunningService
from tests.integration.conftest import create_lead
from tests.support.servers import start_in_process

Stub = bookings_pb2_grpc.BookingsServiceStub
# Far enough ahead that no test depends on the clock.
MONDAY = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
async def bookings_server(
    service_env: dict[str, str], leads_server: RunningService
) -> AsyncIterator[RunningService]:
    env = {**service_env, "CRM_LEADS_TARGET": leads_server.target}
    running = await start_in_process(BOOKINGS, env)
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
def bookings(
    bookings_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> Stub:
    return Stub(channel_for(bookings_server.target, "alice"))


@pytest.fixture
async def lead_id(leads: leads_pb2_grpc.LeadsServiceStub) -> str:
    return (await create_lead(leads)).lead_id


@pytest.fixture
def agent(unique: Callable[[str], str]) -> str:
    return unique("agent-")


def at(hours: float) -> datetime:
    """A moment `hours` after MONDAY 09:00 UTC."""
    return MONDAY + timedelta(hours=hours)


def booking(
    lead_id: str, agent_id: str, start: float = 0, hours: float = 1, notes: str = ""
) -> pb.CreateAppointmentRequest:
    """A request for `agent_id`, from `start` hours after MONDAY 09:00, lasting `hours`."""
    return pb.CreateAppointmentRequest(
        lead_id=lead_id, agent_id=agent_id, start_time=timestamp(at(start)),
        end_time=timestamp(at(start + hours)), notes=notes,
    )


async def book(
    stub: Stub, lead_id: str, agent_id: str, start: float = 0, hours: float = 1, *,
    key: str | None = None, notes: str = "",
) -> pb.Appointment:
    return await stub.CreateAppointment(
        booking(lead_id, agent_id, start, hours, notes), metadata=idempotency(key or new_key())
    )


async def confirm(stub: Stub, appointment_id: str, key: str | None = None) -> pb.Appointment:
    return await stub.ConfirmAppointment(
        pb.ConfirmAppointmentRequest(appointment_id=appointment_id),
        metadata=idempotency(key or new_key()),
    )


async def cancel(
    stub: Stub, appointment_id: str, reason: str = "", key: str | None = None
) -> pb.Appointment:
    return await stub.CancelAppointment(
        pb.CancelAppointmentRequest(appointment_id=appointment_id, reason=reason),
        metadata=idempotency(key or new_key()),
    )


async def complete(stub: Stub, appointment_id: str, key: str | None = None) -> pb.Appointment:
    return await stub.CompleteAppointment(
        pb.CompleteAppointmentRequest(appointment_id=appointment_id),
        metadata=idempotency(key or new_key()),
    )


async def get(stub: Stub, appointment_id: str) -> pb.Appointment:
    return await stub.GetAppointment(pb.GetAppointmentRequest(appointment_id=appointment_id))


async def appointment_in(stub: Stub, lead_id: str, agent_id: str, status: int,
                         start: float = 0) -> pb.Appointment:
    """A new appointment brought to `status` along the shortest path."""
    booked = await book(stub, lead_id, agent_id, start=start)
    if status == pb.APPOINTMENT_STATUS_PENDING:
        return booked
    if status == pb.APPOINTMENT_STATUS_CANCELLED:
        return await cancel(stub, booked.appointment_id)
    confirmed = await confirm(stub, booked.appointment_id)
    if status == pb.APPOINTMENT_STATUS_CONFIRMED:
        return confirmed
    return await complete(stub, booked.appointment_id)
