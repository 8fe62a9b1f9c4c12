"""The leads use cases. Each runs in one unit of work, visible here: the caller's
transaction, the idempotency key claimed as its first step, and one commit for
the change, its audit record, its events and the key's stored outcome.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.leads.domain import (
    MAX_BATCH_SIZE,
    BatchRefused,
    Lead,
    LeadNotFound,
    LeadStatus,
    StatusChange,
    StatusUnchanged,
)
from services.shared import errors, ids, paging, validation
from services.shared.auth import Caller
from services.shared.db import utcnow
from services.shared.idempotency import Key, Stored
from services.shared.phones import to_e164


class LeadRepository(Protocol):
    async def add(self, lead: Lead) -> None: ...
    async def get(self, lead_id: str, *, for_update: bool = False) -> Lead: ...
    async def get_many(
        self, lead_ids: list[str], *, for_update: bool = False
    ) -> dict[str, Lead]: ...
    async def save(self, lead: Lead, change: StatusChange) -> None: ...
    async def newest(self, status: LeadStatus | None, after: tuple[datetime, str] | None,
                     limit: int, *, phone: str | None = None) -> list[Lead]: ...
    async def changes(self, lead_id: str, after: int | None,
                      limit: int) -> list[tuple[int, StatusChange]]: ...


class KeySteps(Protocol):
    async def claim(self, key: Key) -> Stored | None: ...


class LeadsUnitOfWork(Protocol):
    @property
    def leads(self) -> LeadRepository: ...
    @property
    def keys(self) -> KeySteps: ...
    def for_caller(self, caller: Caller, *, read_only: bool = False
                   ) -> AbstractAsyncContextManager[object]: ...
    async def commit(self, outcome: object = None) -> None: ...


@dataclass(frozen=True)
class CreateLead:
    name: str
    phone: str
    email: str
    region: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class UpdateStatus:
    lead_id: str
    status: LeadStatus
    caller: Caller
    key: Key
    expected_version: int | None = None


@dataclass(frozen=True)
class BatchUpdateStatus:
    lead_ids: list[str]
    status: LeadStatus
    caller: Caller
    key: Key


@dataclass(frozen=True)
class BatchResult:
    updated: list[Lead]
    unchanged: list[str]


@dataclass(frozen=True)
class GetLead:
    lead_id: str
    caller: Caller


@dataclass(frozen=True)
class ListLeads(paging.Listing):
    status: LeadStatus | None
    # Only the leads with this number, read as CreateLead reads one ("" for any).
    phone: str = ""
    region: str = "US"


@dataclass(frozen=True)
class ListStatusChanges(paging.Listing):
    lead_id: str


def new_lead_id() -> str:
    return str(ids.uuid4())


async def create_lead(cmd: CreateLead, uow: LeadsUnitOfWork) -> Lead | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        lead = Lead.create(
            lead_id=new_lead_id(), name=cmd.name, phone=cmd.phone, email=cmd.email,
            actor=cmd.caller.principal, now=utcnow(), region=cmd.region,
        )
        await uow.leads.add(lead)
        await uow.commit(outcome=lead)
        return lead


async def update_status(cmd: UpdateStatus, uow: LeadsUnitOfWork) -> Lead | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        lead = await uow.leads.get(check_id(cmd.lead_id), for_update=True)
        change = lead.move_to(
            cmd.status, actor=cmd.caller.principal, now=utcnow(),
            idempotency_key=cmd.key.value, expected_version=cmd.expected_version,
        )
        await uow.leads.save(lead, change)
        await uow.commit(outcome=lead)
        return lead


async def batch_update_status(cmd: BatchUpdateStatus, uow: LeadsUnitOfWork
                              ) -> BatchResult | Stored:
    """All or nothing: either every lead that can move moves, or none does."""
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        lead_ids = check_batch(cmd.lead_ids)
        leads = await uow.leads.get_many(lead_ids, for_update=True)
        moved, unchanged = _move_all(cmd, lead_ids, leads)
        for lead, change in moved:
            await uow.leads.save(lead, change)
        result = BatchResult([lead for lead, _ in moved], unchanged)
        await uow.commit(outcome=result)
        return result


def _move_all(cmd: BatchUpdateStatus, lead_ids: list[str], leads: dict[str, Lead]
              ) -> tuple[list[tuple[Lead, StatusChange]], list[str]]:
    """Every lead's move, and those already in the status; BatchRefused naming every
    lead that cannot move."""
    now = utcnow()
    refusals: list[tuple[str, errors.DomainError]] = []
    moved: list[tuple[Lead, StatusChange]] = []
    unchanged: list[str] = []
    for lead_id in lead_ids:
        lead = leads.get(lead_id)
        if lead is None:
            refusals.append((lead_id, LeadNotFound(lead_id)))
            continue
        try:
            change = lead.move_to(cmd.status, actor=cmd.caller.principal, now=now,
                                  idempotency_key=cmd.key.value)
        except StatusUnchanged:
            unchanged.append(lead_id)
        except errors.DomainError as refusal:
            refusals.append((lead_id, refusal))
        else:
            moved.append((lead, change))
    if refusals:
        raise BatchRefused(refusals)
    return moved, unchanged


async def get_lead(query: GetLead, uow: LeadsUnitOfWork) -> Lead:
    async with uow.for_caller(query.caller, read_only=True):
        return await uow.leads.get(check_id(query.lead_id))


async def list_leads(query: ListLeads, uow: LeadsUnitOfWork) -> paging.Page[Lead]:
    """Newest first."""
    phone = to_e164(query.phone, query.region) if query.phone else None
    async with uow.for_caller(query.caller, read_only=True):
        return await paging.page(
            query.page,
            {"list": "leads", "status": query.status and query.status.value,
             "phone": phone or ""},
            paging.by_time_and_id(lambda lead: (lead.created_at, lead.lead_id)),
            lambda after, limit: uow.leads.newest(query.status, after, limit, phone=phone),
            org=query.caller.org)


async def list_status_changes(query: ListStatusChanges, uow: LeadsUnitOfWork
                              ) -> paging.Page[tuple[int, StatusChange]]:
    """A lead's audit trail, oldest first; LEAD_NOT_FOUND for a lead that does not exist."""
    lead_id = check_id(query.lead_id)
    async with uow.for_caller(query.caller, read_only=True):
        found = await paging.page(
            query.page, {"list": "status_changes", "lead_id": lead_id},
            paging.by_sequence(lambda item: item[0]),
            lambda after, limit: uow.leads.changes(lead_id, after, limit), org=query.caller.org)
        if not found.items:
            await uow.leads.get(lead_id)  # a lead with no changes yet, or LEAD_NOT_FOUND
        return found


def check_id(lead_id: str, field: str = "lead_id") -> str:
    return validation.identifier(lead_id, field)


def check_batch(lead_ids: list[str]) -> list[str]:
    if not lead_ids:
        raise errors.InvalidArgument.field("lead_ids", "name at least one lead")
    if len(lead_ids) > MAX_BATCH_SIZE:
        raise errors.InvalidArgument.field(
            "lead_ids", f"at most {MAX_BATCH_SIZE} leads in one batch, got {len(lead_ids)}"
        )
    found = errors.Violations()
    seen: set[str] = set()
    for i, lead_id in enumerate(lead_ids):
        problem = validation.id_problem(lead_id)
        if problem is not None:
            found.add(f"lead_ids[{i}]", problem)
        elif lead_id in seen:
            found.add(f"lead_ids[{i}]", f"{lead_id!r} is named twice")
        seen.add(lead_id)
    found.raise_if_any()
    return lead_ids

