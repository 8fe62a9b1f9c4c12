"""Asking the leads service about a lead, for the services that need one.

A lead that does not exist is a final refusal (NOT_FOUND / LEAD_NOT_FOUND,
stored under the caller's idempotency key); a leads service that does not
answer is transient (UNAVAILABLE / LEADS_UNAVAILABLE, never INTERNAL), so the
caller's retry runs again. The channel's service config already retries
UNAVAILABLE with backoff within the deadline.

The lookup is made on behalf of the caller, in its org: the service's own
credentials, with the caller's org in `x-crm-org` (honoured from a service
only). Another org's lead is LEAD_NOT_FOUND, as a missing one.

A lead's contact (its id, name and number) is kept once found, under its org,
for the `KEPT` leads looked up most recently (across orgs) and at most
`KEPT_SECONDS`: the next text to the same lead meanwhile asks the leads service
nothing. That is exact, not a guess, because the contract gives a lead's name
and number no way to change and a lead no way to go (crm.leads.v1 has no edit or
delete; the statuses are all a lead's changes). The time limit bounds what
nothing in the contract does: a number an operator corrects by hand, a lead a
failover lost. An RPC that edits or erases a lead must come with this kept copy
fed by the leads service's events (or dropped). A missing lead is never kept: it
may be created a moment later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from crm.leads.v1 import leads_pb2, leads_pb2_grpc

from services.shared import errors, validation
from services.shared.auth import ORG_METADATA
from services.shared.context import maybe_call
from services.shared.kept import Kept

# The contacts kept (a few hundred bytes each), and for how long at most.
KEPT = 8192
KEPT_SECONDS = 300.0


class LeadNotFound(errors.NotFound):
    reason = "LEAD_NOT_FOUND"

    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead {lead_id!r} does not exist", metadata={"lead_id": lead_id})


class LeadsUnavailable(errors.Unavailable):
    reason = "LEADS_UNAVAILABLE"


@dataclass(frozen=True)
class LeadContact:
    lead_id: str
    name: str
    phone: str


class LeadLookup:
    def __init__(self, channel: grpc.aio.Channel, *, kept: int = KEPT,
                 kept_seconds: float = KEPT_SECONDS) -> None:
        self._leads = leads_pb2_grpc.LeadsServiceStub(channel)
        self._kept: Kept[tuple[str, str], tuple[LeadContact, float]] = Kept(kept)
        self._kept_seconds = kept_seconds

    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> LeadContact:
        validation.identifier(lead_id, "lead_id")
        call = maybe_call()
        # Kept only for a caller's lookups, which name the org they are made in.
        key = None if call is None else (call.caller.org, lead_id)
        if key is not None and (found := self._kept.get(key)) is not None:
            contact, until = found
            if time.monotonic() < until:
                return contact
            self._kept.drop(key)
        metadata = (("x-request-id", call.request_id), (ORG_METADATA, call.caller.org)
                    ) if call else ()
        try:
            lead = await self._leads.GetLead(
                leads_pb2.GetLeadRequest(lead_id=lead_id), timeout=deadline_seconds,
                metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise LeadNotFound(lead_id) from None
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.InvalidArgument.field("lead_id", str(error.details())) from None
            raise LeadsUnavailable(
                f"the leads service could not answer ({error.code().name})", retry_after=1.0
            ) from error
        contact = LeadContact(lead.lead_id, lead.name, lead.phone)
        if key is not None:
            self._kept.put(key, (contact, time.monotonic() + self._kept_seconds))
        return contact
