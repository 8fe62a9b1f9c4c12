"""A key's claim rides with the call's first statements on PostgreSQL, expecting a
new key (services.shared.uow, `KeyStep.claim`); when the key was not free, the
call runs again claiming at once, and answers exactly as the claim would have:
a replay, a key in use, a key reused. The replays here are of keys the serving
process does not remember, so each goes to the database."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.shared import sql
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.conftest import create_lead, move
from tests.integration.test_idempotency import REQUEST, count_leads
from tests.support.rpc import refusal

Stub = leads_pb2_grpc.LeadsServiceStub


def forget_outcomes(server: RunningService) -> None:
    """As another replica, or this one after a restart: no outcome in memory."""
    server.runtime.storage.keys._remembered.clear()


async def test_a_replay_the_process_does_not_remember_is_answered_from_the_database(
    leads: Stub, leads_server: RunningService,
) -> None:
    key = new_key()
    first = await leads.CreateLead(REQUEST, metadata=idempotency(key))
    forget_outcomes(leads_server)
    call = leads.CreateLead(REQUEST, metadata=idempotency(key))
    again = await call
    assert again == first
    assert dict(await call.initial_metadata())["idempotent-replayed"] == "true"
    assert await count_leads(leads_server) == 1


async def test_a_reused_key_the_process_does_not_remember_is_refused(
    leads: Stub, leads_server: RunningService,
) -> None:
    key = new_key()
    await create_lead(leads, key=key)
    forget_outcomes(leads_server)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await create_lead(leads, name="Someone Else", key=key)
    assert refusal(failed.value).reason == "IDEMPOTENCY_KEY_REUSED"
    assert await count_leads(leads_server) == 1


async def test_a_replayed_status_change_moves_the_lead_once(
    leads: Stub, leads_server: RunningService,
) -> None:
    lead = await create_lead(leads)
    key = new_key()
    moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key)
    forget_outcomes(leads_server)
    again = await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key)
    assert again == moved and again.version == 2
    current = await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))
    assert current.version == 2


@pytest.mark.postgres_only  # SQLite claims in its writer's transaction, by function calls
async def test_a_new_key_costs_no_round_trip_of_its_own(
    leads: Stub, leads_server: RunningService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL a lone CreateLead is one round trip: claim, writes, event,
    outcome and COMMIT; its replay from the database, two more (the claim ahead
    that fails, then the claim at once, which finds the outcome)."""
    sent: list[int] = []
    at_once = sql._at_once

    async def counted(raw: Any, statements: Any, *rest: Any) -> Any:
        sent.append(len(statements))
        return await at_once(raw, statements, *rest)

    await create_lead(leads)  # the statements' first use: prepared from now on
    monkeypatch.setattr(sql, "_at_once", counted)
    key = new_key()
    await leads.CreateLead(REQUEST, metadata=idempotency(key))
    assert len(sent) == 1, sent
    forget_outcomes(leads_server)
    await leads.CreateLead(REQUEST, metadata=idempotency(key))
    assert len(sent) == 3, sent
