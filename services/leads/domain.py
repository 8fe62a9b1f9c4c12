"""Leads and their pipeline, with no IO.

    NEW → CONTACTED → QUALIFIED → PROPOSAL_SENT → NEGOTIATING → WON
    any status that is not final → LOST;   WON and LOST are final

Forward skips are allowed; moves backwards are not. Moving a lead to the status
it already has is refused as STATUS_UNCHANGED, which a batch reports instead
of failing on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from crm.leads.v1 import leads_pb2

from services.shared import errors, rules
from services.shared.phones import to_e164

# The contract's rules (crm.common.v1.FieldRules on CreateLeadRequest…).
NAME = rules.of(leads_pb2.CreateLeadRequest, "name")
EMAIL = rules.of(leads_pb2.CreateLeadRequest, "email")
MAX_NAME_LENGTH = NAME.max_length
MAX_EMAIL_LENGTH = EMAIL.max_length
MAX_BATCH_SIZE = rules.of(leads_pb2.BatchUpdateLeadStatusRequest, "lead_ids").max_items


class LeadStatus(StrEnum):
    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    PROPOSAL_SENT = "proposal_sent"
    NEGOTIATING = "negotiating"
    WON = "won"
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self in (LeadStatus.WON, LeadStatus.LOST)


PIPELINE = (
    LeadStatus.NEW,
    LeadStatus.CONTACTED,
    LeadStatus.QUALIFIED,
    LeadStatus.PROPOSAL_SENT,
    LeadStatus.NEGOTIATING,
    LeadStatus.WON,
)


def allowed_moves(current: LeadStatus) -> list[LeadStatus]:
    """The statuses a lead in `current` may move to, in pipeline order."""
    if current.final:
        return []
    later = list(PIPELINE[PIPELINE.index(current) + 1 :])
    return [*later, LeadStatus.LOST]


class LeadNotFound(errors.NotFound):
    reason = "LEAD_NOT_FOUND"

    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead {lead_id!r} does not exist", metadata={"lead_id": lead_id})
        self.lead_id = lead_id


class StatusUnchanged(errors.FailedPrecondition):
    reason = "STATUS_UNCHANGED"

    def __init__(self, lead_id: str, status: LeadStatus) -> None:
        super().__init__(
            f"lead {lead_id!r} is already {status.value}",
            metadata={"lead_id": lead_id, "status": status.value},
        )


class InvalidStatusTransition(errors.FailedPrecondition):
    reason = "INVALID_STATUS_TRANSITION"

    def __init__(self, lead_id: str, current: LeadStatus, target: LeadStatus) -> None:
        why = "is final" if current.final else "would move backwards"
        allowed = ", ".join(s.value for s in allowed_moves(current)) or "none"
        super().__init__(
            f"lead {lead_id!r} cannot move from {current.value} to {target.value}: "
            f"{current.value} {why} (allowed: {allowed})",
            metadata={"lead_id": lead_id, "from_status": current.value,
                      "to_status": target.value},
        )


class VersionMismatch(errors.Aborted):
    reason = "VERSION_MISMATCH"

    def __init__(self, lead_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"lead {lead_id!r} is at version {actual}, not {expected}; reload it and retry",
            metadata={"lead_id": lead_id, "expected_version": str(expected),
                      "actual_version": str(actual)},
        )


class BatchRefused(errors.FailedPrecondition):
    """A batch failed as a whole; every offending lead is named."""

    def __init__(self, refusals: list[tuple[str, errors.DomainError]]) -> None:
        reasons = {error.reason for _, error in refusals}
        offenders = ", ".join(lead_id for lead_id, _ in refusals)
        super().__init__(
            f"no lead was changed: {len(refusals)} of the batch cannot move ({offenders})",
            reason=reasons.pop() if len(reasons) == 1 else "BATCH_REFUSED",
            metadata={"lead_ids": ",".join(lead_id for lead_id, _ in refusals)},
            violations=[
                errors.Violation(type=error.reason, subject=f"leads/{lead_id}",
                                 description=error.message)
                for lead_id, error in refusals
            ],
        )
        self.refusals = refusals


@dataclass(frozen=True)
class StatusChange:
    lead_id: str
    from_status: LeadStatus
    to_status: LeadStatus
    actor: str
    changed_at: datetime
    idempotency_key: str
    version: int


@dataclass(frozen=True)
class LeadCreated:
    lead: Lead


@dataclass(frozen=True)
class LeadStatusChanged:
    lead: Lead
    change: StatusChange


LeadEvent = LeadCreated | LeadStatusChanged


@dataclass
class Lead:
    lead_id: str
    name: str
    phone: str
    email: str
    status: LeadStatus
    version: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    events: list[LeadEvent] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        lead_id: str,
        name: str,
        phone: str,
        email: str,
        actor: str,
        now: datetime,
        region: str,
    ) -> Lead:
        """A NEW lead, or InvalidArgument naming every bad field."""
        found = errors.Violations()
        if not name.strip():
            found.add("name", "is required")
        elif (problem := rules.problem(NAME, name)) is not None:
            found.add("name", problem)
        try:
            phone = to_e164(phone, region)
        except errors.InvalidArgument as error:
            for violation in error.violations:
                found.add(violation.field, violation.description)
        if len(email) > MAX_EMAIL_LENGTH:
            found.add("email", f"at most {MAX_EMAIL_LENGTH} characters")
        elif not rules.matches(EMAIL, email):
            found.add("email", f"{email!r} is not an email address")
        found.raise_if_any()
        lead = cls(lead_id, name.strip(), phone, email, LeadStatus.NEW, 1, actor, now, now)
        lead.events.append(LeadCreated(lead.snapshot()))
        return lead

    def move_to(
        self,
        target: LeadStatus,
        *,
        actor: str,
        now: datetime,
        idempotency_key: str,
        expected_version: int | None = None,
    ) -> StatusChange:
        """Move along the pipeline, or raise the refusal that names why not."""
        if expected_version is not None and expected_version != self.version:
            raise VersionMismatch(self.lead_id, expected_version, self.version)
        if target == self.status:
            raise StatusUnchanged(self.lead_id, target)
        if target not in allowed_moves(self.status):
            raise InvalidStatusTransition(self.lead_id, self.status, target)
        change = StatusChange(
            lead_id=self.lead_id,
            from_status=self.status,
            to_status=target,
            actor=actor,
            changed_at=now,
            idempotency_key=idempotency_key,
            version=self.version + 1,
        )
        self.status = target
        self.version += 1
        self.updated_at = now
        self.events.append(LeadStatusChanged(self.snapshot(), change))
        return change

    def snapshot(self) -> Lead:
        return replace(self, events=[])

    def pull_events(self) -> list[LeadEvent]:
        pulled, self.events = self.events, []
        return pulled
