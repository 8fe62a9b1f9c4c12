"""The leads use cases. Each runs inside one unit of work that its caller opened
and commits: the change, its audit record, its events and its idempotency
record land together."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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
from services.shared import errors, validation
from services.shared.db import utcnow


class LeadRepository(Protocol):
    async def add(self, lead: Lead) -> None: ...
    async def get(self, lead_id: str, *, for_update: bool = False) -> Lead: ...
    async def get_many(
        self, lead_ids: list[str], *, for_update: bool = False
    ) -> dict[str, Lead]: ...
    async def save(self, lead: Lead, change: StatusChange) -> None: ...
    async def newest(self, status: LeadStatus | None, after: list[object] | None,
                     limit: int) -> list[Lead]: ...
    async def list_changes(self, lead_id: str, after: int | None,
                           limit: int) -> list[tuple[int, StatusChange]]: ...


class LeadsUnitOfWork(Protocol):
    @property
    def leads(self) -> LeadRepository: ...


@dataclass(frozen=True)
class CreateLead:
    name: str
    phone: str
    email: str
    actor: str


@dataclass(frozen=True)
class UpdateStatus:
    lead_id: str
    status: LeadStatus
    actor: str
    idempotency_key: str
    expected_version: int | None = None


@dataclass(frozen=True)
class BatchUpdateStatus:
    lead_ids: list[str]
    status: LeadStatus
    actor: str
    idempotency_key: str


@dataclass(frozen=True)
class BatchResult:
    updated: list[Lead]
    unchanged: list[str]


def new_lead_id() -> str:
    return str(uuid.uuid4())


async def create_lead(cmd: CreateLead, uow: LeadsUnitOfWork, *, region: str) -> Lead:
    lead = Lead.create(
        lead_id=new_lead_id(),
        name=cmd.name,
        phone=cmd.phone,
        email=cmd.email,
        actor=cmd.actor,
        now=utcnow(),
        region=region,
    )
    await uow.leads.add(lead)
    return lead


async def update_status(cmd: UpdateStatus, uow: LeadsUnitOfWork) -> Lead:
    lead = await uow.leads.get(check_id(cmd.lead_id), for_update=True)
    change = lead.move_to(
        cmd.status,
        actor=cmd.actor,
        now=utcnow(),
        idempotency_key=cmd.idempotency_key,
        expected_version=cmd.expected_version,
    )
    await uow.leads.save(lead, change)
    return lead


async def batch_update_status(cmd: BatchUpdateStatus, uow: LeadsUnitOfWork) -> BatchResult:
    """All or nothing: either every lead that can move moves, or none does."""
    lead_ids = check_batch(cmd.lead_ids)
    leads = await uow.leads.get_many(lead_ids, for_update=True)
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
            change = lead.move_to(
                cmd.status, actor=cmd.actor, now=now, idempotency_key=cmd.idempotency_key
            )
        except StatusUnchanged:
            unchanged.append(lead_id)
        except errors.DomainError as refusal:
            refusals.append((lead_id, refusal))
        else:
            moved.append((lead, change))
    if refusals:
        raise BatchRefused(refusals)
    for lead, change in moved:
        await uow.leads.save(lead, change)
    return BatchResult([lead for lead, _ in moved], unchanged)


async def get_lead(lead_id: str, uow: LeadsUnitOfWork) -> Lead:
    return await uow.leads.get(check_id(lead_id))


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
        if not lead_id or len(lead_id) > 64 or not validation.printable(lead_id):
            found.add(f"lead_ids[{i}]", "must be 1 to 64 printable characters")
        elif lead_id in seen:
            found.add(f"lead_ids[{i}]", f"{lead_id!r} is named twice")
        seen.add(lead_id)
    found.raise_if_any()
    return lead_ids
