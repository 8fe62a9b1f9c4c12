"""The unit of work behaves the same on SQLite and PostgreSQL: a guarded write
that finds its row changed commits nothing, on either."""

from __future__ import annotations

import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads import messages
from services.leads.domain import Lead, LeadStatus
from services.shared.auth import Caller
from services.shared.db import utcnow
from services.shared.server import RunningService
from services.shared.uow import ConcurrentChange, UnitOfWork
from tests.integration.conftest import create_lead, move

ALICE = Caller("alice")


async def read(server: RunningService, lead_id: str) -> Lead:
    async def get(uow: UnitOfWork) -> Lead:
        async with uow.for_caller(ALICE, read_only=True):
            return await uow.leads.get(lead_id)  # type: ignore[attr-defined, no-any-return]

    return await server.runtime.units.attempt(get, time_remaining=10)


async def test_a_write_guarded_by_a_stale_version_commits_nothing_on_either_database(
    leads_server: RunningService, leads: leads_pb2_grpc.LeadsServiceStub,
) -> None:
    created = await create_lead(leads)
    stale = await read(leads_server, created.lead_id)
    await move(leads, created.lead_id, pb.LEAD_STATUS_CONTACTED)  # version 2 now
    change = stale.move_to(LeadStatus.QUALIFIED, actor="alice", now=utcnow(),
                           idempotency_key="stale-key")
    uow = leads_server.runtime.units.answering(messages.lead)()
    with pytest.raises(ConcurrentChange):
        async with uow.for_caller(ALICE):
            await uow.leads.save(stale, change)  # type: ignore[attr-defined]
            await uow.commit()
    current = await read(leads_server, created.lead_id)
    assert (current.status, current.version) == (LeadStatus.CONTACTED, 2)
    trail = await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=created.lead_id))
    assert [c.idempotency_key for c in trail.status_changes] != ["stale-key"]
    assert len(trail.status_changes) == 1


async def test_a_guarded_write_that_finds_its_row_commits_with_the_rest(
    leads_server: RunningService, leads: leads_pb2_grpc.LeadsServiceStub,
) -> None:
    created = await create_lead(leads)
    fresh = await read(leads_server, created.lead_id)
    change = fresh.move_to(LeadStatus.QUALIFIED, actor="alice", now=utcnow(),
                           idempotency_key="fresh-key")
    uow = leads_server.runtime.units.answering(messages.lead)()
    async with uow.for_caller(ALICE):
        await uow.leads.save(fresh, change)  # type: ignore[attr-defined]
        await uow.commit()
    current = await read(leads_server, created.lead_id)
    assert (current.status, current.version) == (LeadStatus.QUALIFIED, 2)
