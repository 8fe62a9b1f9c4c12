"""The bookings use cases. Each runs in one unit of work, visible here: the caller's
transaction, the idempotency key claimed as its first step, and one commit for
the change, its audit record, its events and the key's stored outcome.

Booking asks the leads service whether the lead exists, so it takes two units
of work: a look at the key first, so that a replay never depends on the leads
service being up; then, once the leads service has answered, the booking. No
transaction, and no SQLite writer lock, is held across the network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol, TypeVar

from services.bookings import domain
from services.bookings.domain import Appointment, AppointmentChange, AppointmentStatus
from services.shared import errors, ids, paging, validation
from services.shared.auth import Caller
from services.shared.db import utcnow
from services.shared.idempotency import Key, Stored

T = TypeVar("T")
# Of the caller's remaining time, what the call to the leads service leaves
# over (at most this much), so that its failure still reaches the caller in time.
ANSWER_MARGIN = 0.1


class AppointmentRepository(Protocol):
    async def add(self, appointment: Appointment) -> None: ...
    async def get(self, appointment_id: str, *, for_update: bool = False) -> Appointment: ...
    async def get_to_confirm(self, appointment_id: str
                             ) -> tuple[Appointment, list[Appointment]]: ...
    async def save(self, appointment: Appointment, change: AppointmentChange) -> None: ...
    async def find(self, where: Filter, after: tuple[datetime, str] | None,
                   limit: int) -> list[Appointment]: ...
    async def changes(self, appointment_id: str, after: int | None,
                      limit: int) -> list[tuple[int, AppointmentChange]]: ...


class KeySteps(Protocol):
    async def claim(self, key: Key) -> Stored | None: ...
    async def stored(self, key: Key) -> Stored | None: ...


class BookingsUnitOfWork(Protocol):
    @property
    def appointments(self) -> AppointmentRepository: ...
    @property
    def keys(self) -> KeySteps: ...
    def for_caller(self, caller: Caller, *, read_only: bool = False
                   ) -> AbstractAsyncContextManager[object]: ...
    async def commit(self, outcome: object = None) -> None: ...


class UnitsOfWork(Protocol):
    """A fresh unit of work per transaction (services.shared.uow.Units)."""

    async def attempt(self, step: Callable[[BookingsUnitOfWork], Awaitable[T]], *,
                      time_remaining: float | None) -> T: ...


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
    caller: Caller
    key: Key
    # The earliest start accepted: now, less CRM_BOOKING_PAST_GRACE_SECONDS.
    not_before: datetime | None = None


@dataclass(frozen=True)
class ChangeStatus:
    """Confirm, cancel or complete one appointment."""

    appointment_id: str
    caller: Caller
    key: Key
    reason: str = ""


@dataclass(frozen=True)
class Filter:
    """Which appointments a list holds; None matches any."""

    lead_id: str | None = None
    agent_id: str | None = None
    status: AppointmentStatus | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None


@dataclass(frozen=True)
class GetAppointment:
    appointment_id: str
    caller: Caller


@dataclass(frozen=True)
class ListAppointments(paging.Listing):
    where: Filter


@dataclass(frozen=True)
class ListChanges(paging.Listing):
    appointment_id: str


def new_appointment_id() -> str:
    return str(ids.uuid4())


async def create_appointment(
    cmd: CreateAppointment, units: UnitsOfWork, leads: Leads, *,
    time_remaining: Callable[[], float | None],
) -> Appointment | Stored:
    """Book a PENDING appointment for a lead the leads service knows."""
    stored = await units.attempt(partial(_stored, cmd), time_remaining=time_remaining())
    if stored is not None:
        return stored  # a replay asks the leads service nothing
    domain.check_booking(lead_id=cmd.lead_id, agent_id=cmd.agent_id, start_time=cmd.start_time,
                         end_time=cmd.end_time, notes=cmd.notes, not_before=cmd.not_before)
    await leads.get(cmd.lead_id, deadline_seconds=_time_for_leads(time_remaining()))
    return await units.attempt(partial(_book, cmd), time_remaining=time_remaining())


async def _stored(cmd: CreateAppointment, uow: BookingsUnitOfWork) -> Stored | None:
    async with uow.for_caller(cmd.caller, read_only=True):
        return await uow.keys.stored(cmd.key)


async def _book(cmd: CreateAppointment, uow: BookingsUnitOfWork) -> Appointment | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        appointment = Appointment.book(
            appointment_id=new_appointment_id(), lead_id=cmd.lead_id, agent_id=cmd.agent_id,
            start_time=cmd.start_time, end_time=cmd.end_time, notes=cmd.notes,
            actor=cmd.caller.principal, now=utcnow(),
        )
        await uow.appointments.add(appointment)
        await uow.commit(outcome=appointment)
        return appointment


def _time_for_leads(remaining: float | None) -> float | None:
    """The caller's remaining time, less a margin to answer in; None: the channel's default."""
    if remaining is None:
        return None
    return max(0.0, remaining - min(ANSWER_MARGIN, remaining / 10))


async def confirm(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        appointment, booked = await uow.appointments.get_to_confirm(check_id(cmd.appointment_id))
        change = appointment.confirm(actor=cmd.caller.principal, now=utcnow(),
                                     idempotency_key=cmd.key.value, booked=booked)
        await uow.appointments.save(appointment, change)
        await uow.commit(outcome=appointment)  # SLOT_TAKEN, run again, if a racing confirm won
        return appointment


async def cancel(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment | Stored:
    return await _move(cmd, uow, lambda appointment, now: appointment.cancel(
        actor=cmd.caller.principal, now=now, idempotency_key=cmd.key.value, reason=cmd.reason))


async def complete(cmd: ChangeStatus, uow: BookingsUnitOfWork) -> Appointment | Stored:
    return await _move(cmd, uow, lambda appointment, now: appointment.complete(
        actor=cmd.caller.principal, now=now, idempotency_key=cmd.key.value))


async def _move(
    cmd: ChangeStatus, uow: BookingsUnitOfWork,
    move: Callable[[Appointment, datetime], AppointmentChange],
) -> Appointment | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        domain.check_reason(cmd.reason)  # a bad reason is named before a missing appointment
        appointment = await uow.appointments.get(check_id(cmd.appointment_id), for_update=True)
        change = move(appointment, utcnow())
        await uow.appointments.save(appointment, change)
        await uow.commit(outcome=appointment)
        return appointment


async def get_appointment(query: GetAppointment, uow: BookingsUnitOfWork) -> Appointment:
    async with uow.for_caller(query.caller, read_only=True):
        return await uow.appointments.get(check_id(query.appointment_id))


async def list_appointments(query: ListAppointments, uow: BookingsUnitOfWork
                            ) -> paging.Page[Appointment]:
    """By start time, then id."""
    where = check_filter(query.where)
    async with uow.for_caller(query.caller, read_only=True):
        return await paging.page(
            query.page,
            {"list": "appointments", "lead_id": where.lead_id or "",
             "agent_id": where.agent_id or "", "status": where.status and where.status.value,
             "window_start": where.window_start, "window_end": where.window_end},
            paging.by_time_and_id(lambda a: (a.start_time, a.appointment_id)),
            lambda after, limit: uow.appointments.find(where, after, limit), org=query.caller.org)


async def list_changes(query: ListChanges, uow: BookingsUnitOfWork
                       ) -> paging.Page[tuple[int, AppointmentChange]]:
    """An appointment's audit trail, oldest first; APPOINTMENT_NOT_FOUND for one that
    does not exist."""
    appointment_id = check_id(query.appointment_id)
    async with uow.for_caller(query.caller, read_only=True):
        found = await paging.page(
            query.page, {"list": "appointment_changes", "appointment_id": appointment_id},
            paging.by_sequence(lambda item: item[0]),
            lambda after, limit: uow.appointments.changes(appointment_id, after, limit),
            org=query.caller.org)
        if not found.items:
            await uow.appointments.get(appointment_id)  # APPOINTMENT_NOT_FOUND if none
        return found


def check_id(appointment_id: str, field: str = "appointment_id") -> str:
    return validation.identifier(appointment_id, field)


def check_filter(where: Filter) -> Filter:
    """The filter, with every id checked and the window in order."""
    for field, value, longest in (("lead_id", where.lead_id, validation.MAX_ID_LENGTH),
                                  ("agent_id", where.agent_id, domain.MAX_AGENT_ID_LENGTH)):
        problem = domain.id_problem(value, longest) if value else None
        if problem is not None:
            raise errors.InvalidArgument.field(field, problem)
    start, end = where.window_start, where.window_end
    if start is not None and end is not None and end <= start:
        raise errors.InvalidArgument.field("window_end", "must come after window_start")
    return where
