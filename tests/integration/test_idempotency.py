"""Idempotency keys, exactly as docs/design.md states them, through the leads service."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from sqlalchemy import func, select

from services.leads.adapters import SqlLeadsUnitOfWork
from services.leads.adapters import leads as leads_table
from services.leads.bootstrap import SPEC as LEADS
from services.shared import sql
from services.shared.clients import idempotency, new_key
from services.shared.errors import Unavailable
from services.shared.server import RunningService, purge_once
from tests.integration.conftest import create_lead, move
from tests.support.rpc import refusal
from tests.support.servers import environment, start_in_process

Stub = leads_pb2_grpc.LeadsServiceStub
REQUEST = pb.CreateLeadRequest(name="Grace Hopper", phone="+14155550100")


async def count_leads(server: RunningService, org: str = "default") -> int:
    """The org's leads, read as the services read (on PostgreSQL in its scope)."""
    async with server.runtime.storage.db.transaction(write=False) as conn:
        if server.runtime.storage.postgres:
            sql.scope(conn, org, every_statement=True)
        rows = await sql.rows(conn, select(func.count()).select_from(leads_table)
                              .where(leads_table.c.org == org))
        return int(rows[0][0])


async def call_with_metadata(stub: Stub, key: str, request: pb.CreateLeadRequest = REQUEST
                             ) -> tuple[pb.Lead, dict[str, str]]:
    call = stub.CreateLead(request, metadata=idempotency(key))
    lead = await call
    return lead, dict(await call.initial_metadata())


async def test_a_retry_with_the_same_key_gets_the_stored_response_marked_replayed(
    leads: Stub, leads_server: RunningService
) -> None:
    key = new_key()
    first, first_headers = await call_with_metadata(leads, key)
    again, again_headers = await call_with_metadata(leads, key)
    assert again == first
    assert "idempotent-replayed" not in first_headers
    assert again_headers["idempotent-replayed"] == "true"
    assert await count_leads(leads_server) == 1


async def test_the_same_key_with_a_different_request_is_refused_as_reused(leads: Stub) -> None:
    key = new_key()
    await create_lead(leads, key=key)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await create_lead(leads, name="Someone Else", key=key)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "IDEMPOTENCY_KEY_REUSED")
    assert "idempotency-key" in refused.fields


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [((), "IDEMPOTENCY_KEY_MISSING"),
     ((("idempotency-key", "x" * 256),), "IDEMPOTENCY_KEY_INVALID"),
     ((("idempotency-key", "has space"),), "IDEMPOTENCY_KEY_INVALID")],
)
async def test_a_mutating_call_without_a_usable_key_is_refused_and_changes_nothing(
    leads: Stub, leads_server: RunningService, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.CreateLead(REQUEST, metadata=metadata)
    assert (failed.value.code(), refusal(failed.value).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert await count_leads(leads_server) == 0


async def test_reads_need_no_key(leads: Stub) -> None:
    assert (await leads.ListLeads(pb.ListLeadsRequest())).leads == []


async def test_keys_are_scoped_per_principal_so_one_never_sees_anothers_response(
    leads_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    alice = Stub(channel_for(leads_server.target, "alice"))
    bob = Stub(channel_for(leads_server.target, "bob"))
    key = new_key()
    for_alice, _ = await call_with_metadata(alice, key)
    for_bob, bob_headers = await call_with_metadata(bob, key)
    assert for_bob.lead_id != for_alice.lead_id
    assert for_bob.created_by == "bob"
    assert "idempotent-replayed" not in bob_headers
    assert await count_leads(leads_server) == 2


async def test_keys_are_scoped_per_rpc(leads: Stub) -> None:
    key = new_key()
    lead = await create_lead(leads, key=key)
    moved = await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key)
    assert moved.status == pb.LEAD_STATUS_CONTACTED


async def test_a_final_refusal_is_stored_and_replayed_even_after_the_state_changed(
    leads: Stub,
) -> None:
    lead = await create_lead(leads)
    key = new_key()
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await move(leads, lead.lead_id, pb.LEAD_STATUS_CONTACTED, key=key, expected_version=2)
    await move(leads, lead.lead_id, pb.LEAD_STATUS_QUALIFIED)  # the lead is at version 2 now
    call = leads.UpdateLeadStatus(
        pb.UpdateLeadStatusRequest(lead_id=lead.lead_id, status=pb.LEAD_STATUS_CONTACTED,
                                   expected_version=2),
        metadata=idempotency(key),
    )
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await call
    assert refusal(again.value).status == refusal(first.value).status
    assert refusal(again.value).reason == "VERSION_MISMATCH"
    assert dict(await call.initial_metadata())["idempotent-replayed"] == "true"


async def test_a_not_found_outcome_is_replayed(leads: Stub) -> None:
    key = new_key()
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await move(leads, "missing", pb.LEAD_STATUS_WON, key=key)
        assert refusal(failed.value).reason == "LEAD_NOT_FOUND"


class Blip(Unavailable):
    """A failure a channel may retry at once, as when a server cannot be reached."""

    retry_now = True


class FlakyUnitOfWork(SqlLeadsUnitOfWork):
    """The real unit of work, failing its next commits on command."""

    failures: ClassVar[list[BaseException]] = []

    async def commit(self, outcome: object = None) -> None:
        if FlakyUnitOfWork.failures:
            raise FlakyUnitOfWork.failures.pop(0)
        await super().commit(outcome)


@pytest.fixture
async def flaky_server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningService]:
    FlakyUnitOfWork.failures.clear()
    spec = dataclasses.replace(LEADS, uow_class=FlakyUnitOfWork)
    running = await start_in_process(spec, environment(database_url, tmp_path))
    yield running
    await running.stop(grace=1, drain=0)


@pytest.mark.parametrize(
    ("failure", "code"),
    [(Unavailable("a dependency is down"), grpc.StatusCode.UNAVAILABLE),
     (RuntimeError("a bug"), grpc.StatusCode.INTERNAL)],
)
async def test_a_transient_outcome_is_not_stored_so_the_retry_runs_again(
    flaky_server: RunningService, channel_for: Callable[..., grpc.aio.Channel],
    failure: BaseException, code: grpc.StatusCode,
) -> None:
    stub = Stub(channel_for(flaky_server.target, "alice", retries=False))
    key = new_key()
    FlakyUnitOfWork.failures.append(failure)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.CreateLead(REQUEST, metadata=idempotency(key))
    assert failed.value.code() is code
    assert await count_leads(flaky_server) == 0
    lead, headers = await call_with_metadata(stub, key)
    assert "idempotent-replayed" not in headers
    assert await count_leads(flaky_server) == 1
    replayed, headers = await call_with_metadata(stub, key)
    assert replayed == lead and headers["idempotent-replayed"] == "true"


async def test_the_client_retry_policy_resends_the_key_so_a_transient_failure_has_one_effect(
    flaky_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    stub = Stub(channel_for(flaky_server.target, "alice"))
    FlakyUnitOfWork.failures.extend([Blip("down"), Blip("still down")])
    lead, headers = await call_with_metadata(stub, new_key())
    assert lead.status == pb.LEAD_STATUS_NEW and "idempotent-replayed" not in headers
    assert not FlakyUnitOfWork.failures
    assert await count_leads(flaky_server) == 1


async def test_a_dropped_connection_at_commit_is_retried_inside_the_service(
    flaky_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    stub = Stub(channel_for(flaky_server.target, "alice"))
    FlakyUnitOfWork.failures.append(ConnectionResetError("connection reset by peer"))
    lead = await create_lead(stub)
    assert lead.status == pb.LEAD_STATUS_NEW
    assert await count_leads(flaky_server) == 1


async def test_many_clients_racing_one_key_make_exactly_one_effect(
    leads: Stub, leads_server: RunningService
) -> None:
    key = new_key()

    async def attempt() -> Any:
        try:
            return await leads.CreateLead(REQUEST, metadata=idempotency(key))
        except grpc.aio.AioRpcError as error:
            return refusal(error).reason

    outcomes = await asyncio.gather(*(attempt() for _ in range(25)))
    created = [o for o in outcomes if isinstance(o, pb.Lead)]
    assert created, outcomes
    assert {lead.lead_id for lead in created} == {created[0].lead_id}
    assert {o for o in outcomes if isinstance(o, str)} <= {"IDEMPOTENCY_KEY_IN_USE"}
    assert await count_leads(leads_server) == 1


async def test_a_key_past_its_ttl_runs_again_and_expired_keys_are_purged(
    database_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    env = environment(database_url, tmp_path, CRM_IDEMPOTENCY_TTL_SECONDS="1")
    running = await start_in_process(LEADS, env)
    try:
        stub = Stub(channel_for(running.target, "alice"))
        key = new_key()
        first, _ = await call_with_metadata(stub, key)
        # Another org's key too: housekeeping purges every org's (the system scope).
        await call_with_metadata(Stub(channel_for(running.target, "carol@acme")), key)
        await asyncio.sleep(1.2)
        assert await purge_once(running.runtime) == (2, 0)
        second, headers = await call_with_metadata(stub, key)
        assert second.lead_id != first.lead_id and "idempotent-replayed" not in headers
        assert await count_leads(running) == 2  # alice's two (count_leads: her org's)
    finally:
        await running.stop(grace=1, drain=0)


async def test_a_key_held_by_a_stranded_call_is_in_use_at_once_and_never_stored(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    """A call cut off from the database mid-transaction keeps its key's lock until
    PostgreSQL notices; a retry elsewhere is IDEMPOTENCY_KEY_IN_USE at once (not
    UNAVAILABLE at its deadline, waiting on the stranded holder), and that answer is
    not stored: once the holder is gone the key runs."""
    import hashlib

    import psycopg

    running = await start_in_process(LEADS, environment(postgres_url, tmp_path))
    try:
        stub = Stub(channel_for(running.target, "alice", retries=False))
        key = new_key()
        digest = hashlib.sha256(
            f"default\0alice\0/crm.leads.v1.LeadsService/CreateLead\0{key}".encode()).digest()
        lock = int.from_bytes(digest[:8], "big", signed=True)
        async with await psycopg.AsyncConnection.connect(postgres_url) as stranded:
            await stranded.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            # Waiting on the holder would end UNAVAILABLE at the deadline instead.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateLead(REQUEST, metadata=idempotency(key), timeout=5)
            assert refused.value.code() == grpc.StatusCode.ABORTED
            assert refusal(refused.value).reason == "IDEMPOTENCY_KEY_IN_USE"
            await stranded.rollback()
        lead = await stub.CreateLead(REQUEST, metadata=idempotency(key), timeout=5)
        assert lead.status == pb.LEAD_STATUS_NEW
        assert await count_leads(running) == 1
    finally:
        await running.stop(grace=1, drain=0)
