"""Writes from kept rows (services.shared.uow, "Kept rows"): on PostgreSQL a process
moves a lead (confirms an appointment) it has seen committed without reading it
first, and a kept copy that is no longer the row's changes nothing: the call runs
again reading, and answers what that finds. A second replica on the same database
changes rows behind the first one's back, as replicas do."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import psycopg
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared import metrics, sql
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.conftest import create_lead, move
from tests.support.rpc import refusal
from tests.support.servers import start_in_process

pytestmark = pytest.mark.postgres_only  # SQLite keeps no rows: one writer, reads are calls

Stub = leads_pb2_grpc.LeadsServiceStub


@pytest.fixture
async def replica(service_env: dict[str, str]) -> AsyncIterator[RunningService]:
    """A second leads process on the leads server's database."""
    running = await start_in_process(LEADS, service_env)
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
def other(replica: RunningService, channel_for: Callable[..., grpc.aio.Channel]) -> Stub:
    return Stub(channel_for(replica.target, "alice"))


def misreads(service: str) -> float:
    return metrics.KEPT_ROWS.labels(service, "misread")._value.get()  # type: ignore[no-any-return]


def written(service: str) -> float:
    return metrics.KEPT_ROWS.labels(service, "written")._value.get()  # type: ignore[no-any-return]


async def test_a_move_of_a_lead_the_process_has_seen_is_one_round_trip(
    leads: Stub, leads_server: RunningService, round_trips: list[int],
) -> None:
    first, second = await create_lead(leads), await create_lead(leads)
    await move(leads, first.lead_id, pb.LEAD_STATUS_CONTACTED)  # the statements' first use
    round_trips.clear()
    moved = await move(leads, second.lead_id, pb.LEAD_STATUS_CONTACTED)
    assert len(round_trips) == 1, round_trips
    assert (moved.status, moved.version) == (pb.LEAD_STATUS_CONTACTED, 2)
    leads_server.runtime.storage.rows._values.clear()  # as after a restart: nothing kept
    round_trips.clear()
    moved = await move(leads, second.lead_id, pb.LEAD_STATUS_QUALIFIED)
    assert len(round_trips) == 2, round_trips  # the read, then the writes
    assert (moved.status, moved.version) == (pb.LEAD_STATUS_QUALIFIED, 3)


async def test_a_lead_moved_by_another_replica_is_read_again_and_moved_from_where_it_is(
    leads: Stub, other: Stub,
) -> None:
    lead = await create_lead(leads)  # kept by this process at NEW, version 1
    await move(other, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    before = misreads("leads")
    moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED)
    assert misreads("leads") == before + 1
    assert (moved.status, moved.version) == (pb.LEAD_STATUS_QUALIFIED, 3)
    trail = await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=lead.lead_id))
    assert [(c.from_status, c.to_status, c.version) for c in trail.status_changes] == [
        (pb.LEAD_STATUS_NEW, pb.LEAD_STATUS_CONTACTED, 2),
        (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED, 3),
    ]
    again = await move(leads, lead.lead_id, pb.LEAD_STATUS_PROPOSAL_SENT)  # kept now: version 3
    assert (again.version, misreads("leads")) == (4, before + 1)


async def test_a_refusal_a_stale_copy_would_make_is_not_answered(
    leads: Stub, other: Stub,
) -> None:
    """The client names the version it saw (2); the kept copy is at 1, which would be
    VERSION_MISMATCH: the call reads the lead and moves it."""
    lead = await create_lead(leads)
    await move(other, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED, expected_version=2)
    assert (moved.status, moved.version) == (pb.LEAD_STATUS_QUALIFIED, 3)


async def test_a_refusal_is_answered_from_the_lead_as_it_is(leads: Stub, other: Stub) -> None:
    """The kept copy (NEW) would allow the move; the lead (QUALIFIED) does not."""
    lead = await create_lead(leads)
    await move(other, lead.lead_id, pb.LEAD_STATUS_QUALIFIED)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    refused = refusal(failed.value)
    assert refused.reason == "INVALID_STATUS_TRANSITION"
    assert "QUALIFIED" in str(failed.value.details()).upper()
    current = await other.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))
    assert (current.status, current.version) == (pb.LEAD_STATUS_QUALIFIED, 2)


async def test_a_lead_another_org_asks_for_is_not_found_though_it_is_kept(
    leads: Stub, leads_server: RunningService, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    lead = await create_lead(leads)
    acme = Stub(channel_for(leads_server.target, "carol@acme"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await move(acme, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    assert refusal(failed.value).reason == "LEAD_NOT_FOUND"
    current = await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))
    assert (current.status, current.version) == (pb.LEAD_STATUS_NEW, 1)


async def test_concurrent_moves_through_two_replicas_leave_one_unbroken_trail_a_lead(
    leads: Stub, other: Stub,
) -> None:
    """Both replicas keep every lead and race to move them: each success is one link
    of its lead's trail, whatever copy it started from."""
    targets = [pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED,
               pb.LEAD_STATUS_PROPOSAL_SENT, pb.LEAD_STATUS_NEGOTIATING]
    created = [await create_lead(leads) for _ in range(3)]
    for lead in created:  # both replicas keep it: one moved it, the other read it
        await move(other, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
        await leads.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))

    async def attempt(stub: Stub, lead_id: str, status: int) -> tuple[str, int]:
        try:
            return lead_id, (await move(stub, lead_id, status)).version
        except grpc.aio.AioRpcError as error:
            assert refusal(error).reason in {"STATUS_UNCHANGED", "INVALID_STATUS_TRANSITION"}
            return lead_id, 0

    before = misreads("leads")
    outcomes = await asyncio.gather(*(
        attempt(stub, lead.lead_id, status)
        for _ in range(3) for stub in (leads, other) for lead in created for status in targets))
    assert misreads("leads") > before  # copies went stale under the racing calls
    for lead in created:
        versions = sorted(v for lead_id, v in outcomes if lead_id == lead.lead_id and v)
        trail = (await leads.ListStatusChanges(
            pb.ListStatusChangesRequest(lead_id=lead.lead_id))).status_changes
        assert [c.version for c in trail] == [2, *versions]
        assert all(a.to_status == b.from_status for a, b in itertools.pairwise(trail))
        assert all(a.to_status < b.to_status for a, b in itertools.pairwise(trail))
        current = await other.GetLead(pb.GetLeadRequest(lead_id=lead.lead_id))
        assert (current.version, current.status) == (trail[-1].version, trail[-1].to_status)


async def test_a_replica_whose_copies_are_often_stale_reads_first_until_they_are_current(
    leads: Stub, other: Stub, leads_server: RunningService, round_trips: list[int],
) -> None:
    """Replicas that take turns with each lead would find every copy stale: a round
    trip lost a write. Each stops writing from its copies soon, and the process
    whose copies are current again (one replica left) starts again."""
    targets = [pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED,
               pb.LEAD_STATUS_PROPOSAL_SENT, pb.LEAD_STATUS_NEGOTIATING]
    taking_turns = [await create_lead(leads) for _ in range(21)]
    before = misreads("leads")
    for step, status in enumerate(targets):
        if step == len(targets) - 1:
            last_round = misreads("leads")
        for n, lead in enumerate(taking_turns):  # each lead's moves alternate replicas
            await move((other, leads)[(n + step) % 2], lead.lead_id, status)
    assert misreads("leads") - before < 21 * len(targets) / 2
    assert misreads("leads") == last_round  # by the last round, both read first
    assert not leads_server.runtime.storage.rows.worth_it

    one_replica = [await create_lead(leads) for _ in range(12)]
    for status in targets:
        for lead in one_replica:
            await move(leads, lead.lead_id, status)
    assert leads_server.runtime.storage.rows.worth_it
    moved_from_copies = written("leads")
    lead = await create_lead(leads)
    round_trips.clear()
    await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    assert (len(round_trips), written("leads")) == (1, moved_from_copies + 1)


async def test_a_connection_the_server_drops_forgets_every_kept_row(
    leads: Stub, leads_server: RunningService,
) -> None:
    """After a failover the database may have lost commits already acknowledged: a
    row's version may mean another row there, so nothing kept is trusted."""
    first, second = await create_lead(leads), await create_lead(leads)
    rows = leads_server.runtime.storage.rows
    assert rows.get(("default", "lead", second.lead_id)) is not None
    db = leads_server.runtime.storage.db
    async with await psycopg.AsyncConnection.connect(db.libpq_conninfo(),
                                                     autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    moved = await move(leads, first.lead_id, pb.LEAD_STATUS_CONTACTED)  # meets a dropped one
    assert moved.version == 2
    assert rows.get(("default", "lead", second.lead_id)) is None


async def test_a_call_read_again_after_a_stale_copy_logs_no_failure(
    leads: Stub, other: Stub, caplog: pytest.LogCaptureFixture,
) -> None:
    """Running again at once is the plan going another way: a busy deployment of
    replicas makes many, so they are DEBUG, not INFO's "transient failure"."""
    lead = await create_lead(leads)
    await move(other, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    with caplog.at_level(logging.DEBUG, logger="services.shared.db"):
        await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED)
    assert [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "services.shared.db"] == [(logging.DEBUG, "running again another way")]


async def batch(stub: Stub, leads: list[pb.Lead], status: pb.LeadStatus.ValueType
                ) -> pb.BatchUpdateLeadStatusResponse:
    return await stub.BatchUpdateLeadStatus(  # type: ignore[no-any-return]
        pb.BatchUpdateLeadStatusRequest(lead_ids=[lead.lead_id for lead in leads],
                                        status=status), metadata=idempotency(new_key()))


async def test_a_batch_of_leads_the_process_has_seen_is_one_round_trip(
    leads: Stub, leads_server: RunningService, round_trips: list[int],
) -> None:
    created = [await create_lead(leads) for _ in range(3)]
    await batch(leads, created[:1], pb.LEAD_STATUS_CONTACTED)  # the statements' first use
    round_trips.clear()
    moved = await batch(leads, created, pb.LEAD_STATUS_QUALIFIED)
    assert len(round_trips) == 1, round_trips
    assert [(x.status, x.version) for x in moved.updated_leads] == [
        (pb.LEAD_STATUS_QUALIFIED, 3), (pb.LEAD_STATUS_QUALIFIED, 2),
        (pb.LEAD_STATUS_QUALIFIED, 2)]
    leads_server.runtime.storage.rows._values.pop(  # one lead no longer kept: all are read
        ("default", "lead", created[1].lead_id))
    round_trips.clear()
    await batch(leads, created, pb.LEAD_STATUS_PROPOSAL_SENT)
    assert len(round_trips) == 2, round_trips


async def test_a_batch_with_a_lead_another_replica_moved_reads_them_all_again(
    leads: Stub, other: Stub,
) -> None:
    first, second = await create_lead(leads), await create_lead(leads)
    await move(other, first.lead_id, pb.LEAD_STATUS_CONTACTED)
    before = misreads("leads")
    moved = await batch(leads, [first, second], pb.LEAD_STATUS_QUALIFIED)
    assert misreads("leads") == before + 1
    assert [(x.lead_id, x.version) for x in moved.updated_leads] == [
        (first.lead_id, 3), (second.lead_id, 2)]
    trail = await leads.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=first.lead_id))
    assert [(c.from_status, c.to_status) for c in trail.status_changes] == [
        (pb.LEAD_STATUS_NEW, pb.LEAD_STATUS_CONTACTED),
        (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED)]


async def test_a_batch_from_copies_checks_and_locks_its_leads_in_id_order(
    leads: Stub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each copy is checked and locked with the commit, in lead id order, as a batch
    that reads locks them: two batches never wait on each other in a circle (a
    deadlock, which PostgreSQL breaks only after a second)."""
    created = sorted([await create_lead(leads) for _ in range(4)], key=lambda x: x.lead_id)
    trips: list[list[str]] = []
    at_once = sql._at_once

    async def recorded(raw: Any, statements: Any, *rest: Any) -> Any:
        trips.append([str(params["lead_id"]) for text, params in statements
                      if "guarded" in text and "FOR UPDATE" in text])
        return await at_once(raw, statements, *rest)

    monkeypatch.setattr(sql, "_at_once", recorded)
    await batch(leads, created[::-1], pb.LEAD_STATUS_CONTACTED)
    assert trips == [[lead.lead_id for lead in created]]  # one round trip, from copies


async def test_a_batch_answers_no_lead_unchanged_from_a_stale_copy(
    leads: Stub, other: Stub,
) -> None:
    """A lead already where the batch moves it is written nothing: its copy must be
    checked all the same, or a lead another replica moved on would be reported
    unchanged, and the answer stored under the key."""
    first, second = await create_lead(leads), await create_lead(leads)
    await move(leads, first.lead_id, pb.LEAD_STATUS_CONTACTED)  # kept at CONTACTED
    await move(other, first.lead_id, pb.LEAD_STATUS_QUALIFIED)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await batch(leads, [first, second], pb.LEAD_STATUS_CONTACTED)
    assert refusal(failed.value).reason == "INVALID_STATUS_TRANSITION"
    assert first.lead_id in str(failed.value.details())
    unmoved = await other.GetLead(pb.GetLeadRequest(lead_id=second.lead_id))
    assert (unmoved.status, unmoved.version) == (pb.LEAD_STATUS_NEW, 1)


async def test_a_connection_lost_under_a_write_from_a_copy_is_retried_as_a_failure(
    leads: Stub, leads_server: RunningService, caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a refusal or a guard shows a copy stale; a dropped connection is a
    transient failure like any other: logged, retried after a pause, reading."""
    lead = await create_lead(leads)
    db = leads_server.runtime.storage.db
    async with await psycopg.AsyncConnection.connect(db.libpq_conninfo(),
                                                     autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with caplog.at_level(logging.DEBUG, logger="services.shared.db"):
        moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED)
    assert moved.version == 2
    assert [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "services.shared.db"] == [
        (logging.INFO, "retrying after a transient failure")]


async def test_batches_through_two_replicas_racing_over_the_same_leads_move_each_once(
    leads: Stub, other: Stub,
) -> None:
    created = [await create_lead(leads) for _ in range(6)]
    targets = [pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED, pb.LEAD_STATUS_PROPOSAL_SENT]
    for status in targets:
        ours, theirs = await asyncio.gather(batch(leads, created, status),
                                            batch(other, created[::-1], status))
        moved = [x.lead_id for x in (*ours.updated_leads, *theirs.updated_leads)]
        assert sorted(moved) == sorted(lead.lead_id for lead in created)
    for lead in created:
        trail = await other.ListStatusChanges(pb.ListStatusChangesRequest(lead_id=lead.lead_id))
        assert [(c.to_status, c.version) for c in trail.status_changes] == [
            (status, version) for version, status in enumerate(targets, start=2)]
