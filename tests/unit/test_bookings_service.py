"""The bookings use cases with fakes of their unit of work: no database, no server."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from services.bookings import messages, service
from services.bookings.domain import (
    AlreadyConfirmed,
    Appointment,
    AppointmentChange,
    AppointmentEvent,
    AppointmentNotFound,
    AppointmentStatus,
    SlotTaken,
)
from services.shared.auth import Caller
from services.shared.errors import InvalidArgument
from services.shared.idempotency import Key, Stored
from services.shared.lead_lookup import LeadNotFound
from services.shared.paging import PageRequest
from tests.unit.fakes import FakeDatabase, FakeRows, FakeUnitOfWork, FakeUnits, guarded

ALICE = Caller("alice")
S = AppointmentStatus
CREATE = "/crm.bookings.v1.BookingsService/CreateAppointment"
CONFIRM = "/crm.bookings.v1.BookingsService/ConfirmAppointment"
CANCEL = "/crm.bookings.v1.BookingsService/CancelAppointment"
T0 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)


class FakeAppointments(FakeRows[Appointment], service.AppointmentRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        super().__init__(uow, "appointments", lambda a: a.appointment_id, AppointmentNotFound)
        self.trails = uow.db.table("changes")

    async def get_to_confirm(self, appointment_id: str
                             ) -> tuple[Appointment, list[Appointment]]:
        appointment = await self.get(appointment_id, for_update=True)
        return appointment, [copy.deepcopy(a) for a in self.rows.values()
                             if a.status is S.CONFIRMED
                             and a.appointment_id != appointment.appointment_id
                             and a.overlaps(appointment)]

    async def save(self, appointment: Appointment, change: AppointmentChange) -> None:
        row = copy.deepcopy(appointment)
        self.uow.stage(lambda: guarded(self.rows, appointment.appointment_id,
                                       change.version - 1, row))
        self.uow.stage(lambda: self.trails.setdefault(appointment.appointment_id, [])
                       .append(change))

    async def find(self, where: service.Filter, after: tuple[datetime, str] | None,
                   limit: int) -> list[Appointment]:
        found = sorted((a for a in self.rows.values()
                        if where.agent_id in (None, a.agent_id)
                        and where.status in (None, a.status)),
                       key=lambda a: (a.start_time, a.appointment_id))
        if after is not None:
            found = [a for a in found if (a.start_time, a.appointment_id) > after]
        return copy.deepcopy(found[:limit])

    async def changes(self, appointment_id: str, after: int | None, limit: int
                      ) -> list[tuple[int, AppointmentChange]]:
        trail = list(enumerate(self.trails.get(appointment_id, []), start=1))
        return [(i, c) for i, c in trail if after is None or i > after][:limit]


class FakeBookingsUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeDatabase, respond: object = None) -> None:
        super().__init__(db, messages.appointment)
        self.appointments = FakeAppointments(self)

    def recorded_events(self) -> list[AppointmentEvent]:
        return [e for a in self.appointments.seen.values() for e in a.pull_events()]


class FakeLeads(service.Leads):
    """The leads service: knows some leads, and counts the questions."""

    def __init__(self, *known: str) -> None:
        self.known = set(known)
        self.asked: list[str] = []

    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> object:
        self.asked.append(lead_id)
        if lead_id not in self.known:
            raise LeadNotFound(lead_id)
        return lead_id


@pytest.fixture
def units() -> FakeUnits[FakeBookingsUnitOfWork]:
    return FakeUnits(FakeBookingsUnitOfWork)  # type: ignore[arg-type]


def create(lead_id: str = "lead-1", *, key: str = "book", agent: str = "agent-1",
           start: float = 0, hours: float = 1) -> service.CreateAppointment:
    return service.CreateAppointment(
        lead_id=lead_id, agent_id=agent, start_time=T0 + timedelta(hours=start),
        end_time=T0 + timedelta(hours=start + hours), notes="", caller=ALICE,
        key=Key(CREATE, key, "f"))


async def book(units: FakeUnits[FakeBookingsUnitOfWork], command: service.CreateAppointment,
               leads: FakeLeads) -> Appointment | Stored:
    return await service.create_appointment(command, units, leads, time_remaining=lambda: 10.0)


async def booked(units: FakeUnits[FakeBookingsUnitOfWork], **fields: object) -> Appointment:
    made = await book(units, create(**fields), FakeLeads("lead-1"))  # type: ignore[arg-type]
    assert isinstance(made, Appointment)
    return made


async def confirm(units: FakeUnits[FakeBookingsUnitOfWork], appointment_id: str,
                  key: str = "confirm") -> Appointment | Stored:
    return await service.confirm(service.ChangeStatus(
        appointment_id=appointment_id, caller=ALICE, key=Key(CONFIRM, key, "f")), units())


async def test_a_booking_asks_the_leads_service_then_books_a_pending_appointment(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    leads = FakeLeads("lead-1")
    made = await book(units, create(), leads)
    assert isinstance(made, Appointment) and made.status is S.PENDING
    assert leads.asked == ["lead-1"]
    assert units.db.committed() == [(ALICE, False, True)]


async def test_a_replayed_booking_asks_the_leads_service_nothing(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    first = await book(units, create(key="once"), FakeLeads("lead-1"))
    leads = FakeLeads()  # down, as far as this replay can tell
    again = await book(units, create(key="once"), leads)
    assert isinstance(again, Stored) and leads.asked == []
    assert isinstance(first, Appointment)
    assert again.outcome.response(CREATE) == messages.appointment(first)


async def test_a_booking_for_an_unknown_lead_is_refused_and_books_nothing(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    with pytest.raises(LeadNotFound):
        await book(units, create("ghost"), FakeLeads("lead-1"))
    assert units.db.table("appointments") == {}


async def test_a_bad_booking_is_refused_before_the_leads_service_is_asked(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    leads = FakeLeads("lead-1")
    with pytest.raises(InvalidArgument):
        await book(units, create(hours=-1), leads)
    assert leads.asked == []


async def test_a_confirm_over_a_confirmed_slot_of_the_agent_is_slot_taken(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    first = await booked(units, key="a", start=0, hours=2)
    second = await booked(units, key="b", start=1, hours=2)
    await confirm(units, first.appointment_id, "c1")
    with pytest.raises(SlotTaken) as taken:
        await confirm(units, second.appointment_id, "c2")
    assert taken.value.taken_by.appointment_id == first.appointment_id
    assert units.db.table("appointments")[second.appointment_id].status is S.PENDING


async def test_a_second_confirm_is_already_confirmed(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    made = await booked(units)
    await confirm(units, made.appointment_id, "c1")
    with pytest.raises(AlreadyConfirmed):
        await confirm(units, made.appointment_id, "c2")


async def test_a_cancel_records_its_reason_in_the_audit_trail(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    made = await booked(units)
    await service.cancel(service.ChangeStatus(
        appointment_id=made.appointment_id, caller=ALICE, key=Key(CANCEL, "x", "f"),
        reason="lead is ill"), units())
    (change,) = units.db.table("changes")[made.appointment_id]
    assert (change.to_status, change.reason, change.actor) == (S.CANCELLED, "lead is ill",
                                                               "alice")


async def test_appointments_list_by_start_time_page_by_page(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    for start in (3, 1, 2):
        await booked(units, key=f"at-{start}", start=start)
    starts: list[datetime] = []
    token = ""
    while True:
        page = await service.list_appointments(service.ListAppointments(
            where=service.Filter(agent_id="agent-1"), page=PageRequest(2, token),
            caller=ALICE), units())
        starts += [a.start_time for a in page.items]
        token = page.next_token
        if not token:
            break
    assert starts == [T0 + timedelta(hours=h) for h in (1, 2, 3)]


async def test_a_window_that_ends_before_it_starts_is_refused_naming_its_end(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await service.list_appointments(service.ListAppointments(
            where=service.Filter(window_start=T0, window_end=T0), page=PageRequest(0, ""),
            caller=ALICE), units())
    assert [v.field for v in refused.value.violations] == ["window_end"]


async def test_the_changes_of_an_unknown_appointment_are_not_found(
    units: FakeUnits[FakeBookingsUnitOfWork],
) -> None:
    with pytest.raises(AppointmentNotFound):
        await service.list_changes(service.ListChanges(
            appointment_id="nothing", page=PageRequest(0, ""), caller=ALICE), units())
