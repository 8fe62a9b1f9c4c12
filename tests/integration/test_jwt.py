"""JWTs over gRPC: a real service accepts the identity provider's, with its org and
role, and refuses a bad one UNAUTHENTICATED / INVALID_TOKEN, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from crm.leads.v1 import leads_pb2, leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared.clients import idempotency, new_key, open_channel
from services.shared.server import RunningService
from tests.support.idp import IdentityProvider
from tests.support.rpc import refusal
from tests.support.servers import environment, start_in_process


@pytest.fixture
async def idp_and_leads(database_url: str, tmp_path: Path
                        ) -> AsyncIterator[tuple[IdentityProvider, RunningService]]:
    idp = IdentityProvider(tmp_path)
    running = await start_in_process(LEADS, {**environment(database_url, tmp_path),
                                             **idp.env()})
    yield idp, running
    await running.stop(grace=1, drain=0)


async def test_a_jwt_acts_as_its_sub_in_its_org_with_its_role(
    idp_and_leads: tuple[IdentityProvider, RunningService],
) -> None:
    idp, leads = idp_and_leads
    for alg in ("RS256", "ES256", "HS256"):
        async with open_channel(leads.target, token=idp.sign(alg=alg)) as channel:
            made = await leads_pb2_grpc.LeadsServiceStub(channel).CreateLead(
                leads_pb2.CreateLeadRequest(name=f"By {alg}", phone="+14155550123"),
                metadata=idempotency(new_key()))
            assert made.lead_id
    viewer = idp.sign(sub="fay", roles=["viewer"])
    async with open_channel(leads.target, token=viewer) as channel:
        stub = leads_pb2_grpc.LeadsServiceStub(channel)
        await stub.ListLeads(leads_pb2.ListLeadsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateLead(leads_pb2.CreateLeadRequest(name="No", phone="+14155550199"),
                                  metadata=idempotency(new_key()))
        assert refusal(denied.value).metadata == {"role": "viewer", "required_role": "agent"}


@pytest.mark.parametrize("fields", [{"ttl": -60}, {"org": None}, {"roles": ["service"]},
                                    {"aud": "elsewhere"}])
async def test_a_bad_jwt_is_unauthenticated(
    idp_and_leads: tuple[IdentityProvider, RunningService], fields: dict[str, object],
) -> None:
    idp, leads = idp_and_leads
    token = idp.sign(**fields)
    async with open_channel(leads.target, token=token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await leads_pb2_grpc.LeadsServiceStub(channel).ListLeads(leads_pb2.ListLeadsRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert refusal(refused.value).reason == "INVALID_TOKEN"
    assert token not in (refused.value.details() or "")
