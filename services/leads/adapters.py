"""Storage of leads: tables, the repository (SQLAlchemy Core) and the unit of work.

Every row names its org, and every statement names the unit of work's org
(`uow.org`): another org's lead is LEAD_NOT_FOUND, exactly as a missing one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

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
    bindparam,
    insert,
    select,
    tuple_,
    update,
)

from services.leads.domain import Lead, LeadEvent, LeadNotFound, LeadStatus, StatusChange
from services.shared.db import UTCDateTime
from services.shared.schema import org_column, shared_tables
from services.shared.uow import EventMapper, Respond, Storage, UnitOfWork

metadata = MetaData()
shared = shared_tables(metadata, "leads")

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(36), nullable=False),
    Column("name", String(200), nullable=False),
    Column("phone", String(20), nullable=False),
    Column("email", String(254), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    org_column(),
    Index("ix_leads_created", "org", "created_at", "lead_id"),
    Index("ix_leads_status_created", "org", "status", "created_at", "lead_id"),
    Index("ix_leads_phone", "org", "phone"),
    # The org first, as in every index here: a lookup by id (which names the org
    # too) matches the key whole (services.shared.migration_keys).
    PrimaryKeyConstraint("org", "lead_id", name="pk_leads"),
)

status_changes = Table(
    "lead_status_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("lead_id", String(36), nullable=False),
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("version", BigInteger, nullable=False),
    org_column(),
    Index("ix_lead_status_changes_lead", "lead_id", "id"),
    ForeignKeyConstraint(["org", "lead_id"], ["leads.org", "leads.lead_id"],
                         name="fk_lead_status_changes_leads"),
)


def _lead(row: Row[Any]) -> Lead:
    return Lead(
        lead_id=row.lead_id,
        name=row.name,
        phone=row.phone,
        email=row.email,
        status=LeadStatus(row.status),
        version=row.version,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _change(row: Row[Any]) -> StatusChange:
    return StatusChange(
        lead_id=row.lead_id,
        from_status=LeadStatus(row.from_status),
        to_status=LeadStatus(row.to_status),
        actor=row.actor,
        changed_at=row.changed_at,
        idempotency_key=row.idempotency_key,
        version=row.version,
    )


# What kept leads are filed under (services.shared.uow, "Kept rows").
KIND = "lead"

# The hot statements, built once (see services.shared.sql).
INSERT_LEAD = insert(leads)
UPDATE_LEAD = update(leads).where(
    leads.c.lead_id == bindparam("b_lead_id"), leads.c.version == bindparam("b_version"),
    leads.c.org == bindparam("b_org"),
)
INSERT_CHANGE = insert(status_changes)
SELECT_LEAD = select(leads).where(leads.c.lead_id == bindparam("lead_id"),
                                  leads.c.org == bindparam("org"))
SELECT_LEAD_FOR_UPDATE = SELECT_LEAD.with_for_update()
# A kept lead as its copy says it is, locked (`get_many`'s check of a batch's copies).
LOCK_KEPT_LEAD = select(leads.c.lead_id).where(
    leads.c.lead_id == bindparam("lead_id"), leads.c.org == bindparam("org"),
    leads.c.version == bindparam("version")).with_for_update()


class SqlLeadRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        # Every lead this unit of work loaded or added, for its events.
        self.seen: dict[str, Lead] = {}

    async def add(self, lead: Lead) -> None:
        await self.uow.write(INSERT_LEAD, {
            "lead_id": lead.lead_id, "name": lead.name, "phone": lead.phone,
            "email": lead.email, "status": lead.status.value, "version": lead.version,
            "created_by": lead.created_by, "created_at": lead.created_at,
            "updated_at": lead.updated_at, "org": self.uow.org,
        })
        self.seen[lead.lead_id] = lead

    async def get(self, lead_id: str, *, for_update: bool = False) -> Lead:
        """The lead; to change (`for_update`), locked, or its kept copy where the unit
        of work may write from one (services.shared.uow, "Kept rows")."""
        if for_update and (kept := self.uow.kept_row(KIND, lead_id)) is not None:
            lead: Lead = replace(kept, events=[])
            self.seen[lead_id] = lead
            return lead
        query = SELECT_LEAD_FOR_UPDATE if for_update and self.uow.postgres else SELECT_LEAD
        rows = await self.uow.read(query, {"lead_id": lead_id, "org": self.uow.org})
        if not rows:
            raise LeadNotFound(lead_id)
        lead = self.seen[lead_id] = _lead(rows[0])
        self.uow.saw(KIND, lead_id, replace(lead, events=[]))
        return lead

    async def get_many(self, lead_ids: list[str], *, for_update: bool = False) -> dict[str, Lead]:
        """The leads found, by id; to change (`for_update`), locked in id order (which
        keeps concurrent batches from deadlocking), or, where the unit of work may
        write from kept rows and every lead named is kept, their copies, each
        checked and locked with the commit, in id order too: a lead the batch leaves
        as it is must be as its copy says as well as those it moves."""
        if for_update and (kept := self.uow.kept_rows(KIND, lead_ids)) is not None:
            copies = {lead.lead_id: replace(lead, events=[]) for lead in kept}
            for lead_id in sorted(copies):
                self.uow.check(LOCK_KEPT_LEAD, {"lead_id": lead_id, "org": self.uow.org,
                                                "version": copies[lead_id].version}, rows=1)
            self.seen.update(copies)
            return copies
        # In code point order (COLLATE "C"), as `sorted` orders the copies' checks.
        order = leads.c.lead_id.collate("C") if self.uow.postgres else leads.c.lead_id
        query = (select(leads).where(leads.c.lead_id.in_(lead_ids), leads.c.org == self.uow.org)
                 .order_by(order))
        if for_update and self.uow.postgres:
            query = query.with_for_update()
        found = {row.lead_id: _lead(row) for row in await self.uow.execute(query)}
        for lead_id, lead in found.items():
            self.uow.saw(KIND, lead_id, replace(lead, events=[]))
        self.seen.update(found)
        return found

    async def save(self, lead: Lead, change: StatusChange) -> None:
        """Store a move and its audit record, guarded by the version the move
        started from: a lead read FOR UPDATE (SQLite: in the only write
        transaction) cannot have moved meanwhile, and a kept copy that is no longer
        the lead changes nothing (services.shared.uow, "Kept rows")."""
        await self.uow.write(UPDATE_LEAD, {
            "b_lead_id": lead.lead_id, "b_version": change.version - 1, "b_org": self.uow.org,
            "status": lead.status.value, "version": lead.version,
            "updated_at": lead.updated_at,
        }, expect_rows=1)
        await self.uow.write(INSERT_CHANGE, {
            "lead_id": change.lead_id, "from_status": change.from_status.value,
            "to_status": change.to_status.value, "actor": change.actor,
            "changed_at": change.changed_at, "idempotency_key": change.idempotency_key,
            "version": change.version, "org": self.uow.org,
        })

    async def newest(
        self, status: LeadStatus | None, after: tuple[datetime, str] | None, limit: int,
        *, phone: str | None = None,
    ) -> list[Lead]:
        """Newest first; `after` is the (created_at, lead_id) of the last lead served;
        `phone` (E.164) keeps only the leads with that number."""
        query = select(leads).where(leads.c.org == self.uow.org)
        if status is not None:
            query = query.where(leads.c.status == status.value)
        if phone is not None:
            query = query.where(leads.c.phone == phone)
        if after is not None:
            query = query.where(tuple_(leads.c.created_at, leads.c.lead_id) < tuple_(*after))
        query = query.order_by(leads.c.created_at.desc(), leads.c.lead_id.desc()).limit(limit)
        return [_lead(row) for row in await self.uow.execute(query)]

    async def changes(
        self, lead_id: str, after: int | None, limit: int
    ) -> list[tuple[int, StatusChange]]:
        """A lead's audit trail, oldest first, with each change's position in it."""
        query = select(status_changes).where(status_changes.c.lead_id == lead_id,
                                             status_changes.c.org == self.uow.org)
        if after is not None:
            query = query.where(status_changes.c.id > after)
        query = query.order_by(status_changes.c.id).limit(limit)
        return [(row.id, _change(row)) for row in await self.uow.execute(query)]


class SqlLeadsUnitOfWork(UnitOfWork):
    def __init__(self, storage: Storage, *, events: EventMapper,
                 respond: Respond | None = None) -> None:
        super().__init__(storage, events=events, respond=respond)
        self.leads = SqlLeadRepository(self)

    def recorded_events(self) -> Iterator[LeadEvent]:
        for lead in self.leads.seen.values():
            yield from lead.pull_events()

    def committed_rows(self) -> Iterator[tuple[str, str, Lead]]:
        for lead in self.leads.seen.values():
            yield KIND, lead.lead_id, replace(lead, events=[])
