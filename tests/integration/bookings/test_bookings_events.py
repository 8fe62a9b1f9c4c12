"""Every booking, confirm, cancel and complete is an event on Subscribe, with filters."""

from __future__ import annotations

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from tests.integration.bookings.conftest import Stub, book, cancel, complete, confirm
from tests.integration.conftest import create_lead
from tests.integration.test_subscribe import take
from tests.support.rpc import refusal


async def test_each_change_is_an_event_with_the_appointment_as_it_stands_after_it(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    stream = bookings.Subscribe(pb.SubscribeRequest())
    assert (await stream.read()).type == "bookmark"
    booked = await book(bookings, lead_id, agent)
    confirmed = await confirm(bookings, booked.appointment_id, key="confirm-1")
    completed = await complete(bookings, booked.appointment_id)
    other = await book(bookings, lead_id, agent, start=3)
    cancelled = await cancel(bookings, other.appointment_id, reason="no longer needed")

    events = await take(stream, 5)
    stream.cancel()
    assert [e.type for e in events] == [
        "appointment.created", "appointment.confirmed", "appointment.completed",
        "appointment.created", "appointment.cancelled"]
    assert [e.appointment for e in events] == [booked, confirmed, completed, other, cancelled]
    assert all(e.lead_id == lead_id and e.actor == "alice" for e in events)
    assert [e.appointment_id for e in events] == [booked.appointment_id] * 3 + [
        other.appointment_id] * 2
    assert not events[0].HasField("change")
    change = events[1].change
    assert (change.from_status, change.to_status, change.idempotency_key, change.version) == (
        pb.APPOINTMENT_STATUS_PENDING, pb.APPOINTMENT_STATUS_CONFIRMED, "confirm-1", 2)
    assert events[1].occurred_at == confirmed.confirmed_at
    assert events[4].change.reason == "no longer needed"
    assert len({e.cursor for e in events}) == 5


async def test_subscribers_filter_by_appointment_lead_and_type_and_still_get_bookmarks(
    bookings: Stub, leads: leads_pb2_grpc.LeadsServiceStub, lead_id: str, agent: str
) -> None:
    mine = await book(bookings, lead_id, agent)
    other_lead = (await create_lead(leads)).lead_id
    by_appointment = bookings.Subscribe(pb.SubscribeRequest(appointment_ids=[mine.appointment_id]))
    by_lead = bookings.Subscribe(pb.SubscribeRequest(lead_ids=[other_lead]))
    by_type = bookings.Subscribe(pb.SubscribeRequest(types=["appointment.confirmed"]))
    for stream in (by_appointment, by_lead, by_type):
        assert (await stream.read()).type == "bookmark"

    theirs = await book(bookings, other_lead, agent, start=2)
    await confirm(bookings, theirs.appointment_id)
    await cancel(bookings, mine.appointment_id)

    (about_mine,) = await take(by_appointment, 1)
    assert (about_mine.type, about_mine.appointment_id) == ("appointment.cancelled",
                                                            mine.appointment_id)
    assert [(e.type, e.lead_id) for e in await take(by_lead, 2)] == [
        ("appointment.created", other_lead), ("appointment.confirmed", other_lead)]
    (confirmed,) = await take(by_type, 1)
    assert confirmed.appointment_id == theirs.appointment_id
    # Nothing else matches, yet heartbeats keep coming.
    (heartbeat,) = await take(by_type, 1, skip_bookmarks=False)
    assert heartbeat.type == "bookmark"
    for stream in (by_appointment, by_lead, by_type):
        stream.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"types": ["appointment.moved"]}, "types[0]"),
        ({"types": ["lead.created"]}, "types[0]"),
        ({"appointment_ids": ["x"] * 101}, "appointment_ids"),
        ({"appointment_ids": [""]}, "appointment_ids[0]"),
        ({"lead_ids": ["x"] * 101}, "lead_ids"),
    ],
)
async def test_unknown_event_types_and_oversized_filters_are_refused_naming_the_field(
    bookings: Stub, request_fields: dict[str, list[str]], field: str
) -> None:
    stream = bookings.Subscribe(pb.SubscribeRequest(**request_fields))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stream.read()
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in refusal(failed.value).fields


async def test_a_refused_change_writes_no_event(bookings: Stub, lead_id: str, agent: str) -> None:
    held = await confirm(bookings, (await book(bookings, lead_id, agent)).appointment_id)
    clashing = await book(bookings, lead_id, agent, start=0.5)
    stream = bookings.Subscribe(pb.SubscribeRequest())
    await stream.read()
    with pytest.raises(grpc.aio.AioRpcError):
        await confirm(bookings, clashing.appointment_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await confirm(bookings, held.appointment_id)
    await cancel(bookings, clashing.appointment_id)
    (event,) = await take(stream, 1)
    assert (event.type, event.appointment_id) == ("appointment.cancelled",
                                                  clashing.appointment_id)
    stream.cancel()
