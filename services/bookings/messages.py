"""Translation between the bookings domain and the crm.bookings.v1 messages."""

from __future__ import annotations

from datetime import datetime

from crm.bookings.v1 import bookings_pb2 as pb
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from services.bookings.domain import (
    Appointment,
    AppointmentChange,
    AppointmentChanged,
    AppointmentCreated,
    AppointmentEvent,
    AppointmentStatus,
)
from services.shared.errors import InvalidArgument
from services.shared.events import EventRecord
from services.shared.paging import Page
from services.shared.protos import enum_numbers, timestamp, when

_TO_PROTO = enum_numbers(AppointmentStatus, pb.AppointmentStatus.DESCRIPTOR)
_FROM_PROTO = {number: status for status, number in _TO_PROTO.items()}

EVENT_TYPES = (
    "appointment.created",
    "appointment.confirmed",
    "appointment.cancelled",
    "appointment.completed",
)
_CHANGE_EVENTS = {
    AppointmentStatus.CONFIRMED: "appointment.confirmed",
    AppointmentStatus.CANCELLED: "appointment.cancelled",
    AppointmentStatus.COMPLETED: "appointment.completed",
}


def status(value: AppointmentStatus) -> int:
    return _TO_PROTO[value]


def status_from(number: int, field: str = "status") -> AppointmentStatus:
    found = _FROM_PROTO.get(number)
    if found is None:
        names = ", ".join(pb.AppointmentStatus.Name(n) for n in _FROM_PROTO)
        raise InvalidArgument.field(field, f"must be one of {names}")
    return found


def instant(message: Message, field: str) -> datetime | None:
    """The Timestamp `field` of `message` as an aware datetime, or None if unset."""
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return when(stamp)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(
            field, "not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)"
        ) from None


def appointment(value: Appointment) -> pb.Appointment:
    return pb.Appointment(
        appointment_id=value.appointment_id,
        lead_id=value.lead_id,
        agent_id=value.agent_id,
        start_time=timestamp(value.start_time),
        end_time=timestamp(value.end_time),
        notes=value.notes,
        status=status(value.status),  # type: ignore[arg-type]
        version=value.version,
        created_by=value.created_by,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        confirmed_by=value.confirmed_by,
        confirmed_at=timestamp(value.confirmed_at),
        cancelled_by=value.cancelled_by,
        cancelled_at=timestamp(value.cancelled_at),
        cancel_reason=value.cancel_reason,
        completed_by=value.completed_by,
        completed_at=timestamp(value.completed_at),
    )


def change(value: AppointmentChange) -> pb.AppointmentChange:
    return pb.AppointmentChange(
        appointment_id=value.appointment_id,
        from_status=status(value.from_status),  # type: ignore[arg-type]
        to_status=status(value.to_status),  # type: ignore[arg-type]
        actor=value.actor,
        changed_at=timestamp(value.changed_at),
        idempotency_key=value.idempotency_key,
        reason=value.reason,
        version=value.version,
    )


def appointments_page(found: Page[Appointment]) -> pb.ListAppointmentsResponse:
    return pb.ListAppointmentsResponse(appointments=[appointment(x) for x in found.items],
                                       next_page_token=found.next_token)


def changes_page(found: Page[tuple[int, AppointmentChange]]
                 ) -> pb.ListAppointmentChangesResponse:
    return pb.ListAppointmentChangesResponse(changes=[change(x) for _, x in found.items],
                                             next_page_token=found.next_token)


def event_record(event: AppointmentEvent) -> EventRecord:
    if isinstance(event, AppointmentCreated):
        kind, actor, at = ("appointment.created", event.appointment.created_by,
                           event.appointment.created_at)
        message = pb.Event(appointment=appointment(event.appointment))
    elif isinstance(event, AppointmentChanged):
        kind = _CHANGE_EVENTS[event.change.to_status]
        actor, at = event.change.actor, event.change.changed_at
        message = pb.Event(appointment=appointment(event.appointment),
                           change=change(event.change))
    else:  # pragma: no cover - the union is closed
        raise TypeError(event)
    message.type = kind
    message.actor = actor
    message.lead_id = event.appointment.lead_id
    message.appointment_id = event.appointment.appointment_id
    message.occurred_at.FromDatetime(at)
    return EventRecord(
        type=kind,
        actor=actor,
        occurred_at=at,
        payload=message.SerializeToString(),
        lead_id=event.appointment.lead_id,
        subject_id=event.appointment.appointment_id,
    )
