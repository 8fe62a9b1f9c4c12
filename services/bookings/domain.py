"""Appointments between an agent and a lead, with no IO.

    PENDING → CONFIRMED → COMPLETED
    PENDING | CONFIRMED → CANCELLED;   COMPLETED and CANCELLED are final

Confirming an appointment that is already confirmed is ALREADY_CONFIRMED,
cancelling one that is already cancelled ALREADY_CANCELLED; any other move the
diagram lacks is INVALID_STATUS_TRANSITION. Two confirmed appointments of one
agent never overlap (SLOT_TAKEN); slots are half-open, so one may end exactly
when the next starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from crm.bookings.v1 import bookings_pb2

from services.shared import errors, rules, validation

# The contract's rules (crm.common.v1.FieldRules on CreateAppointmentRequest…).
MAX_AGENT_ID_LENGTH = rules.of(bookings_pb2.CreateAppointmentRequest, "agent_id").max_length
MAX_NOTES_LENGTH = rules.of(bookings_pb2.CreateAppointmentRequest, "notes").max_length
MAX_REASON_LENGTH = rules.of(bookings_pb2.CancelAppointmentRequest, "reason").max_length
MAX_DURATION = timedelta(hours=24)


class AppointmentStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


MOVES = {
    AppointmentStatus.PENDING: (AppointmentStatus.CONFIRMED, AppointmentStatus.CANCELLED),
    AppointmentStatus.CONFIRMED: (AppointmentStatus.COMPLETED, AppointmentStatus.CANCELLED),
    AppointmentStatus.COMPLETED: (),
    AppointmentStatus.CANCELLED: (),
}


class AppointmentNotFound(errors.NotFound):
    reason = "APPOINTMENT_NOT_FOUND"

    def __init__(self, appointment_id: str) -> None:
        super().__init__(f"appointment {appointment_id!r} does not exist",
                         metadata={"appointment_id": appointment_id})
        self.appointment_id = appointment_id


class AlreadyConfirmed(errors.FailedPrecondition):
    reason = "ALREADY_CONFIRMED"

    def __init__(self, appointment: Appointment) -> None:
        super().__init__(
            f"appointment {appointment.appointment_id!r} is already confirmed "
            f"(by {appointment.confirmed_by})",
            metadata={"appointment_id": appointment.appointment_id,
                      "confirmed_by": appointment.confirmed_by},
        )


class AlreadyCancelled(errors.FailedPrecondition):
    reason = "ALREADY_CANCELLED"

    def __init__(self, appointment: Appointment) -> None:
        super().__init__(
            f"appointment {appointment.appointment_id!r} is already cancelled "
            f"(by {appointment.cancelled_by})",
            metadata={"appointment_id": appointment.appointment_id,
                      "cancelled_by": appointment.cancelled_by},
        )


class InvalidStatusTransition(errors.FailedPrecondition):
    reason = "INVALID_STATUS_TRANSITION"

    def __init__(self, appointment_id: str, current: AppointmentStatus,
                 target: AppointmentStatus) -> None:
        allowed = ", ".join(s.value for s in MOVES[current]) or "none, it is final"
        super().__init__(
            f"appointment {appointment_id!r} cannot move from {current.value} to "
            f"{target.value} (allowed: {allowed})",
            metadata={"appointment_id": appointment_id, "from_status": current.value,
                      "to_status": target.value},
        )


class SlotTaken(errors.FailedPrecondition):
    reason = "SLOT_TAKEN"

    def __init__(self, appointment: Appointment, taken_by: Appointment) -> None:
        super().__init__(
            f"agent {appointment.agent_id!r} already has confirmed appointment "
            f"{taken_by.appointment_id!r} from {taken_by.start_time.isoformat()} to "
            f"{taken_by.end_time.isoformat()}, which overlaps this one",
            metadata={"appointment_id": appointment.appointment_id,
                      "agent_id": appointment.agent_id,
                      "conflicting_appointment_id": taken_by.appointment_id},
            violations=[errors.Violation(
                type="SLOT_TAKEN", subject=f"appointments/{taken_by.appointment_id}",
                description="a confirmed appointment of the same agent overlaps this one",
            )],
        )
        self.taken_by = taken_by


def check_booking(
    *,
    lead_id: str,
    agent_id: str,
    start_time: datetime | None,
    end_time: datetime | None,
    notes: str,
    not_before: datetime | None = None,
) -> None:
    """Refuse a booking request with InvalidArgument naming every bad field.

    `not_before`: the earliest start accepted (now, less a small grace), so an
    appointment is never booked in the past.
    """
    found = errors.Violations()
    for field_name, value, longest in (("lead_id", lead_id, validation.MAX_ID_LENGTH),
                                       ("agent_id", agent_id, MAX_AGENT_ID_LENGTH)):
        problem = id_problem(value, longest)
        if problem is not None:
            found.add(field_name, problem)
    if start_time is None:
        found.add("start_time", "is required")
    elif not_before is not None and start_time < not_before:
        found.add("start_time", "is in the past; appointments start from now on")
    if end_time is None:
        found.add("end_time", "is required")
    if start_time is not None and end_time is not None:
        if end_time <= start_time:
            found.add("end_time", "must come after start_time")
        elif end_time - start_time > MAX_DURATION:
            found.add("end_time", "at most 24 hours after start_time")
    try:
        validation.text(notes, "notes", max_length=MAX_NOTES_LENGTH)
    except errors.InvalidArgument as refused:
        for violation in refused.violations:
            found.add(violation.field, violation.description)
    found.raise_if_any()


def check_reason(reason: str) -> None:
    validation.text(reason, "reason", max_length=MAX_REASON_LENGTH)


def id_problem(value: str, longest: int) -> str | None:
    """What is wrong with an id (as of a lead or an agent), if anything."""
    return validation.id_problem(value, longest)


@dataclass(frozen=True)
class AppointmentChange:
    appointment_id: str
    from_status: AppointmentStatus
    to_status: AppointmentStatus
    actor: str
    changed_at: datetime
    idempotency_key: str
    reason: str
    version: int


@dataclass(frozen=True)
class AppointmentCreated:
    appointment: Appointment


@dataclass(frozen=True)
class AppointmentChanged:
    appointment: Appointment
    change: AppointmentChange


AppointmentEvent = AppointmentCreated | AppointmentChanged


@dataclass
class Appointment:
    appointment_id: str
    lead_id: str
    agent_id: str
    start_time: datetime
    end_time: datetime
    notes: str
    status: AppointmentStatus
    version: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    confirmed_by: str = ""
    confirmed_at: datetime | None = None
    cancelled_by: str = ""
    cancelled_at: datetime | None = None
    cancel_reason: str = ""
    completed_by: str = ""
    completed_at: datetime | None = None
    events: list[AppointmentEvent] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def book(
        cls,
        *,
        appointment_id: str,
        lead_id: str,
        agent_id: str,
        start_time: datetime | None,
        end_time: datetime | None,
        notes: str,
        actor: str,
        now: datetime,
    ) -> Appointment:
        """A PENDING appointment, or InvalidArgument naming every bad field."""
        check_booking(lead_id=lead_id, agent_id=agent_id, start_time=start_time,
                      end_time=end_time, notes=notes)
        assert start_time is not None and end_time is not None
        appointment = cls(appointment_id, lead_id, agent_id, start_time, end_time, notes,
                          AppointmentStatus.PENDING, 1, actor, now, now)
        appointment.events.append(AppointmentCreated(appointment.snapshot()))
        return appointment

    def overlaps(self, other: Appointment) -> bool:
        """Whether both hold the same agent at some instant; back-to-back slots do not."""
        return (
            self.agent_id == other.agent_id
            and self.start_time < other.end_time
            and other.start_time < self.end_time
        )

    def confirm(
        self,
        *,
        actor: str,
        now: datetime,
        idempotency_key: str,
        booked: Iterable[Appointment] = (),
    ) -> AppointmentChange:
        """PENDING → CONFIRMED, unless one of the agent's `booked` appointments overlaps."""
        if self.status is AppointmentStatus.CONFIRMED:
            raise AlreadyConfirmed(self)
        self._check_move(AppointmentStatus.CONFIRMED)
        for other in booked:
            if (other.appointment_id != self.appointment_id
                    and other.status is AppointmentStatus.CONFIRMED and self.overlaps(other)):
                raise SlotTaken(self, other)
        self.confirmed_by, self.confirmed_at = actor, now
        return self._move(AppointmentStatus.CONFIRMED, actor, now, idempotency_key)

    def cancel(
        self, *, actor: str, now: datetime, idempotency_key: str, reason: str = ""
    ) -> AppointmentChange:
        """PENDING or CONFIRMED → CANCELLED, which frees the agent's slot."""
        check_reason(reason)
        if self.status is AppointmentStatus.CANCELLED:
            raise AlreadyCancelled(self)
        self._check_move(AppointmentStatus.CANCELLED)
        self.cancelled_by, self.cancelled_at, self.cancel_reason = actor, now, reason
        return self._move(AppointmentStatus.CANCELLED, actor, now, idempotency_key, reason)

    def complete(self, *, actor: str, now: datetime, idempotency_key: str) -> AppointmentChange:
        """CONFIRMED → COMPLETED: the appointment was held."""
        self._check_move(AppointmentStatus.COMPLETED)
        self.completed_by, self.completed_at = actor, now
        return self._move(AppointmentStatus.COMPLETED, actor, now, idempotency_key)

    def _check_move(self, target: AppointmentStatus) -> None:
        if target not in MOVES[self.status]:
            raise InvalidStatusTransition(self.appointment_id, self.status, target)

    def _move(
        self, target: AppointmentStatus, actor: str, now: datetime, idempotency_key: str,
        reason: str = "",
    ) -> AppointmentChange:
        change = AppointmentChange(
            appointment_id=self.appointment_id,
            from_status=self.status,
            to_status=target,
            actor=actor,
            changed_at=now,
            idempotency_key=idempotency_key,
            reason=reason,
            version=self.version + 1,
        )
        self.status = target
        self.version += 1
        self.updated_at = now
        self.events.append(AppointmentChanged(self.snapshot(), change))
        return change

    def snapshot(self) -> Appointment:
        return replace(self, events=[])

    def pull_events(self) -> list[AppointmentEvent]:
        pulled, self.events = self.events, []
        return pulled
