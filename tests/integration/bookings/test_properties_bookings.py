"""Any input to the bookings service: a success or a proper refusal naming the field,
never a crash (after tests/integration/test_properties.py)."""

from __future__ import annotations

import grpc
from crm.bookings.v1 import bookings_pb2 as pb
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.shared.clients import idempotency, new_key
from tests.integration.bookings.conftest import Stub, at, book
from tests.integration.test_properties import EXAMPLES, TEXT, proper

# Seconds since the epoch, valid Timestamps or not (the valid ones are years 1 to 9999).
SECONDS = st.one_of(st.integers(min_value=-(2**40), max_value=2**40),
                    st.sampled_from([int(at(h).timestamp()) for h in (0, 0.5, 1, 30)]))
VALID_SLOT = (int(at(0).timestamp()), int(at(0.5).timestamp()), 250_000_000)
NANOS = st.one_of(st.just(0), st.integers(min_value=-(10**9), max_value=2 * 10**9))
MUTATIONS = ("ConfirmAppointment", "CancelAppointment", "CompleteAppointment")


def stamp(seconds: int | None, nanos: int) -> timestamp_pb2.Timestamp | None:
    return None if seconds is None else timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@given(lead=st.one_of(st.none(), TEXT),
       agent_id=st.one_of(st.sampled_from(["agent-1", "Agent Ω 7", "a" * 100]), TEXT),
       notes=st.one_of(st.sampled_from(["", "Call first.\n\tBring the contract."]), TEXT),
       slot=st.one_of(st.just(VALID_SLOT), st.tuples(st.one_of(st.none(), SECONDS),
                                                      st.one_of(st.none(), SECONDS), NANOS)))
@EXAMPLES
async def test_create_appointment_stores_what_it_accepts_and_names_what_it_refuses(
    *, bookings: Stub, lead_id: str, lead: str | None, agent_id: str, notes: str,
    slot: tuple[int | None, int | None, int],
) -> None:
    start, end, nanos = slot
    request = pb.CreateAppointmentRequest(
        lead_id=lead_id if lead is None else lead, agent_id=agent_id, notes=notes,
        start_time=stamp(start, 0), end_time=stamp(end, nanos),
    )
    try:
        booked = await bookings.CreateAppointment(request, metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"lead_id", "agent_id", "start_time", "end_time", "notes"})
        return
    assert (booked.lead_id, booked.agent_id, booked.notes, booked.status) == (
        request.lead_id, agent_id, notes, pb.APPOINTMENT_STATUS_PENDING)
    assert booked.start_time == request.start_time
    assert booked.end_time.ToMicroseconds() == request.end_time.ToMicroseconds()
    got = await bookings.GetAppointment(pb.GetAppointmentRequest(
        appointment_id=booked.appointment_id))
    assert got == booked


@given(appointment_id=st.one_of(st.none(), TEXT), reason=TEXT,
       rpc=st.sampled_from(MUTATIONS))
@EXAMPLES
async def test_status_changes_refuse_bad_ids_and_reasons_cleanly(
    *, bookings: Stub, lead_id: str, agent: str, appointment_id: str | None, reason: str, rpc: str,
) -> None:
    if appointment_id is None:
        appointment_id = (await book(bookings, lead_id, agent)).appointment_id
    fields: dict[str, str] = {"appointment_id": appointment_id}
    if rpc == "CancelAppointment":
        fields["reason"] = reason
    request = getattr(pb, f"{rpc}Request")(**fields)
    try:
        changed = await getattr(bookings, rpc)(request, metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"appointment_id", "reason"})
        return
    assert changed.appointment_id == appointment_id
    assert changed.cancel_reason == fields.get("reason", "")


@given(size=st.integers(min_value=-(2**31), max_value=2**31 - 1), token=TEXT,
       status=st.integers(min_value=-3, max_value=12), lead_id=TEXT, agent_id=TEXT,
       window_start=st.one_of(st.none(), SECONDS), window_end=st.one_of(st.none(), SECONDS))
@EXAMPLES
async def test_list_appointments_bounds_every_filter(
    *, bookings: Stub, size: int, token: str, status: int, lead_id: str, agent_id: str,
    window_start: int | None, window_end: int | None,
) -> None:
    request = pb.ListAppointmentsRequest(
        page_size=size, page_token=token, status=status,  # type: ignore[arg-type]
        lead_id=lead_id, agent_id=agent_id, window_start=stamp(window_start, 0),
        window_end=stamp(window_end, 0),
    )
    try:
        page = await bookings.ListAppointments(request)
    except grpc.aio.AioRpcError as error:
        proper(error, {"page_size", "page_token", "status", "lead_id", "agent_id",
                       "window_start", "window_end"})
        return
    assert len(page.appointments) <= 200


@given(cursor=TEXT, types=st.lists(TEXT, max_size=3), ids=st.lists(TEXT, max_size=3),
       appointment_ids=st.lists(TEXT, max_size=3))
@EXAMPLES
async def test_subscribe_refuses_bad_cursors_and_filters_before_streaming(
    bookings: Stub, cursor: str, types: list[str], ids: list[str], appointment_ids: list[str]
) -> None:
    stream = bookings.Subscribe(pb.SubscribeRequest(
        after_cursor=cursor, types=types, lead_ids=ids, appointment_ids=appointment_ids))
    try:
        first = await stream.read()
    except grpc.aio.AioRpcError as error:
        proper(error, {"after_cursor", "types", "lead_ids", "appointment_ids"}
               | {f"{name}[{i}]" for i in range(3)
                  for name in ("types", "lead_ids", "appointment_ids")})
        return
    finally:
        stream.cancel()
    assert first.type == "bookmark"
