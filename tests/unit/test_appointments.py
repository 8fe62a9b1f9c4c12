"""The appointment rules, with no IO."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.bookings.domain import (
    AlreadyCancelled,
    AlreadyConfirmed,
    Appointment,
    AppointmentChange,
    AppointmentChanged,
    AppointmentCreated,
    AppointmentStatus,
    InvalidStatusTransition,
    SlotTaken,
)
from services.shared.errors import InvalidArgument

NOW = datetime(2031, 3, 3, 8, 0, tzinfo=UTC)
NINE = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)
S = AppointmentStatus
_ids = iter(range(1, 1_000_000))


def new_appointment(
    start: float = 0, hours: float = 1, *, agent_id: str = "agent-1", **fields: object
) -> Appointment:
    """A PENDING appointment from `start` hours after 09:00, lasting `hours`."""
    values: dict[str, object] = {
        "lead_id": "lead-1", "agent_id": agent_id, "notes": "",
        "start_time": NINE + timedelta(hours=start),
        "end_time": NINE + timedelta(hours=start + hours),
    }
    values.update(fields)
    return Appointment.book(appointment_id=f"appointment-{next(_ids)}", actor="alice", now=NOW,
                            **values)  # type: ignore[arg-type]


def confirmed(start: float = 0, hours: float = 1, agent_id: str = "agent-1") -> Appointment:
    appointment = new_appointment(start, hours, agent_id=agent_id)
    appointment.confirm(actor="alice", now=NOW, idempotency_key="k0")
    appointment.pull_events()
    return appointment


def in_status(status: AppointmentStatus) -> Appointment:
    appointment = new_appointment()
    if status is S.CANCELLED:
        appointment.cancel(actor="alice", now=NOW, idempotency_key="k0")
    elif status is not S.PENDING:
        appointment.confirm(actor="alice", now=NOW, idempotency_key="k1")
        if status is S.COMPLETED:
            appointment.complete(actor="alice", now=NOW, idempotency_key="k2")
    appointment.pull_events()
    return appointment


def test_a_new_appointment_is_pending_at_version_one_and_records_its_booking() -> None:
    appointment = new_appointment(notes="Bring the contract")
    assert (appointment.status, appointment.version, appointment.created_by) == (
        S.PENDING, 1, "alice")
    assert appointment.created_at == appointment.updated_at == NOW
    assert appointment.confirmed_at is None and appointment.confirmed_by == ""
    (event,) = appointment.pull_events()
    assert isinstance(event, AppointmentCreated) and event.appointment == appointment
    assert appointment.pull_events() == []


def test_a_booking_with_bad_fields_is_refused_naming_every_field() -> None:
    with pytest.raises(InvalidArgument) as refused:
        new_appointment(lead_id="", agent_id="", notes="x" * 2001, hours=-1)
    assert {v.field for v in refused.value.violations} == {
        "lead_id", "agent_id", "end_time", "notes"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"start_time": None}, "start_time"),
        ({"end_time": None}, "end_time"),
        ({"hours": 0}, "end_time"),
        ({"hours": 24 + 1 / 3600}, "end_time"),
        ({"agent_id": "a" * 101}, "agent_id"),
        ({"agent_id": "agent\n1"}, "agent_id"),
        ({"agent_id": "agent-1 "}, "agent_id"),
        ({"lead_id": "   "}, "lead_id"),
        ({"lead_id": "l" * 65}, "lead_id"),
    ],
)
def test_a_booking_with_one_bad_field_names_it(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        new_appointment(**fields)  # type: ignore[arg-type]
    assert [v.field for v in refused.value.violations] == [field]


def test_the_longest_fields_and_a_whole_day_are_accepted() -> None:
    appointment = new_appointment(hours=24, agent_id="a" * 100, notes="n" * 2000,
                                  lead_id="l" * 64)
    assert appointment.end_time - appointment.start_time == timedelta(hours=24)


def test_confirming_records_who_and_when_and_an_audit_change_and_an_event() -> None:
    appointment = new_appointment()
    appointment.pull_events()
    later = NOW + timedelta(minutes=5)
    change = appointment.confirm(actor="bob", now=later, idempotency_key="key-1")
    assert change == AppointmentChange(appointment.appointment_id, S.PENDING, S.CONFIRMED, "bob",
                                       later, "key-1", "", 2)
    assert (appointment.status, appointment.version, appointment.confirmed_by,
            appointment.confirmed_at, appointment.updated_at) == (S.CONFIRMED, 2, "bob", later,
                                                                  later)
    (event,) = appointment.pull_events()
    assert isinstance(event, AppointmentChanged)
    assert event.change == change and event.appointment.status is S.CONFIRMED


def test_confirming_a_confirmed_appointment_is_already_confirmed() -> None:
    appointment = confirmed()
    with pytest.raises(AlreadyConfirmed) as refused:
        appointment.confirm(actor="bob", now=NOW, idempotency_key="k9")
    assert refused.value.metadata["confirmed_by"] == "alice"
    assert appointment.version == 2 and appointment.pull_events() == []


def test_cancelling_records_who_when_and_why() -> None:
    for appointment in (in_status(S.PENDING), in_status(S.CONFIRMED)):
        was, version = appointment.status, appointment.version
        change = appointment.cancel(actor="bob", now=NOW, idempotency_key="k", reason="ill")
        assert (change.from_status, change.to_status, change.reason, change.version) == (
            was, S.CANCELLED, "ill", version + 1)
        assert (appointment.cancelled_by, appointment.cancelled_at, appointment.cancel_reason) == (
            "bob", NOW, "ill")


def test_cancelling_a_cancelled_appointment_is_already_cancelled() -> None:
    with pytest.raises(AlreadyCancelled):
        in_status(S.CANCELLED).cancel(actor="bob", now=NOW, idempotency_key="k")


def test_a_cancel_reason_longer_than_500_characters_is_refused_before_anything_else() -> None:
    appointment = in_status(S.CANCELLED)
    with pytest.raises(InvalidArgument) as refused:
        appointment.cancel(actor="bob", now=NOW, idempotency_key="k", reason="r" * 501)
    assert [v.field for v in refused.value.violations] == ["reason"]


def test_completing_a_confirmed_appointment_records_who_and_when() -> None:
    appointment = confirmed()
    change = appointment.complete(actor="bob", now=NOW, idempotency_key="k")
    assert (change.from_status, change.to_status, appointment.version) == (
        S.CONFIRMED, S.COMPLETED, 3)
    assert (appointment.completed_by, appointment.completed_at) == ("bob", NOW)


def _confirm(a: Appointment) -> object:
    return a.confirm(actor="bob", now=NOW, idempotency_key="k")


def _cancel(a: Appointment) -> object:
    return a.cancel(actor="bob", now=NOW, idempotency_key="k")


def _complete(a: Appointment) -> object:
    return a.complete(actor="bob", now=NOW, idempotency_key="k")


@pytest.mark.parametrize(
    ("status", "move"),
    [(S.PENDING, _complete), (S.COMPLETED, _complete), (S.CANCELLED, _complete),
     (S.CANCELLED, _confirm), (S.COMPLETED, _confirm), (S.COMPLETED, _cancel)],
)
def test_moves_the_status_diagram_lacks_are_invalid_transitions(
    status: AppointmentStatus, move: Callable[[Appointment], object]
) -> None:
    appointment = in_status(status)
    with pytest.raises(InvalidStatusTransition) as refused:
        move(appointment)
    assert refused.value.metadata["from_status"] == status.value
    assert (appointment.status, appointment.pull_events()) == (status, [])


@pytest.mark.parametrize(
    ("start", "hours"),
    [(0, 1), (0.5, 1), (-0.5, 1), (0.25, 0.5), (-1, 3)],
)
def test_a_slot_that_overlaps_a_confirmed_one_of_the_agent_is_taken(
    start: float, hours: float
) -> None:
    held = confirmed(0, 1)
    appointment = new_appointment(start, hours)
    with pytest.raises(SlotTaken) as refused:
        appointment.confirm(actor="bob", now=NOW, idempotency_key="k", booked=[held])
    assert refused.value.metadata["conflicting_appointment_id"] == held.appointment_id
    assert refused.value.taken_by is held
    assert appointment.status is S.PENDING and appointment.version == 1


@pytest.mark.parametrize(
    ("start", "hours", "agent_id"),
    [(1, 1, "agent-1"), (-1, 1, "agent-1"), (0, 1, "agent-2")],
)
def test_back_to_back_slots_and_other_agents_slots_are_free(
    start: float, hours: float, agent_id: str
) -> None:
    held = confirmed(0, 1)
    appointment = new_appointment(start, hours, agent_id=agent_id)
    assert not appointment.overlaps(held) and not held.overlaps(appointment)
    appointment.confirm(actor="bob", now=NOW, idempotency_key="k", booked=[held])
    assert appointment.status is S.CONFIRMED


def test_only_confirmed_appointments_hold_a_slot() -> None:
    others = [in_status(S.PENDING), in_status(S.CANCELLED), in_status(S.COMPLETED)]
    appointment = new_appointment()
    assert all(appointment.overlaps(other) for other in others)
    appointment.confirm(actor="bob", now=NOW, idempotency_key="k", booked=others)
    assert appointment.status is S.CONFIRMED


def test_the_state_is_checked_before_the_slot() -> None:
    appointment = confirmed()
    with pytest.raises(AlreadyConfirmed):
        appointment.confirm(actor="bob", now=NOW, idempotency_key="k", booked=[confirmed()])
