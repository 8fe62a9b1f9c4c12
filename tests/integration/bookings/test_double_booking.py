"""No double booking: two confirmed appointments of one agent never overlap."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.bookings.adapters import SqlAppointmentRepository, SqlBookingsUnitOfWork
from services.bookings.bootstrap import SPEC as BOOKINGS
from services.bookings.domain import Appointment
from services.leads.bootstrap import SPEC as LEADS
from tests.integration.bookings.conftest import Stub, book, cancel, complete, confirm, get
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import environment, start_in_process


async def slot_taken_by(stub: Stub, appointment_id: str) -> str:
    """Confirm, expecting SLOT_TAKEN; the id of the appointment that holds the slot."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await confirm(stub, appointment_id)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SLOT_TAKEN")
    assert refused.metadata["appointment_id"] == appointment_id
    winner = refused.metadata["conflicting_appointment_id"]
    assert refused.violations == [("SLOT_TAKEN", f"appointments/{winner}")]
    return winner


async def test_confirming_a_slot_that_overlaps_a_confirmed_one_is_slot_taken_naming_it(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    held = await confirm(bookings, (await book(bookings, lead_id, agent, start=1, hours=2))
                         .appointment_id)
    for start, hours in ((0, 1.5), (2.5, 1), (1.5, 0.5), (0, 4)):
        clashing = await book(bookings, lead_id, agent, start=start, hours=hours)
        assert await slot_taken_by(bookings, clashing.appointment_id) == held.appointment_id
        clashed = await get(bookings, clashing.appointment_id)
        assert clashed.status == pb.APPOINTMENT_STATUS_PENDING


async def test_back_to_back_slots_and_other_agents_slots_confirm_side_by_side(
    bookings: Stub, lead_id: str, agent: str, unique: Callable[[str], str]
) -> None:
    middle = await book(bookings, lead_id, agent, start=1, hours=1)
    before = await book(bookings, lead_id, agent, start=0, hours=1)
    after = await book(bookings, lead_id, agent, start=2, hours=1)
    elsewhere = await book(bookings, lead_id, unique("agent-"), start=1, hours=1)
    for appointment in (middle, before, after, elsewhere):
        confirmed = await confirm(bookings, appointment.appointment_id)
        assert confirmed.status == pb.APPOINTMENT_STATUS_CONFIRMED


async def test_pending_appointments_may_overlap_and_only_confirming_claims_the_slot(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    first = await book(bookings, lead_id, agent)
    second = await book(bookings, lead_id, agent)
    assert first.status == second.status == pb.APPOINTMENT_STATUS_PENDING
    await confirm(bookings, second.appointment_id)
    assert await slot_taken_by(bookings, first.appointment_id) == second.appointment_id


async def test_a_cancelled_slot_can_be_confirmed_by_another_appointment(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    first = await confirm(bookings, (await book(bookings, lead_id, agent)).appointment_id)
    second = await book(bookings, lead_id, agent, start=0.5)
    assert await slot_taken_by(bookings, second.appointment_id) == first.appointment_id
    await cancel(bookings, first.appointment_id, reason="lead rescheduled")
    confirmed = await confirm(bookings, second.appointment_id)
    assert confirmed.status == pb.APPOINTMENT_STATUS_CONFIRMED


async def test_a_completed_appointment_no_longer_holds_its_slot(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    held = await confirm(bookings, (await book(bookings, lead_id, agent)).appointment_id)
    later = await book(bookings, lead_id, agent, start=0.5)
    await complete(bookings, held.appointment_id)
    assert (await confirm(bookings, later.appointment_id)).status == pb.APPOINTMENT_STATUS_CONFIRMED


async def test_a_storm_of_confirms_with_one_key_has_exactly_one_effect(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await book(bookings, lead_id, agent)
    key = "confirm-" + booked.appointment_id

    async def attempt() -> Any:
        try:
            return await confirm(bookings, booked.appointment_id, key=key)
        except grpc.aio.AioRpcError as error:
            return refusal(error).reason

    outcomes = await asyncio.gather(*(attempt() for _ in range(25)))
    confirmed = [o for o in outcomes if isinstance(o, pb.Appointment)]
    assert confirmed, outcomes
    assert all(o == confirmed[0] for o in confirmed)
    assert (confirmed[0].status, confirmed[0].version) == (pb.APPOINTMENT_STATUS_CONFIRMED, 2)
    # PostgreSQL refuses a key's latecomers while its first call runs; never another outcome.
    assert {o for o in outcomes if isinstance(o, str)} <= {"IDEMPOTENCY_KEY_IN_USE"}
    trail = await bookings.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=booked.appointment_id))
    assert len(trail.changes) == 1


async def test_racing_confirms_of_overlapping_slots_leave_exactly_one_confirmed(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    contenders = [await book(bookings, lead_id, agent, start=i / 4, hours=3) for i in range(8)]

    async def attempt(appointment: pb.Appointment) -> str:
        try:
            return "won " + (await confirm(bookings, appointment.appointment_id)).appointment_id
        except grpc.aio.AioRpcError as error:
            return "lost to " + refusal(error).metadata["conflicting_appointment_id"]

    outcomes = await asyncio.gather(*(attempt(a) for a in contenders))
    (won,) = [o for o in outcomes if o.startswith("won ")]
    assert outcomes.count("lost to " + won.removeprefix("won ")) == len(contenders) - 1


class BlindRepository(SqlAppointmentRepository):
    """Misses confirmed appointments on its first look, as a confirm does that races
    another one committing at that moment: only the database stands in the way."""

    blind_looks: ClassVar[int] = 0

    async def get_to_confirm(self, appointment_id: str
                             ) -> tuple[Appointment, list[Appointment]]:
        appointment, overlapping = await super().get_to_confirm(appointment_id)
        if BlindRepository.blind_looks > 0:
            BlindRepository.blind_looks -= 1
            return appointment, []
        return appointment, overlapping


class BlindUnitOfWork(SqlBookingsUnitOfWork):
    def __init__(self, storage: Any, **parts: Any) -> None:
        super().__init__(storage, **parts)
        self.appointments = BlindRepository(self)


@pytest.fixture
async def blind_bookings(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> AsyncIterator[tuple[Stub, str]]:
    BlindRepository.blind_looks = 0
    env = environment(postgres_url, tmp_path)
    leads = await start_in_process(LEADS, env)
    spec = dataclasses.replace(BOOKINGS, uow_class=BlindUnitOfWork)
    running = await start_in_process(spec, {**env, "CRM_LEADS_TARGET": leads.target})
    lead = await create_lead(leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)))
    yield Stub(channel_for(running.target)), lead.lead_id
    await running.stop(grace=1, drain=0)
    await leads.stop(grace=1, drain=0)


async def test_on_postgresql_the_exclusion_constraint_refuses_what_the_check_missed(
    blind_bookings: tuple[Stub, str], agent: str
) -> None:
    stub, lead_id = blind_bookings
    first = await book(stub, lead_id, agent, start=0, hours=2)
    second = await book(stub, lead_id, agent, start=1, hours=2)
    await confirm(stub, first.appointment_id)
    BlindRepository.blind_looks = 1
    assert await slot_taken_by(stub, second.appointment_id) == first.appointment_id
    assert BlindRepository.blind_looks == 0
    assert (await get(stub, second.appointment_id)).status == pb.APPOINTMENT_STATUS_PENDING
