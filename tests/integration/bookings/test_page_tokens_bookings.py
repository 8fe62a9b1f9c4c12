"""Page tokens of bookings' lists are tamper-proof, on SQLite and PostgreSQL."""

from __future__ import annotations

from crm.bookings.v1 import bookings_pb2 as pb

from tests.integration.bookings.conftest import Stub, book, cancel, confirm
from tests.support.forgery import assert_every_forgery_refused


async def test_forged_tokens_are_refused_on_list_appointments(
    bookings: Stub, lead_id: str, agent: str,
) -> None:
    for hour in range(3):
        await book(bookings, lead_id, agent, start=hour * 2)
    genuine = (await bookings.ListAppointments(pb.ListAppointmentsRequest(
        agent_id=agent, page_size=1))).next_page_token
    await assert_every_forgery_refused(
        bookings.ListAppointments,
        lambda token: pb.ListAppointmentsRequest(agent_id=agent, page_token=token),
        {"list": "appointments", "lead_id": "", "agent_id": agent, "status": None,
         "window_start": None, "window_end": None},
        time_ordered=True, genuine=genuine)


async def test_forged_tokens_are_refused_on_list_appointment_changes(
    bookings: Stub, lead_id: str, agent: str,
) -> None:
    made = await book(bookings, lead_id, agent)
    await confirm(bookings, made.appointment_id)
    await cancel(bookings, made.appointment_id)
    genuine = (await bookings.ListAppointmentChanges(pb.ListAppointmentChangesRequest(
        appointment_id=made.appointment_id, page_size=1))).next_page_token
    await assert_every_forgery_refused(
        bookings.ListAppointmentChanges,
        lambda token: pb.ListAppointmentChangesRequest(appointment_id=made.appointment_id,
                                                       page_token=token),
        {"list": "appointment_changes", "appointment_id": made.appointment_id},
        time_ordered=False, genuine=genuine)
