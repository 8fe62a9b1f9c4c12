"""A log that holds events when it is ordered by transaction: they keep their
order and their cursors, and new events come after them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from sqlalchemy import insert, text

from services.leads.bootstrap import SPEC as LEADS
from services.shared import migrations
from services.shared.config import normalize_database_url
from services.shared.db import Database, utcnow
from tests.integration.conftest import create_lead
from tests.integration.test_subscribe import take
from tests.support.servers import environment, start_in_process

# The leads revision before organizations and the log's new order.
BEFORE = "0002"


async def write_old_events(database_url: str) -> str:
    """Migrate to BEFORE and write three events as the log did then; its id."""
    db = Database(normalize_database_url(database_url), pool_size=1)
    try:
        await migrations.upgrade(db, "leads", LEADS.migrations, BEFORE)
        async with db.transaction(write=True) as conn:
            for position in (1, 2, 3):
                lead_id = f"old-{position}"
                payload = pb.Event(type="lead.created", actor="old", lead_id=lead_id,
                                   lead=pb.Lead(lead_id=lead_id, version=1))
                await conn.execute(insert(LEADS.tables.events).values(
                    position=position, occurred_at=utcnow(), type="lead.created", actor="old",
                    lead_id=lead_id, payload=payload.SerializeToString()))
            await conn.execute(text("UPDATE leads_event_log SET head = 3"))
            log_id = str((await conn.execute(
                text("SELECT log_id FROM leads_event_log"))).scalar_one())
            await conn.commit()
        return log_id
    finally:
        await db.dispose()


async def test_events_written_before_keep_their_order_and_their_cursors(
    database_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    log_id = await write_old_events(database_url)
    running = await start_in_process(LEADS, environment(database_url, tmp_path))  # migrates
    try:
        stub = leads_pb2_grpc.LeadsServiceStub(channel_for(running.target))
        # A cursor issued before: "<log id>:<position>".
        issued = base64.urlsafe_b64encode(f"{log_id}:1".encode()).decode().rstrip("=")
        stream = stub.Subscribe(pb.SubscribeRequest(after_cursor=issued))
        assert (await stream.read()).type == "bookmark"
        created = [await create_lead(stub, name=f"New {i}") for i in range(2)]
        events = await take(stream, 4)
        assert [e.lead_id for e in events] == ["old-2", "old-3",
                                               *(lead.lead_id for lead in created)]
        # Resuming after an old event's cursor, or a new one's, is exact.
        for i, event in enumerate(events[:-1]):
            resumed = stub.Subscribe(pb.SubscribeRequest(after_cursor=event.cursor))
            await resumed.read()
            assert await take(resumed, 3 - i) == events[i + 1:]
            resumed.cancel()
        stream.cancel()
    finally:
        await running.stop(grace=1, drain=0)
