"""Calls cancelled by their clients in the middle of a transaction.

A client that gives up (a closed tab, a deadline, a cancelled stub call) cuts
its call wherever it is. On SQLite a transaction cut inside a statement used to
leave its connection holding the file's write lock: every write after it waited
out `busy_timeout` and the service answered UNAVAILABLE for half a minute.
"""

from __future__ import annotations

import asyncio

from protos.crm.leads.v1 import leads_pb2 as leads_pb
from protos.crm.leads.v1 import leads_pb2_grpc
from services.shared.server import RunningService
from tests.integration.conftest import create_lead
from tests.support.servers import wait_until

ROUNDS = 60
AT_ONCE = 5


async def test_creates_cancelled_at_any_point_leave_the_next_write_answered(
    leads: leads_pb2_grpc.LeadsServiceStub, leads_server: RunningService,
) -> None:
    for round_ in range(ROUNDS):
        calls = [asyncio.ensure_future(create_lead(leads)) for _ in range(AT_ONCE)]
        # Cut them at every point of their way: queued, mid-statement, committing.
        await asyncio.sleep(0.001 * (round_ % 20))
        for call in calls:
            call.cancel()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        # A write right after is answered (not queued behind a lock nobody holds).
        lead = await asyncio.wait_for(create_lead(leads), 20)
        assert lead.lead_id
        assert all(isinstance(o, leads_pb.Lead | asyncio.CancelledError) for o in outcomes)
    # The abandoned transactions finish on their own and give their connections back.
    db = leads_server.runtime.storage.db
    await wait_until(lambda: db.connections_in_use() == 0, within=20)
