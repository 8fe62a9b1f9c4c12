"""Translation between the leads domain and the crm.leads.v1 messages."""

from __future__ import annotations

from crm.leads.v1 import leads_pb2 as pb

from services.leads.domain import (
    Lead,
    LeadCreated,
    LeadEvent,
    LeadStatus,
    LeadStatusChanged,
    StatusChange,
)
from services.leads.service import BatchResult
from services.shared import phones
from services.shared.errors import InvalidArgument
from services.shared.events import EventRecord
from services.shared.paging import Page
from services.shared.protos import enum_numbers, timestamp

_TO_PROTO = enum_numbers(LeadStatus, pb.LeadStatus.DESCRIPTOR)
_FROM_PROTO = {number: status for status, number in _TO_PROTO.items()}

EVENT_TYPES = ("lead.created", "lead.status_changed")


def status(value: LeadStatus) -> int:
    return _TO_PROTO[value]


def status_from(number: int, field: str = "status") -> LeadStatus:
    found = _FROM_PROTO.get(number)
    if found is None:
        names = ", ".join(pb.LeadStatus.Name(n) for n in _FROM_PROTO)
        raise InvalidArgument.field(field, f"must be one of {names}")
    return found


def lead(value: Lead) -> pb.Lead:
    return pb.Lead(
        lead_id=value.lead_id,
        name=value.name,
        phone=value.phone,
        email=value.email,
        status=status(value.status),  # type: ignore[arg-type]
        version=value.version,
        created_by=value.created_by,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        phone_display=phones.display(value.phone),
    )


def status_change(value: StatusChange) -> pb.StatusChange:
    return pb.StatusChange(
        lead_id=value.lead_id,
        from_status=status(value.from_status),  # type: ignore[arg-type]
        to_status=status(value.to_status),  # type: ignore[arg-type]
        actor=value.actor,
        changed_at=timestamp(value.changed_at),
        idempotency_key=value.idempotency_key,
        version=value.version,
    )


def batch_result(value: BatchResult) -> pb.BatchUpdateLeadStatusResponse:
    return pb.BatchUpdateLeadStatusResponse(
        updated_leads=[lead(x) for x in value.updated], unchanged_lead_ids=value.unchanged)


def leads_page(found: Page[Lead]) -> pb.ListLeadsResponse:
    return pb.ListLeadsResponse(leads=[lead(x) for x in found.items],
                                next_page_token=found.next_token)


def status_changes_page(found: Page[tuple[int, StatusChange]]) -> pb.ListStatusChangesResponse:
    return pb.ListStatusChangesResponse(
        status_changes=[status_change(change) for _, change in found.items],
        next_page_token=found.next_token)


def event_record(event: LeadEvent) -> EventRecord:
    if isinstance(event, LeadCreated):
        kind, actor, at = "lead.created", event.lead.created_by, event.lead.created_at
        message = pb.Event(lead=lead(event.lead))
    elif isinstance(event, LeadStatusChanged):
        kind, actor, at = "lead.status_changed", event.change.actor, event.change.changed_at
        message = pb.Event(lead=lead(event.lead), status_change=status_change(event.change))
    else:  # pragma: no cover - the union is closed
        raise TypeError(event)
    message.type = kind
    message.actor = actor
    message.lead_id = event.lead.lead_id
    message.occurred_at.CopyFrom(timestamp(at))
    return EventRecord(
        type=kind,
        actor=actor,
        occurred_at=at,
        payload=message.SerializeToString(),
        lead_id=event.lead.lead_id,
    )
