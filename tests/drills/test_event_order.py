"""Drill: the event log's order with no lock on its head. Four writers on two
replicas, transactions that hold their xid for a long while beside short ones
(some rolled back), subscribers resuming from random cursors on either
replica: nothing missing, nothing repeated, every lead's events in the order
they were written, and every stream a prefix of the one order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared import sql
from services.shared.config import normalize_database_url
from services.shared.db import Database, utcnow
from services.shared.events import EventLog, EventRecord
from tests.drills.conftest import report
from tests.integration.conftest import create_lead, move
from tests.support.servers import ServiceProcess, environment

Stub = leads_pb2_grpc.LeadsServiceStub
STATUSES = (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED, pb.LEAD_STATUS_PROPOSAL_SENT)
# The org of the subscribers' principal, and so of the events written by hand.
ORG = "default"
# An event's identity: its lead, and its place in that lead's history.
Identity = tuple[str, int]


def identity(event: pb.Event) -> Identity:
    return event.lead_id, event.lead.version


async def test_long_transactions_beside_short_ones_never_reorder_skip_or_repeat(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    env = environment(postgres_url, tmp_path)
    replicas = [ServiceProcess("leads", env) for _ in range(2)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
    rng = random.Random(15)
    try:
        stubs = [Stub(channel_for(r.target)) for r in replicas]
        reference = stubs[0].Subscribe(pb.SubscribeRequest())
        origin = (await reference.read()).cursor
        written: list[Identity] = []
        rolled_back: list[Identity] = []

        async def short_writer(stub: Stub, name: str) -> None:
            for n in range(5):
                lead = await create_lead(stub, name=f"{name} {n}")
                written.append((lead.lead_id, lead.version))
                for status in STATUSES:
                    moved = await move(stub, lead.lead_id, status)
                    written.append((moved.lead_id, moved.version))

        # The service's own append, in transactions that take their xid first,
        # then hold it while the short writers commit around them.
        conninfo = Database(normalize_database_url(postgres_url), pool_size=1).libpq_conninfo()
        log = EventLog(LEADS.tables, channel="leads_events", postgres=True)

        async def long_writer(name: str) -> None:
            async with await psycopg.AsyncConnection.connect(conninfo) as conn:
                for version in range(1, 16):
                    lead_id = f"{name}-lead"
                    payload = pb.Event(type="lead.status_changed", actor=name, lead_id=lead_id,
                                       lead=pb.Lead(lead_id=lead_id, version=version))
                    statement, params = log.append_statement([EventRecord(
                        "lead.status_changed", name, utcnow(), payload.SerializeToString(),
                        lead_id=lead_id, org=ORG)])
                    # In the org's scope (row-level security), as a unit of work is.
                    await conn.execute("SELECT set_config('crm.org', %s, true)", (ORG,))
                    await conn.execute("SELECT pg_current_xact_id()")
                    await asyncio.sleep(rng.uniform(0.05, 0.6))
                    await conn.execute(sql.postgres_sql(statement, params), params)
                    await asyncio.sleep(rng.uniform(0.0, 0.2))
                    if version % 4 == 0:
                        await conn.rollback()
                        rolled_back.append((lead_id, version))
                    else:
                        await conn.commit()
                        written.append((lead_id, version))

        delivered: list[pb.Event] = []
        expected: list[int] = []  # how many events were written, once the writers are done
        caught_up = asyncio.Event()

        async def follow_reference() -> None:
            while True:
                event = await reference.read()
                assert event is not grpc.aio.EOF
                if event.type != "bookmark":
                    delivered.append(event)
                if expected and len(delivered) >= expected[0]:
                    caught_up.set()

        # Resumed while the writers write: each stream must be a slice of the one order.
        resumed: list[tuple[int, list[pb.Event]]] = []

        async def resumer() -> None:
            while True:
                at = rng.randrange(-1, len(delivered))
                cursor = origin if at < 0 else delivered[at].cursor
                stream = rng.choice(stubs).Subscribe(pb.SubscribeRequest(after_cursor=cursor))
                got: list[pb.Event] = []
                resumed.append((at, got))
                try:
                    for _ in range(rng.randrange(1, 30)):
                        event = await stream.read()
                        assert event is not grpc.aio.EOF
                        if event.type != "bookmark":
                            got.append(event)
                finally:
                    stream.cancel()

        following = asyncio.create_task(follow_reference())
        resumers = [asyncio.create_task(resumer()) for _ in range(3)]
        async with asyncio.timeout(120):
            await asyncio.gather(short_writer(stubs[0], "a1"), short_writer(stubs[0], "a2"),
                                 short_writer(stubs[1], "b1"), short_writer(stubs[1], "b2"),
                                 long_writer("long-1"), long_writer("long-2"))
            expected.append(len(written))
            if len(delivered) < len(written):
                await caught_up.wait()
        for task in resumers:
            task.cancel()
        ended = await asyncio.gather(*resumers, return_exceptions=True)
        # Every resumer was still reading when cancelled: none was refused or cut off.
        assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended

        # Nothing missing, nothing repeated, nothing rolled back.
        order = [identity(e) for e in delivered]
        assert len(order) == len(set(order)) == len(written)
        assert set(order) == set(written)
        assert not set(rolled_back) & set(order)
        assert len({e.cursor for e in delivered}) == len(delivered)
        # Every lead's events in the order they were written.
        last: dict[str, int] = {}
        for lead_id, version in order:
            assert version > last.get(lead_id, 0), (lead_id, version)
            last[lead_id] = version
        # Every stream resumed mid-way is exactly the order after its cursor.
        for at, got in resumed:
            assert got == delivered[at + 1:at + 1 + len(got)], at
        # And resumed once more, after the end, on either replica, to the end.
        for at in [-1, *rng.sample(range(len(delivered)), 8)]:
            cursor = origin if at < 0 else delivered[at].cursor
            stream = stubs[at % 2].Subscribe(pb.SubscribeRequest(after_cursor=cursor))
            got = []
            while len(got) < len(delivered) - at - 1:
                event = await stream.read()
                if event.type != "bookmark":
                    got.append(event)
            stream.cancel()
            assert got == delivered[at + 1:]
        following.cancel()
        report("event order", events=len(delivered), rolled_back=len(rolled_back),
               resumed_streams=len(resumed),
               resumed_events=sum(len(got) for _, got in resumed))
    finally:
        for replica in replicas:
            replica.kill()
