"""The bookings service through a real gRPC server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from google.protobuf import timestamp_pb2

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from services.shared.server import RunningService
from tests.integration.bookings.conftest import (
    Stub,
    appointment_in,
    at,
    book,
    booking,
    cancel,
    complete,
    confirm,
    get,
)
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import start_in_process


async def refused_by(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, reason, ErrorInfo metadata) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call  # type: ignore[misc]
    found = refusal(failed.value)
    assert found.domain == "bookings"
    return found.code, found.reason, found.metadata


async def test_a_booked_appointment_is_pending_at_version_one_and_names_who_booked_it(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await book(bookings, lead_id, agent, start=1, hours=1.5, notes="Demo of the CRM")
    assert (booked.lead_id, booked.agent_id, booked.notes) == (lead_id, agent, "Demo of the CRM")
    assert (booked.status, booked.version, booked.created_by) == (
        pb.APPOINTMENT_STATUS_PENDING, 1, "alice")
    assert booked.start_time == timestamp(at(1)) and booked.end_time == timestamp(at(2.5))
    assert booked.created_at.seconds > 0 and booked.updated_at == booked.created_at
    assert not booked.HasField("confirmed_at") and booked.confirmed_by == ""
    assert await get(bookings, booked.appointment_id) == booked


async def test_a_booking_with_bad_fields_is_refused_naming_every_field_and_nothing_is_stored(
    bookings: Stub,
) -> None:
    request = pb.CreateAppointmentRequest(
        lead_id="", agent_id="", start_time=timestamp(at(2)), end_time=timestamp(at(1)),
        notes="n" * 2001,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await bookings.CreateAppointment(request, metadata=idempotency(new_key()))
    refused = refusal(failed.value)
    assert (refused.code, refused.domain) == (grpc.StatusCode.INVALID_ARGUMENT, "bookings")
    assert set(refused.fields) == {"lead_id", "agent_id", "end_time", "notes"}
    assert refused.fields["end_time"] == "must come after start_time"
    listed = await bookings.ListAppointments(pb.ListAppointmentsRequest())
    assert list(listed.appointments) == []


@pytest.mark.parametrize(
    ("fields", "field", "description"),
    [
        ({"start_time": None}, "start_time", "is required"),
        ({"end_time": None}, "end_time", "is required"),
        ({"end_time": timestamp(at(24.01))}, "end_time", "at most 24 hours after start_time"),
        ({"end_time": timestamp(at(0))}, "end_time", "must come after start_time"),
        ({"agent_id": "a" * 101}, "agent_id", "at most 100 characters"),
        ({"agent_id": " agent"}, "agent_id",
         "must be printable ASCII characters other than space, '/' and ':'"),
        ({"lead_id": "l" * 65}, "lead_id", "at most 64 characters"),
        ({"start_time": timestamp_pb2.Timestamp(seconds=10**12)}, "start_time",
         "not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)"),
    ],
    ids=["no start", "no end", "over 24 hours", "ends as it starts", "long agent",
         "padded agent", "long lead", "year 33658"],
)
async def test_a_booking_with_one_bad_field_is_refused_with_that_field_and_why(
    bookings: Stub, lead_id: str, fields: dict[str, object], field: str, description: str
) -> None:
    request = booking(lead_id, "agent-1")
    for name, value in fields.items():
        if value is None:
            request.ClearField(name)  # type: ignore[arg-type]
        elif isinstance(value, timestamp_pb2.Timestamp):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await bookings.CreateAppointment(request, metadata=idempotency(new_key()))
    assert refusal(failed.value).fields == {field: description}


async def test_an_appointment_may_last_exactly_24_hours(bookings: Stub, lead_id: str) -> None:
    booked = await book(bookings, lead_id, "agent-1", start=0, hours=24)
    assert booked.end_time == timestamp(at(24))


async def test_booking_for_an_unknown_lead_is_not_found_and_the_refusal_is_replayed(
    bookings: Stub,
) -> None:
    key = new_key()
    request = booking("no-such-lead", "agent-1")
    calls = []
    for _ in range(2):
        calls.append(call := bookings.CreateAppointment(request, metadata=idempotency(key)))
        assert await refused_by(call) == (grpc.StatusCode.NOT_FOUND, "LEAD_NOT_FOUND",
                                          {"lead_id": "no-such-lead"})
    first, again = calls
    assert "idempotent-replayed" not in dict(await first.initial_metadata())
    assert dict(await again.initial_metadata())["idempotent-replayed"] == "true"


@pytest.mark.parametrize("rpc", ["GetAppointment", "ConfirmAppointment", "CancelAppointment",
                                 "CompleteAppointment", "ListAppointmentChanges"])
async def test_an_unknown_appointment_is_not_found_with_its_id_in_the_error(
    bookings: Stub, rpc: str
) -> None:
    request = getattr(pb, f"{rpc}Request")(appointment_id="missing")
    call = getattr(bookings, rpc)(request, metadata=idempotency(new_key()))
    assert await refused_by(call) == (grpc.StatusCode.NOT_FOUND, "APPOINTMENT_NOT_FOUND",
                                      {"appointment_id": "missing"})


async def test_confirming_records_who_confirmed_and_when_and_leaves_an_audit_record(
    bookings_server: RunningService, channel_for: Callable[..., grpc.aio.Channel],
    lead_id: str, agent: str,
) -> None:
    alice = Stub(channel_for(bookings_server.target, "alice"))
    bob = Stub(channel_for(bookings_server.target, "bob"))
    booked = await book(alice, lead_id, agent)
    confirmed = await confirm(bob, booked.appointment_id, key="confirm-key")
    assert (confirmed.status, confirmed.version, confirmed.confirmed_by) == (
        pb.APPOINTMENT_STATUS_CONFIRMED, 2, "bob")
    assert confirmed.confirmed_at == confirmed.updated_at
    assert confirmed.confirmed_at.ToDatetime() >= booked.created_at.ToDatetime()
    assert await get(alice, booked.appointment_id) == confirmed

    trail = await alice.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=booked.appointment_id))
    (change,) = trail.changes
    assert (change.appointment_id, change.from_status, change.to_status, change.actor,
            change.idempotency_key, change.version, change.reason) == (
        booked.appointment_id, pb.APPOINTMENT_STATUS_PENDING, pb.APPOINTMENT_STATUS_CONFIRMED,
        "bob", "confirm-key", 2, "")
    assert change.changed_at == confirmed.confirmed_at


async def test_a_retried_confirm_is_replayed_and_a_new_confirm_is_already_confirmed(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await book(bookings, lead_id, agent)
    key = new_key()
    confirmed = await confirm(bookings, booked.appointment_id, key=key)
    again = bookings.ConfirmAppointment(
        pb.ConfirmAppointmentRequest(appointment_id=booked.appointment_id),
        metadata=idempotency(key),
    )
    assert await again == confirmed
    assert dict(await again.initial_metadata())["idempotent-replayed"] == "true"

    code, reason, metadata = await refused_by(confirm(bookings, booked.appointment_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_CONFIRMED")
    assert metadata["confirmed_by"] == "alice"
    trail = await bookings.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=booked.appointment_id))
    assert len(trail.changes) == 1


async def test_cancelling_records_who_when_and_why_and_a_second_cancel_is_already_cancelled(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    pending = await book(bookings, lead_id, agent, start=0)
    confirmed = await confirm(bookings, (await book(bookings, lead_id, agent, start=2))
                              .appointment_id)
    for appointment, was in ((pending, pb.APPOINTMENT_STATUS_PENDING),
                             (confirmed, pb.APPOINTMENT_STATUS_CONFIRMED)):
        cancelled = await cancel(bookings, appointment.appointment_id, reason="Lead is ill",
                                 key=f"cancel-{appointment.appointment_id}")
        assert (cancelled.status, cancelled.cancelled_by, cancelled.cancel_reason) == (
            pb.APPOINTMENT_STATUS_CANCELLED, "alice", "Lead is ill")
        assert cancelled.cancelled_at == cancelled.updated_at
        assert cancelled.version == appointment.version + 1
        trail = await bookings.ListAppointmentChanges(
            pb.ListAppointmentChangesRequest(appointment_id=appointment.appointment_id))
        last = trail.changes[-1]
        assert (last.from_status, last.to_status, last.reason, last.idempotency_key) == (
            was, pb.APPOINTMENT_STATUS_CANCELLED, "Lead is ill",
            f"cancel-{appointment.appointment_id}")
        code, reason, _ = await refused_by(cancel(bookings, appointment.appointment_id))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_CANCELLED")


async def test_a_cancel_reason_longer_than_500_characters_is_refused(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await book(bookings, lead_id, agent)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await cancel(bookings, booked.appointment_id, reason="r" * 501)
    assert refusal(failed.value).fields == {"reason": "at most 500 characters"}
    assert (await get(bookings, booked.appointment_id)).status == pb.APPOINTMENT_STATUS_PENDING


async def test_completing_a_confirmed_appointment_records_who_and_when(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await confirm(bookings, (await book(bookings, lead_id, agent)).appointment_id)
    completed = await complete(bookings, booked.appointment_id)
    assert (completed.status, completed.version, completed.completed_by) == (
        pb.APPOINTMENT_STATUS_COMPLETED, 3, "alice")
    assert completed.completed_at == completed.updated_at
    assert completed.confirmed_by == "alice"
    trail = await bookings.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=booked.appointment_id))
    assert [(c.from_status, c.to_status) for c in trail.changes] == [
        (pb.APPOINTMENT_STATUS_PENDING, pb.APPOINTMENT_STATUS_CONFIRMED),
        (pb.APPOINTMENT_STATUS_CONFIRMED, pb.APPOINTMENT_STATUS_COMPLETED)]


@pytest.mark.parametrize(
    ("status", "move"),
    [
        (pb.APPOINTMENT_STATUS_PENDING, complete),
        (pb.APPOINTMENT_STATUS_COMPLETED, complete),
        (pb.APPOINTMENT_STATUS_CANCELLED, complete),
        (pb.APPOINTMENT_STATUS_CANCELLED, confirm),
        (pb.APPOINTMENT_STATUS_COMPLETED, confirm),
        (pb.APPOINTMENT_STATUS_COMPLETED, cancel),
    ],
    ids=lambda x: pb.AppointmentStatus.Name(x) if isinstance(x, int) else x.__name__,
)
async def test_moves_the_status_diagram_lacks_are_invalid_transitions_and_change_nothing(
    bookings: Stub, lead_id: str, agent: str, status: int,
    move: Callable[[Stub, str], Awaitable[pb.Appointment]],
) -> None:
    appointment = await appointment_in(bookings, lead_id, agent, status)
    code, reason, metadata = await refused_by(move(bookings, appointment.appointment_id))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATUS_TRANSITION")
    assert metadata["appointment_id"] == appointment.appointment_id
    assert await get(bookings, appointment.appointment_id) == appointment


async def test_list_filters_by_lead_agent_status_and_the_window_they_overlap_in_start_order(
    bookings: Stub, lead_id: str, agent: str, unique: Callable[[str], str],
    leads: leads_pb2_grpc.LeadsServiceStub,
) -> None:
    other_lead = (await create_lead(leads)).lead_id
    other_agent = unique("agent-")
    late = await book(bookings, lead_id, agent, start=5)
    early = await confirm(bookings, (await book(bookings, lead_id, agent, start=1)).appointment_id)
    theirs = await book(bookings, other_lead, other_agent, start=3)

    async def listed(**filters: object) -> list[str]:
        found = await bookings.ListAppointments(pb.ListAppointmentsRequest(**filters))  # type: ignore[arg-type]
        return [a.appointment_id for a in found.appointments]

    ids = (early.appointment_id, theirs.appointment_id, late.appointment_id)
    assert await listed() == list(ids)
    assert await listed(lead_id=lead_id) == [early.appointment_id, late.appointment_id]
    assert await listed(agent_id=other_agent) == [theirs.appointment_id]
    assert await listed(status=pb.APPOINTMENT_STATUS_CONFIRMED) == [early.appointment_id]
    assert await listed(status=pb.APPOINTMENT_STATUS_PENDING,
                        lead_id=lead_id) == [late.appointment_id]
    # Windows are half-open, as slots are: [2, 3) misses both 1 to 2 and 3 to 4.
    assert await listed(window_start=timestamp(at(2)), window_end=timestamp(at(3))) == []
    assert await listed(window_start=timestamp(at(1.5)), window_end=timestamp(at(3.5))) == [
        early.appointment_id, theirs.appointment_id]
    assert await listed(window_start=timestamp(at(4))) == [late.appointment_id]
    assert await listed(window_end=timestamp(at(1.01))) == [early.appointment_id]


async def test_list_pages_in_start_order_and_refuses_a_token_of_other_filters(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    # Equal start times are ordered by id, so pages never skip or repeat one.
    booked = [await book(bookings, lead_id, agent, start=i // 2) for i in range(5)]
    expected = sorted(booked, key=lambda a: (a.start_time.ToDatetime(), a.appointment_id))
    seen: list[str] = []
    token = ""
    while True:
        page = await bookings.ListAppointments(
            pb.ListAppointmentsRequest(agent_id=agent, page_size=2, page_token=token))
        seen += [a.appointment_id for a in page.appointments]
        token = page.next_page_token
        if not token:
            break
    assert seen == [a.appointment_id for a in expected]

    first = await bookings.ListAppointments(pb.ListAppointmentsRequest(agent_id=agent,
                                                                       page_size=1))
    for request in (
        pb.ListAppointmentsRequest(agent_id="someone-else", page_token=first.next_page_token),
        pb.ListAppointmentsRequest(page_token="garbage!"),
        pb.ListAppointmentsRequest(page_size=-1),
        pb.ListAppointmentsRequest(status=99),  # type: ignore[arg-type]
        pb.ListAppointmentsRequest(window_start=timestamp(at(2)), window_end=timestamp(at(2))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await bookings.ListAppointments(request)
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert set(refusal(failed.value).fields) <= {"page_token", "page_size", "status",
                                                     "window_end"}


async def test_appointment_changes_page_oldest_first(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    booked = await book(bookings, lead_id, agent)
    await confirm(bookings, booked.appointment_id)
    await cancel(bookings, booked.appointment_id, reason="moved to next week")
    first = await bookings.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=booked.appointment_id, page_size=1))
    rest = await bookings.ListAppointmentChanges(pb.ListAppointmentChangesRequest(
        appointment_id=booked.appointment_id, page_size=1, page_token=first.next_page_token))
    assert [c.version for c in [*first.changes, *rest.changes]] == [2, 3]
    assert rest.next_page_token == ""
    fresh = await book(bookings, lead_id, agent, start=3)
    none = await bookings.ListAppointmentChanges(
        pb.ListAppointmentChangesRequest(appointment_id=fresh.appointment_id))
    assert list(none.changes) == [] and none.next_page_token == ""


async def test_every_mutating_call_needs_a_key_and_every_call_a_token(
    bookings_server: RunningService, channel_for: Callable[..., grpc.aio.Channel], lead_id: str
) -> None:
    stub = Stub(channel_for(bookings_server.target))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.CreateAppointment(booking(lead_id, "agent-1"))
    assert refusal(failed.value).reason == "IDEMPOTENCY_KEY_MISSING"
    async with grpc.aio.insecure_channel(bookings_server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await Stub(channel).ListAppointments(pb.ListAppointmentsRequest())
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED


def _starting(delta: timedelta, lead_id: str, agent_id: str) -> pb.CreateAppointmentRequest:
    start = datetime.now(UTC) + delta
    return pb.CreateAppointmentRequest(lead_id=lead_id, agent_id=agent_id,
                                       start_time=timestamp(start),
                                       end_time=timestamp(start + timedelta(minutes=30)))


async def test_an_appointment_that_starts_in_the_past_is_refused_naming_start_time(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    late = bookings.CreateAppointment(_starting(-timedelta(hours=1), lead_id, agent),
                                      metadata=idempotency(new_key()))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await late
    refused = refusal(failed.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is in the past" in refused.fields["start_time"]
    listed = await bookings.ListAppointments(pb.ListAppointmentsRequest(lead_id=lead_id))
    assert list(listed.appointments) == []


async def test_a_booking_for_a_moment_ago_is_within_the_grace(
    bookings: Stub, lead_id: str, agent: str
) -> None:
    # Made for "now", it arrives a little after: the default grace is 5 minutes.
    booked = await bookings.CreateAppointment(_starting(-timedelta(minutes=1), lead_id, agent),
                                              metadata=idempotency(new_key()))
    assert booked.status == pb.APPOINTMENT_STATUS_PENDING


async def test_the_grace_is_configurable(
    service_env: dict[str, str], leads_server: RunningService,
    channel_for: Callable[..., grpc.aio.Channel], lead_id: str, agent: str,
) -> None:
    env = {**service_env, "CRM_LEADS_TARGET": leads_server.target,
           "CRM_BOOKING_PAST_GRACE_SECONDS": "0"}
    strict = await start_in_process(BOOKINGS, env)
    try:
        stub = Stub(channel_for(strict.target))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.CreateAppointment(_starting(-timedelta(seconds=30), lead_id, agent),
                                         metadata=idempotency(new_key()))
        assert "start_time" in refusal(failed.value).fields
    finally:
        await strict.stop(grace=1, drain=0)
