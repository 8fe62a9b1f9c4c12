"""Storage of appointments: tables, the repository (SQLAlchemy Core) and the unit of work.

No double booking is enforced by the database where it can be: on PostgreSQL
an exclusion constraint (see migrations/versions/0001_initial.py) refuses a
second confirmed appointment of one agent over an overlapping range, even
when confirms race on several replicas. On SQLite every write transaction
holds the database's single writer lock, so the check before the update is
already safe.

On PostgreSQL the writes of a unit of work go out with its commit, in one
round trip (see services.shared.uow). A confirm that the constraint refuses
there lost a race to a confirm that committed first (the constraint waited
for it): the transaction is run again from the start, and this time the
check sees the winner and the refusal names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from psycopg.errors import ExclusionViolation
from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    and_,
    bindparam,
    insert,
    select,
    tuple_,
    update,
)

from services.bookings.domain import (
    Appointment,
    AppointmentChange,
    AppointmentEvent,
    AppointmentNotFound,
    AppointmentStatus,
)
from services.bookings.service import Filter
from services.shared.db import RunAgain, UTCDateTime, as_utc
from services.shared.schema import org_column, shared_tables
from services.shared.uow import EventMapper, Respond, Storage, UnitOfWork

metadata = MetaData()
shared = shared_tables(metadata, "bookings")

appointments = Table(
    "appointments",
    metadata,
    Column("appointment_id", String(36), nullable=False),
    Column("lead_id", String(64), nullable=False),
    Column("agent_id", String(100), nullable=False),
    Column("start_time", UTCDateTime, nullable=False),
    Column("end_time", UTCDateTime, nullable=False),
    Column("notes", String(2000), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("confirmed_by", String(128), nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("cancelled_by", String(128), nullable=False),
    Column("cancelled_at", UTCDateTime),
    Column("cancel_reason", String(500), nullable=False),
    Column("completed_by", String(128), nullable=False),
    Column("completed_at", UTCDateTime),
    org_column(),
    Index("ix_appointments_start", "org", "start_time", "appointment_id"),
    Index("ix_appointments_agent_start", "org", "agent_id", "start_time"),
    Index("ix_appointments_lead_start", "org", "lead_id", "start_time"),
    # The org first, as in every index here: a lookup by id (which names the org
    # too) matches the key whole (services.shared.migration_keys).
    PrimaryKeyConstraint("org", "appointment_id", name="pk_appointments"),
)

appointment_changes = Table(
    "appointment_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("appointment_id", String(36), nullable=False),
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("version", BigInteger, nullable=False),
    org_column(),
    Index("ix_appointment_changes_appointment", "appointment_id", "id"),
    ForeignKeyConstraint(["org", "appointment_id"],
                         ["appointments.org", "appointments.appointment_id"],
                         name="fk_appointment_changes_appointments"),
)

# The exclusion constraint's name (PostgreSQL only; created by the migration).
NO_DOUBLE_BOOKING = "appointments_no_double_booking"


class SlotRaced(RunAgain):
    """The exclusion constraint refused a confirm whose check saw the slot free."""


# What kept appointments are filed under (services.shared.uow, "Kept rows").
KIND = "appointment"

# The hot statements, built once (see services.shared.sql).
_a = appointments.c
INSERT_APPOINTMENT = insert(appointments)
SELECT_APPOINTMENT = select(appointments).where(_a.appointment_id == bindparam("appointment_id"),
                                                _a.org == bindparam("org"))
SELECT_APPOINTMENT_FOR_UPDATE = SELECT_APPOINTMENT.with_for_update()
# The agent's confirmed appointments overlapping the slot of the appointment named,
# read after it is locked (in the same round trip on PostgreSQL).
_target = appointments.alias("target")
SELECT_CONFIRMED_OVERLAPPING = (
    select(appointments)
    .join(_target, and_(_target.c.appointment_id == bindparam("appointment_id"),
                        _target.c.org == bindparam("org")))
    .where(
        _a.org == bindparam("org"),
        _a.agent_id == _target.c.agent_id,
        _a.status == bindparam("confirmed"),
        _a.start_time < _target.c.end_time,
        _a.end_time > _target.c.start_time,
        _a.appointment_id != _target.c.appointment_id,
    )
    .order_by(_a.start_time, _a.appointment_id)
    .limit(bindparam("limit"))
)
UPDATE_APPOINTMENT = update(appointments).where(
    _a.appointment_id == bindparam("b_appointment_id"), _a.version == bindparam("b_version"),
    _a.org == bindparam("b_org"),
)
INSERT_CHANGE = insert(appointment_changes)


def _appointment(row: Row[Any]) -> Appointment:
    return Appointment(
        appointment_id=row.appointment_id,
        lead_id=row.lead_id,
        agent_id=row.agent_id,
        start_time=as_utc(row.start_time),
        end_time=as_utc(row.end_time),
        notes=row.notes,
        status=AppointmentStatus(row.status),
        version=row.version,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        confirmed_by=row.confirmed_by,
        confirmed_at=as_utc(row.confirmed_at),
        cancelled_by=row.cancelled_by,
        cancelled_at=as_utc(row.cancelled_at),
        cancel_reason=row.cancel_reason,
        completed_by=row.completed_by,
        completed_at=as_utc(row.completed_at),
    )


def _change(row: Row[Any]) -> AppointmentChange:
    return AppointmentChange(
        appointment_id=row.appointment_id,
        from_status=AppointmentStatus(row.from_status),
        to_status=AppointmentStatus(row.to_status),
        actor=row.actor,
        changed_at=row.changed_at,
        idempotency_key=row.idempotency_key,
        reason=row.reason,
        version=row.version,
    )


class SqlAppointmentRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        # Every appointment this unit of work loaded or added, for its events.
        self.seen: dict[str, Appointment] = {}

    async def add(self, appointment: Appointment) -> None:
        await self.uow.write(INSERT_APPOINTMENT, {**self._row(appointment), "org": self.uow.org})
        self.seen[appointment.appointment_id] = appointment

    async def get(self, appointment_id: str, *, for_update: bool = False) -> Appointment:
        """The appointment; to change (`for_update`), locked, or its kept copy where
        the unit of work may write from one (services.shared.uow, "Kept rows")."""
        if for_update and (kept := self._kept(appointment_id)) is not None:
            return kept
        locking = for_update and self.uow.postgres
        query = SELECT_APPOINTMENT_FOR_UPDATE if locking else SELECT_APPOINTMENT
        rows = await self.uow.read(query, {"appointment_id": appointment_id, "org": self.uow.org})
        if not rows:
            raise AppointmentNotFound(appointment_id)
        found = self.seen[appointment_id] = _appointment(rows[0])
        self.uow.saw(KIND, appointment_id, replace(found, events=[]))
        return found

    def _kept(self, appointment_id: str) -> Appointment | None:
        kept = self.uow.kept_row(KIND, appointment_id)
        if kept is None:
            return None
        found: Appointment = replace(kept, events=[])
        self.seen[appointment_id] = found
        return found

    async def get_to_confirm(self, appointment_id: str
                             ) -> tuple[Appointment, list[Appointment]]:
        """The appointment, locked for update, and the agent's confirmed appointments
        that overlap its slot, earliest first: what a confirm decides on. On
        PostgreSQL both reads go out in one round trip, the second after the lock.

        From a kept copy (services.shared.uow, "Kept rows") nothing is read: the
        agent's other confirmed appointments are left to the exclusion constraint,
        which refuses an overlapping confirm at commit (SlotRaced), and the call
        then runs again, reading them."""
        if (kept := self._kept(appointment_id)) is not None:
            return kept, []
        key = {"appointment_id": appointment_id, "org": self.uow.org}
        query = SELECT_APPOINTMENT_FOR_UPDATE if self.uow.postgres else SELECT_APPOINTMENT
        found, overlapping = await self.uow.read_many([
            (query, key),
            (SELECT_CONFIRMED_OVERLAPPING, {
                **key, "confirmed": AppointmentStatus.CONFIRMED.value, "limit": 10}),
        ])
        if not found:
            raise AppointmentNotFound(appointment_id)
        appointment = self.seen[appointment_id] = _appointment(found[0])
        self.uow.saw(KIND, appointment_id, replace(appointment, events=[]))
        return appointment, [_appointment(row) for row in overlapping]

    async def save(self, appointment: Appointment, change: AppointmentChange) -> None:
        """Store a change of status and its audit record. The appointment was read
        FOR UPDATE (SQLite: in the only write transaction), so its version cannot
        have moved meanwhile; the version guard checks it all the same, on either
        database. On PostgreSQL a confirm over a slot that a racing confirm took
        first is refused by the exclusion constraint at commit (see
        SqlBookingsUnitOfWork)."""
        row = self._row(appointment)
        del row["appointment_id"]
        await self.uow.write(UPDATE_APPOINTMENT, {
            "b_appointment_id": appointment.appointment_id, "b_version": change.version - 1,
            "b_org": self.uow.org, **row,
        }, expect_rows=1)
        await self.uow.write(INSERT_CHANGE, {
            "appointment_id": change.appointment_id, "from_status": change.from_status.value,
            "to_status": change.to_status.value, "actor": change.actor,
            "changed_at": change.changed_at, "idempotency_key": change.idempotency_key,
            "reason": change.reason, "version": change.version, "org": self.uow.org,
        })

    async def find(self, where: Filter, after: tuple[datetime, str] | None, limit: int
                   ) -> list[Appointment]:
        """By start time, then id; `after` is the (start_time, id) of the last one served."""
        a = appointments.c
        query = select(appointments).where(a.org == self.uow.org)
        if where.lead_id is not None:
            query = query.where(a.lead_id == where.lead_id)
        if where.agent_id is not None:
            query = query.where(a.agent_id == where.agent_id)
        if where.status is not None:
            query = query.where(a.status == where.status.value)
        if where.window_start is not None:
            query = query.where(a.end_time > where.window_start)
        if where.window_end is not None:
            query = query.where(a.start_time < where.window_end)
        if after is not None:
            query = query.where(tuple_(a.start_time, a.appointment_id) > tuple_(*after))
        query = query.order_by(a.start_time, a.appointment_id).limit(limit)
        return [_appointment(row) for row in await self.uow.execute(query)]

    async def changes(
        self, appointment_id: str, after: int | None, limit: int
    ) -> list[tuple[int, AppointmentChange]]:
        """An appointment's audit trail, oldest first, with each change's position in it."""
        c = appointment_changes.c
        query = select(appointment_changes).where(c.appointment_id == appointment_id,
                                                  c.org == self.uow.org)
        if after is not None:
            query = query.where(c.id > after)
        query = query.order_by(c.id).limit(limit)
        return [(row.id, _change(row)) for row in await self.uow.execute(query)]

    @staticmethod
    def _row(appointment: Appointment) -> dict[str, Any]:
        return {
            "appointment_id": appointment.appointment_id,
            "lead_id": appointment.lead_id,
            "agent_id": appointment.agent_id,
            "start_time": appointment.start_time,
            "end_time": appointment.end_time,
            "notes": appointment.notes,
            "status": appointment.status.value,
            "version": appointment.version,
            "created_by": appointment.created_by,
            "created_at": appointment.created_at,
            "updated_at": appointment.updated_at,
            "confirmed_by": appointment.confirmed_by,
            "confirmed_at": appointment.confirmed_at,
            "cancelled_by": appointment.cancelled_by,
            "cancelled_at": appointment.cancelled_at,
            "cancel_reason": appointment.cancel_reason,
            "completed_by": appointment.completed_by,
            "completed_at": appointment.completed_at,
        }


class SqlBookingsUnitOfWork(UnitOfWork):
    def __init__(self, storage: Storage, *, events: EventMapper,
                 respond: Respond | None = None) -> None:
        super().__init__(storage, events=events, respond=respond)
        self.appointments = SqlAppointmentRepository(self)

    def recorded_events(self) -> Iterator[AppointmentEvent]:
        for appointment in self.appointments.seen.values():
            yield from appointment.pull_events()

    def committed_rows(self) -> Iterator[tuple[str, str, Appointment]]:
        for appointment in self.appointments.seen.values():
            yield KIND, appointment.appointment_id, replace(appointment, events=[])

    async def commit(self, outcome: object = None) -> None:
        try:
            await super().commit(outcome)
        except ExclusionViolation as error:
            raise SlotRaced("a racing confirm took the slot first") from error
