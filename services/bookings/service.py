"""The bookings use cases. Each runs inside one unit of work that its caller opened
and commits: the change, its audit record, its events and its idempotency
record land together.

Booking asks the leads service whether the lead exists; that call is made
before the unit of work opens (`check_booking`), so no transaction, and no
SQLite writer lock, is held across the network.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.bookings import domain
from services.bookings.domain import Appointment, AppointmentChange, AppointmentStatus
from services.shared import errors, validation
from services.shared.db import utcnow


class AppointmentRepository(Protocol):
    async def add(self, appointment: Appointment) -> None: ...
    async def get(self, appointment_id: str, *, for_update: bool = False) -> Appointment: ...
    async def confirmed_overlapping(self, appointment: Appointment) -> list[Appointment]: ...
    async def save(self, appointment: Appointment, change: AppointmentChange) -> None: ...
    async def find(self, *, lead_id: str | None, agent_id: str | None,
                   status: AppointmentStatus | None, window_start: datetime | None,
                   window_end: datetime | None, after: list[object] | None,
                   limit: int) -> list[Appointment]: ...
    async def list_changes(self, appointment_id: str, after: int | None,
                           limit: int) -> list[tuple[int, AppointmentChange]]: ...
    async def exists(self, appointment_id: str) -> bool: ...


class BookingsUnitOfWork(Protocol):
    @property
    def appointments(self) -> AppointmentRepository: ...


class Leads(Protocol):
    """The leads service, as `services.shared.lead_lookup.LeadLookup` asks it."""

    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> object:
        """The lead; raises LEAD_NOT_FOUND, or LEADS_UNAVAILABLE when nobody can say."""


@dataclass(frozen=True)
class CreateAppointment:
    lead_id: str
    agent_id: str
    start_time: datetime | None
    end_time: datetime | None
    notes: str
    actor: str


@dataclass(frozen=True)
class ChangeStatus:
    """Confirm, cancel or complete one appointment."""

    appointment_id: str
    actor: str
    idempotency_key: str
    reason: str = ""


def new_appointment_id() -> str:
    return str(uuid.uuid4())


async def check_booking(
    cmd: CreateAppointment, leads: Leads, *, time_remaining: float | None
) -> CreateAppointment:
    """Refuse a bad request (naming every bad field) or an unknown lead, before booking."""
    domain.check_booking(lead_id=cmd.lead_id, agent_id=cmd.agent_id, start_time=cmd.start_time,
                         end_time=cmd.end_time, notes=cmd.notes)
    await leads.get(cmd.lead_id, deadline_seconds=time_remaining)
    return cmd


async def create_appointment(cmd: CreateAppointment, uow: BookingsUnitOfWork) -> Appointment:
    """Book a PENDING appointment; its lead was checked by `check_booking`."""
    appointment = Appointment.book(
        appointment_id=new_appointment_id(),
        lead_id=cmd.lead_id,
        agent_id=cmd.agent_id,
        start_time=cmd.start_time,
        end_time=cmd.end_time,
        notes=cmd.notes,
        actor=cmd.actor,
        now=utcnow(),
    )
    await uow.appointments.add(appointment)
    return appointment


async def confirm(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment:
    appointment = await uow.appointments.get(check_id(cmd.appointment_id), for_update=True)
    booked = await uow.appointments.confirmed_overlapping(appointment)
    change = appointment.confirm(
        actor=cmd.actor, now=utcnow(), idempotency_key=cmd.idempotency_key, booked=booked
    )
    await uow.appointments.save(appointment, change)  # SLOT_TAKEN if a racing confirm won
    return appointment


async def cancel(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment:
    domain.check_reason(cmd.reason)
    appointment = await uow.appointments.get(check_id(cmd.appointment_id), for_update=True)
    change = appointment.cancel(
        actor=cmd.actor, now=utcnow(), idempotency_key=cmd.idempotency_key, reason=cmd.reason
    )
    await uow.appointments.save(appointment, change)
    return appointment


async def complete(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment:
    appointment = await uow.appointments.get(check_id(cmd.appointment_id), for_update=True)
    change = appointment.complete(
        actor=cmd.actor, now=utcnow(), idempotency_key=cmd.idempotency_key
    )
    await uow.appointments.save(appointment, change)
    return appointment


async def get_appointment(appointment_id: str, uow: BookingsUnitOfWork) -> Appointment:
    return await uow.appointments.get(check_id(appointment_id))


def check_id(appointment_id: str, field: str = "appointment_id") -> str:
    return validation.identifier(appointment_id, field)


def check_filter(value: str, field: str, longest: int) -> str | None:
    """An optional id to list by; None when unset."""
    if not value:
        return None
    problem = domain.id_problem(value, longest)
    if problem is not None:
        raise errors.InvalidArgument.field(field, problem)
    return value


def check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise errors.InvalidArgument.field("window_end", "must come after window_start")
