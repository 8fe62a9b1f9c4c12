"""Page tokens are tamper-proof: a forged or altered one is INVALID_PAGE_TOKEN, never
INTERNAL, on every list RPC of leads, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared import paging
from services.shared.errors import InvalidArgument
from tests.integration.conftest import create_lead, move
from tests.support.forgery import assert_every_forgery_refused
from tests.support.servers import TOKENS_ENV, start_in_process

Stub = leads_pb2_grpc.LeadsServiceStub


async def test_forged_tokens_are_refused_on_list_leads(leads: Stub) -> None:
    for i in range(3):
        await create_lead(leads, name=f"Lead {i}")
    genuine = (await leads.ListLeads(pb.ListLeadsRequest(page_size=1))).next_page_token
    assert (await leads.ListLeads(pb.ListLeadsRequest(page_size=1, page_token=genuine))).leads
    await assert_every_forgery_refused(
        leads.ListLeads, lambda token: pb.ListLeadsRequest(page_token=token),
        {"list": "leads", "status": None, "phone": ""}, time_ordered=True, genuine=genuine)


async def test_forged_tokens_are_refused_on_list_status_changes(leads: Stub) -> None:
    lead = await create_lead(leads)
    await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED)
    genuine = (await leads.ListStatusChanges(pb.ListStatusChangesRequest(
        lead_id=lead.lead_id, page_size=1))).next_page_token
    await assert_every_forgery_refused(
        leads.ListStatusChanges,
        lambda token: pb.ListStatusChangesRequest(lead_id=lead.lead_id, page_token=token),
        {"list": "status_changes", "lead_id": lead.lead_id}, time_ordered=False,
        genuine=genuine)


def test_replicas_given_the_same_configuration_sign_alike_and_others_do_not() -> None:
    query = {"list": "leads", "status": None, "phone": ""}
    paging.configure(paging.derived_key({"token-0123456789abcdef": "alice"}))
    token = paging.encode(["2026-01-01T00:00:00+00:00", "lead-1"], query)
    paging.configure(paging.derived_key({"token-0123456789abcdef": "alice"}))
    assert paging.decode(token, query) == ["2026-01-01T00:00:00+00:00", "lead-1"]
    paging.configure(b"another key, as CRM_PAGE_TOKEN_SECRET would give")
    with pytest.raises(InvalidArgument) as refused:
        paging.decode(token, query)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


async def test_a_server_signs_with_crm_page_token_secret(
    service_env: dict[str, str], channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    env = {**service_env, "CRM_API_TOKENS": TOKENS_ENV,
           "CRM_PAGE_TOKEN_SECRET": "a page token secret of 32 characters!"}
    running = await start_in_process(LEADS, env)
    try:
        stub = Stub(channel_for(running.target))
        for i in range(2):
            await create_lead(stub, name=f"Lead {i}")
        token = (await stub.ListLeads(pb.ListLeadsRequest(page_size=1))).next_page_token
        paging.configure(b"a page token secret of 32 characters!")
        assert paging.decode(
            token, {"list": "leads", "status": None, "phone": "", "org": "default"}) is not None
    finally:
        await running.stop(grace=1, drain=0)
