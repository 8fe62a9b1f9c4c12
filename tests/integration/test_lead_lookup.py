"""The lookup other services make of a lead (services.shared.lead_lookup), against a
real leads server: a contact found is kept for a time, and only for its org."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2_grpc

from services.shared import context
from services.shared.auth import Caller
from services.shared.lead_lookup import LeadContact, LeadLookup, LeadNotFound, LeadsUnavailable
from services.shared.server import RunningService
from tests.integration.conftest import create_lead


@pytest.fixture
async def as_alice() -> AsyncIterator[None]:
    """A call of alice's (org "default") being served, as messaging serves one."""
    token = context.enter(context.Call("messaging", "/crm.messaging.v1.MessagingService/SendSms",
                                       "request-1", Caller("alice")))
    yield
    context.leave(token)


async def test_a_contact_is_kept_for_a_time_then_asked_again(
    leads: leads_pb2_grpc.LeadsServiceStub, leads_server: RunningService,
    channel_for: Callable[..., grpc.aio.Channel], as_alice: None,
) -> None:
    lead = await create_lead(leads)
    lookup = LeadLookup(channel_for(leads_server.target, "messaging"), kept_seconds=0.5)
    found = await lookup.get(lead.lead_id, deadline_seconds=5)
    assert found == LeadContact(lead.lead_id, lead.name, lead.phone)
    await leads_server.stop(grace=0, drain=0)
    assert await lookup.get(lead.lead_id, deadline_seconds=1) == found  # kept
    await asyncio.sleep(0.6)
    with pytest.raises(LeadsUnavailable):  # no longer kept: asked, and leads is gone
        await lookup.get(lead.lead_id, deadline_seconds=1)


async def test_a_missing_lead_is_not_kept(
    leads: leads_pb2_grpc.LeadsServiceStub, leads_server: RunningService,
    channel_for: Callable[..., grpc.aio.Channel], as_alice: None,
) -> None:
    lookup = LeadLookup(channel_for(leads_server.target, "messaging"))
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(LeadNotFound):
        await lookup.get(missing, deadline_seconds=5)
    await leads_server.stop(grace=0, drain=0)
    with pytest.raises(LeadsUnavailable):
        await lookup.get(missing, deadline_seconds=1)
