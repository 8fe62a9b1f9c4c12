"""Group commit on PostgreSQL (services.shared.group_commit): concurrent write
calls of one process share a transaction and a COMMIT, each still isolated,
with its own key, outcome and events.

A group is made to form on purpose: the committer is given one lane, a unit of
work holds it, the calls queue behind it, and when it commits they go out
together. The group-size metric says what each transaction carried.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.leads import messages
from services.leads.adapters import leads as lead_rows
from services.leads.adapters import status_changes
from services.leads.bootstrap import SPEC as LEADS
from services.leads.domain import Lead, LeadStatus
from services.shared import errors, group_commit, sql
from services.shared.auth import Caller
from services.shared.clients import idempotency, new_key
from services.shared.db import utcnow
from services.shared.idempotency import Key
from services.shared.server import RunningService
from services.shared.uow import ConcurrentChange, UnitOfWork
from tests.integration.conftest import create_lead, move
from tests.integration.test_idempotency import count_leads
from tests.support.rpc import refusal
from tests.support.servers import environment, start_in_process

Stub = leads_pb2_grpc.LeadsServiceStub
ALICE = Caller("alice")


@pytest.fixture
async def server(postgres_url: str, tmp_path: Path) -> AsyncIterator[RunningService]:
    running = await start_in_process(LEADS, environment(postgres_url, tmp_path,
                                                        CRM_DB_POOL_SIZE="8",
                                                        CRM_GROUP_COMMIT="32"))
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
def stub(server: RunningService, channel_for: Callable[..., grpc.aio.Channel]) -> Stub:
    return leads_pb2_grpc.LeadsServiceStub(channel_for(server.target, "alice"))


def committer(server: RunningService) -> group_commit.GroupCommit:
    found = group_commit.committer(server.runtime.storage.db)
    assert found is not None
    return found


def transactions() -> tuple[float, float]:
    """(write transactions, calls they carried) of the leads service so far."""
    count = REGISTRY.get_sample_value("crm_group_commit_calls_count", {"service": "leads"})
    total = REGISTRY.get_sample_value("crm_group_commit_calls_sum", {"service": "leads"})
    return count or 0.0, total or 0.0


def groups_of(size: int) -> float:
    """How many write transactions so far carried at most `size` calls (the bucket)."""
    found = REGISTRY.get_sample_value("crm_group_commit_calls_bucket",
                                      {"service": "leads", "le": str(float(size))})
    return found or 0.0


def flushes(how: str) -> float:
    """How many flushes of members held back went out `how` so far (leads)."""
    found = REGISTRY.get_sample_value("crm_group_commit_flushes_total",
                                      {"service": "leads", "how": how})
    return found or 0.0


async def until(condition: Callable[[], bool]) -> None:
    """Wait for what other tasks are doing to reach `condition` (no time is asserted)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition was never reached")


class Hold:
    """Holds the committer's only lane (`lanes` 1; None: one of the lanes it has) with
    an open write transaction until released, so that calls arriving meanwhile queue
    and then go out as one group."""

    def __init__(self, server: RunningService, lanes: int | None = 1) -> None:
        self.server = server
        self.committer = committer(server)
        self.lanes = lanes  # None: as the committer has them
        self.release = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Hold:
        if self.lanes is not None:
            self.committer.lanes = self.lanes
        started = asyncio.Event()

        async def hold() -> None:
            uow = self.server.runtime.units()
            async with uow.for_caller(ALICE):
                await uow.connection()
                started.set()
                await self.release.wait()
                await uow.commit()

        self.task = asyncio.create_task(hold())
        await started.wait()
        return self

    def queued(self) -> int:
        return len(self.committer._queue)

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.task is not None
        await self.task
        self.committer.lanes = group_commit.LANES


async def in_one_group(server: RunningService, calls: list[Awaitable[Any]]) -> list[Any]:
    """Run the calls so that they queue together and commit as one group; their
    results (or errors)."""
    async with Hold(server) as hold:
        tasks = [asyncio.ensure_future(call) for call in calls]
        await until(lambda: hold.queued() == len(calls))
    return await asyncio.gather(*tasks, return_exceptions=True)


async def trail(server: RunningService, lead_id: str) -> int:
    async with server.runtime.storage.db.transaction(write=False) as conn:
        sql.scope(conn, "default", every_statement=True)
        rows = await sql.rows(conn, select(func.count()).select_from(status_changes)
                              .where(status_changes.c.lead_id == lead_id))
    return int(rows[0][0])


async def events_of(server: RunningService, lead_id: str) -> list[tuple[int, int, str]]:
    """(xid, position, type) of the lead's events, in the log's order."""
    events = server.runtime.storage.log.events
    async with server.runtime.storage.db.transaction(write=False) as conn:
        sql.scope(conn, "default", every_statement=True)
        rows = await sql.rows(conn, select(events.c.xid, events.c.position, events.c.type)
                              .where(events.c.lead_id == lead_id)
                              .order_by(events.c.xid, events.c.position))
    return [(r.xid, r.position, r.type) for r in rows]


async def test_concurrent_calls_commit_in_fewer_transactions_than_calls(
    server: RunningService, stub: Stub,
) -> None:
    # The database is slow for a moment (another transaction holds a lock the
    # inserts wait for): the lanes' calls wait on it and the calls behind them
    # queue. Left to the scheduler alone, 40 calls on loopback may each find a lane
    # free when they ask (the calls are faster than they arrive), and the test
    # would say nothing.
    before = transactions()
    lanes = committer(server).lanes
    async with await psycopg.AsyncConnection.connect(
            server.runtime.storage.db.libpq_conninfo()) as slow:
        await slow.execute("LOCK TABLE leads IN SHARE MODE")
        calls = [asyncio.ensure_future(create_lead(stub, name=f"Lead {i}")) for i in range(40)]
        await until(lambda: len(committer(server)._queue) == 40 - lanes)
    created = await asyncio.gather(*calls)  # the lock went with `slow`'s rollback
    count, total = (now - then for now, then in zip(transactions(), before, strict=True))
    assert len({lead.lead_id for lead in created}) == 40
    assert total == 40  # every call was carried by a transaction…
    # …the lanes' calls alone, those queued behind them in groups of at most 32
    assert count == lanes + math.ceil((40 - lanes) / committer(server).most)


async def test_a_lone_call_commits_alone(server: RunningService, stub: Stub) -> None:
    before, alone = transactions(), groups_of(1)
    await create_lead(stub)
    count, total = (now - then for now, then in zip(transactions(), before, strict=True))
    assert (count, total) == (1, 1)
    assert groups_of(1) - alone == 1


async def test_one_members_refusal_leaves_the_others_of_its_group_alone(
    server: RunningService, stub: Stub,
) -> None:
    leads = [await create_lead(stub, name=f"Lead {i}") for i in range(6)]
    keys = [new_key() for _ in leads]
    # Every other call names a version its lead does not have: VERSION_MISMATCH.
    versions = [1 if i % 2 == 0 else 7 for i in range(len(leads))]
    before = groups_of(8) - groups_of(4)
    answers = await in_one_group(server, [
        move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key, expected_version=version)
        for lead, key, version in zip(leads, keys, versions, strict=True)])
    # The six went out together (the refusals are stored afterwards, each alone).
    assert groups_of(8) - groups_of(4) == before + 1
    for i, (lead, key, answer) in enumerate(zip(leads, keys, answers, strict=True)):
        if i % 2 == 0:
            assert isinstance(answer, pb.Lead), answer
            assert (answer.status, answer.version) == (pb.LEAD_STATUS_CONTACTED, 2)
            assert await trail(server, lead.lead_id) == 1
            assert [t for *_, t in await events_of(server, lead.lead_id)] == [
                "lead.created", "lead.status_changed"]
            assert await move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key,
                              expected_version=1) == answer  # replayed: the same answer
        else:
            assert isinstance(answer, grpc.aio.AioRpcError), answer
            assert refusal(answer).reason == "VERSION_MISMATCH"
            assert await trail(server, lead.lead_id) == 0
            assert len(await events_of(server, lead.lead_id)) == 1  # its creation only
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key,
                           expected_version=7)
            assert refusal(again.value).reason == "VERSION_MISMATCH"
    moved = {(await events_of(server, lead.lead_id))[-1][0]
             for i, lead in enumerate(leads) if i % 2 == 0}
    assert len(moved) == 1  # one transaction wrote every moved lead's event


async def test_members_moving_one_lead_are_serialized_as_alone(
    server: RunningService, stub: Stub,
) -> None:
    lead = await create_lead(stub)
    statuses = [pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED]
    answers = await in_one_group(server, [
        move(stub, lead.lead_id, status, expected_version=version)
        for version, status in enumerate(statuses, start=1)])
    # The second read the first's change (uncommitted, in the same transaction) as
    # it would have after waiting for its lock alone: both apply, in turn.
    assert [(a.status, a.version) for a in answers] == [
        (pb.LEAD_STATUS_CONTACTED, 2), (pb.LEAD_STATUS_QUALIFIED, 3)]
    assert await trail(server, lead.lead_id) == 2


async def test_one_key_twice_in_a_group_runs_once(server: RunningService, stub: Stub) -> None:
    key = new_key()
    request = pb.CreateLeadRequest(name="Grace Hopper", phone="+14155550100")
    answers = await in_one_group(server, [
        stub.CreateLead(request, metadata=idempotency(key)) for _ in range(2)])
    created = [a for a in answers if isinstance(a, pb.Lead)]
    refused = [a for a in answers if not isinstance(a, pb.Lead)]
    assert created, answers
    for error in refused:  # the second found the key held by an uncommitted call
        assert isinstance(error, grpc.aio.AioRpcError)
        assert refusal(error).reason == "IDEMPOTENCY_KEY_IN_USE"
    assert len({lead.lead_id for lead in created}) == 1
    again = await stub.CreateLead(request, metadata=idempotency(key))
    assert again.lead_id == created[0].lead_id


async def test_a_group_whose_commit_fails_is_run_again_whole(
    server: RunningService, stub: Stub, postgres_url: str,
) -> None:
    leads = [await create_lead(stub, name=f"Lead {i}") for i in range(5)]
    killed: list[int] = []

    async def kill_the_group(uow: UnitOfWork) -> None:
        """A member that ends its group's backend, once, after the others wrote."""
        async with uow.for_caller(ALICE):
            if not killed:
                (pid,), = await uow.execute(select(func.pg_backend_pid()))
                admin = await psycopg.AsyncConnection.connect(
                    server.runtime.storage.db.libpq_conninfo(), autocommit=True)
                async with admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
            await uow.commit()

    async with Hold(server) as hold:
        moves = [asyncio.ensure_future(move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED))
                 for lead in leads]
        await until(lambda: hold.queued() == len(leads))
        killer = asyncio.ensure_future(
            server.runtime.units.attempt(kill_the_group, time_remaining=10))
        await until(lambda: hold.queued() == len(leads) + 1)
    answers = await asyncio.gather(*moves)
    await killer
    assert killed
    # Every member was run again (the first run committed nothing): each lead moved once.
    assert [(a.status, a.version) for a in answers] == [(pb.LEAD_STATUS_CONTACTED, 2)] * 5
    for lead in leads:
        assert await trail(server, lead.lead_id) == 1
        assert len(await events_of(server, lead.lead_id)) == 2


async def test_a_member_whose_write_fails_in_the_database_is_rolled_back_alone(
    server: RunningService, stub: Stub,
) -> None:
    first, stale_one, last = [await create_lead(stub, name=f"Lead {i}") for i in range(3)]

    async def get(uow: UnitOfWork) -> Lead:
        async with uow.for_caller(ALICE, read_only=True):
            return await uow.leads.get(stale_one.lead_id)  # type: ignore[attr-defined, no-any-return]

    stale = await server.runtime.units.attempt(get, time_remaining=10)
    await move(stub, stale_one.lead_id, pb.LEAD_STATUS_CONTACTED)  # version 2 now
    change = stale.move_to(LeadStatus.QUALIFIED, actor="alice", now=utcnow(),
                           idempotency_key="stale-key")

    async def save_stale() -> None:
        """A guarded write naming version 1: it fails in the database, mid-group."""
        uow = server.runtime.units.answering(messages.lead)()
        async with uow.for_caller(ALICE):
            await uow.leads.save(stale, change)  # type: ignore[attr-defined]
            await uow.commit()

    answers = await in_one_group(server, [
        move(stub, first.lead_id, pb.LEAD_STATUS_CONTACTED), save_stale(),
        move(stub, last.lead_id, pb.LEAD_STATUS_CONTACTED)])
    assert isinstance(answers[1], ConcurrentChange), answers[1]
    assert [(a.status, a.version) for a in (answers[0], answers[2])] == [
        (pb.LEAD_STATUS_CONTACTED, 2)] * 2
    assert await trail(server, first.lead_id) == await trail(server, last.lead_id) == 1
    assert await trail(server, stale_one.lead_id) == 1  # the move before, not the stale one
    assert (await stub.GetLead(pb.GetLeadRequest(lead_id=stale_one.lead_id))).version == 2


async def test_a_unit_of_work_sends_nothing_once_its_seat_has_committed(
    server: RunningService,
) -> None:
    # Its connection may be the next transaction's by then (a group's is given back
    # as soon as the group commits), in whatever org that one runs.
    uow = server.runtime.units()
    async with uow.for_caller(ALICE):
        await uow.connection()
        await uow.commit()
        with pytest.raises(RuntimeError, match="committed"):
            await uow.connection()


def releases(statements: list[str]) -> int:
    """How many members' savepoints a round trip released."""
    return sum(text.startswith("RELEASE SAVEPOINT s") for text in statements)


async def test_members_that_read_nothing_go_out_with_the_commit_in_one_round_trip(
    server: RunningService, stub: Stub, sent_strings: list[list[str]],
) -> None:
    together = flushes("together")
    answers = await in_one_group(server, [create_lead(stub, name=f"Lead {i}") for i in range(8)])
    assert all(isinstance(answer, pb.Lead) for answer in answers), answers
    assert flushes("together") == together + 1
    carrying = [trip for trip in sent_strings if releases(trip)]
    assert len(carrying) == 1, carrying  # every member's whole unit of work…
    assert releases(carrying[0]) == 8
    assert carrying[0][-1] == "COMMIT"  # …and the group's COMMIT, in one string
    xids = {(await events_of(server, answer.lead_id))[0][0] for answer in answers}
    assert len(xids) == 1


async def test_a_later_members_read_sees_what_the_members_before_it_held_back(
    server: RunningService, stub: Stub, sent_strings: list[list[str]],
) -> None:
    lead = await create_lead(stub)
    seen: list[int] = []

    async def read_it(uow: UnitOfWork) -> None:
        async with uow.for_caller(ALICE):
            (row,) = await uow.execute(select(lead_rows.c.version)
                                       .where(lead_rows.c.lead_id == lead.lead_id))
            seen.append(row.version)
            await uow.commit()

    before = groups_of(2) - groups_of(1)
    async with Hold(server) as hold:
        # The move writes from the lead's kept copy: it reads nothing, and is held back.
        moved = asyncio.ensure_future(move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED))
        await until(lambda: hold.queued() == 1)
        reader = asyncio.ensure_future(server.runtime.units.attempt(read_it, time_remaining=10))
        await until(lambda: hold.queued() == 2)
    assert (await moved).version == 2
    await reader
    assert groups_of(2) - groups_of(1) == before + 1  # the two went out together
    # The move went out just ahead of the read, which saw it as it would have alone.
    assert seen == [2]
    flushes = [trip for trip in sent_strings if "SAVEPOINT f" in trip]
    assert len(flushes) == 1
    assert releases(flushes[0]) == 1
    assert "COMMIT" not in flushes[0]


async def test_a_member_held_back_whose_key_was_not_free_is_undone_alone(
    server: RunningService, stub: Stub, sent_strings: list[list[str]],
) -> None:
    key = new_key()
    earlier = await create_lead(stub, name="Earlier", key=key)
    # As another replica would, or this one after a restart: the outcome is not in
    # memory, so the retry's claim rides with its writes, expecting the key new.
    server.runtime.storage.keys._remembered.clear()
    one_by_one = flushes("one_by_one")
    before, replayed, after = await in_one_group(server, [
        create_lead(stub, name="Before"), create_lead(stub, name="Earlier", key=key),
        create_lead(stub, name="After")])
    assert replayed == earlier  # ran again, claiming at once: the stored answer
    assert isinstance(before, pb.Lead) and isinstance(after, pb.Lead)
    assert (before.name, after.name) == ("Before", "After")
    assert await count_leads(server) == 3
    # The group's string stopped at the retry's claim: it was undone whole and went
    # out again one member at a time; the two others still committed together.
    assert any("ROLLBACK TO SAVEPOINT f" in trip for trip in sent_strings)
    assert flushes("one_by_one") == one_by_one + 1
    assert (await events_of(server, before.lead_id))[0][0] == (
        await events_of(server, after.lead_id))[0][0]


async def test_a_statement_sent_around_the_batches_while_members_are_held_back_is_refused(
    server: RunningService, stub: Stub,
) -> None:
    # It would go out ahead of what the members before it hold back: out of turn.
    lead = await create_lead(stub)

    async def around(uow: UnitOfWork) -> None:
        async with uow.for_caller(ALICE):
            conn = await uow.connection()
            await conn.execute(select(lead_rows.c.version)
                               .where(lead_rows.c.lead_id == lead.lead_id))

    async with Hold(server) as hold:
        moved = asyncio.ensure_future(move(stub, lead.lead_id, pb.LEAD_STATUS_CONTACTED))
        await until(lambda: hold.queued() == 1)
        stray = asyncio.ensure_future(server.runtime.units.attempt(around, time_remaining=10))
        await until(lambda: hold.queued() == 2)
    assert (await moved).version == 2  # the member held back is not touched
    with pytest.raises(Exception, match="held back"):
        await stray


async def test_one_lane_while_the_last_group_was_all_held_back_two_after_one_that_read(
    server: RunningService, stub: Stub,
) -> None:
    # A group of members held back costs one round trip however large, so the
    # calls behind a write transaction are best left to gather for the next group;
    # members that read take round trips of their own, and a second lane overlaps them.
    lead = await create_lead(stub)
    assert committer(server).lanes == 2

    async def second_call_queues() -> bool:
        """Whether a call queues while one write transaction is in flight (else it
        takes a lane of its own and commits at once)."""
        async with Hold(server, lanes=None) as hold:
            call = asyncio.ensure_future(create_lead(stub))
            await until(lambda: hold.queued() == 1 or call.done())
            queued = not call.done()
        await call
        return queued

    async def read_it(uow: UnitOfWork) -> None:
        async with uow.for_caller(ALICE):
            await uow.execute(select(lead_rows.c.version)
                              .where(lead_rows.c.lead_id == lead.lead_id))
            await uow.commit()

    await in_one_group(server, [create_lead(stub), create_lead(stub)])  # both held back
    assert await second_call_queues()
    await in_one_group(server, [server.runtime.units.attempt(read_it, time_remaining=10)])
    assert not await second_call_queues()


async def test_what_a_last_member_left_unsent_does_not_ride_with_the_commit(
    server: RunningService, stub: Stub,
) -> None:
    # The last member claims a key ahead (its claim to ride with its next statement)
    # and then refuses before sending anything: its claim is not the group's. Here it
    # would fail (the key is done, and the process has forgotten it), and with it the
    # COMMIT, and the member before it would run again.
    lead = await create_lead(stub)
    key = new_key()
    await create_lead(stub, key=key)
    server.runtime.storage.keys._remembered.clear()
    runs: list[int] = []

    async def read_it(uow: UnitOfWork) -> None:
        async with uow.for_caller(ALICE):
            runs.append(1)
            await uow.execute(select(lead_rows.c.version)
                              .where(lead_rows.c.lead_id == lead.lead_id))
            await uow.commit()

    async def refuse(uow: UnitOfWork) -> None:
        async with uow.for_caller(ALICE):
            await uow.keys.claim(Key("/crm.leads.v1.LeadsService/CreateLead", key, None))
            raise errors.InvalidArgument("refused before sending anything")

    async with Hold(server) as hold:
        reader = asyncio.ensure_future(server.runtime.units.attempt(read_it, time_remaining=10))
        await until(lambda: hold.queued() == 1)
        refused = asyncio.ensure_future(server.runtime.units.attempt(refuse, time_remaining=10))
        await until(lambda: hold.queued() == 2)
    await reader
    with pytest.raises(errors.InvalidArgument):
        await refused
    assert len(runs) == 1  # its group committed the first time
