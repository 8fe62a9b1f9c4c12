"""Confirms racing on two bookings processes over one PostgreSQL database: however
they interleave, an agent's confirmed appointments never overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from tests.integration.bookings.conftest import Stub, book, confirm
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, environment

CONTENDERS = 12


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess,
                                                                 ServiceProcess]]:
    """One leads process and two bookings processes, all on one database."""
    env = environment(postgres_url, tmp_path)
    leads = ServiceProcess("leads", env)
    replicas = [ServiceProcess("bookings", env), ServiceProcess("bookings", env)]
    try:
        leads.start()
        for replica in replicas:
            replica.env["CRM_LEADS_TARGET"] = leads.target
        # Started together, as replicas are: they also race to migrate.
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda replica: replica.start(), replicas))
        yield leads, replicas[0], replicas[1]
    finally:
        for process in (leads, *replicas):
            if process.process is not None:
                process.kill()


async def race(stubs: list[Stub], contenders: list[pb.Appointment]) -> list[str]:
    """Confirm every contender at once, spread over the replicas; what each got."""

    async def attempt(stub: Stub, appointment: pb.Appointment) -> str:
        try:
            return "won " + (await confirm(stub, appointment.appointment_id)).appointment_id
        except grpc.aio.AioRpcError as error:
            refused = refusal(error)
            assert refused.reason == "SLOT_TAKEN", refused
            return "lost to " + refused.metadata["conflicting_appointment_id"]

    return list(await asyncio.gather(
        *(attempt(stubs[i % len(stubs)], a) for i, a in enumerate(contenders))
    ))


def one_winner(outcomes: list[str], contenders: list[pb.Appointment]) -> str:
    """The id of the one contender that won; every other lost to it, by name."""
    winners = [o.removeprefix("won ") for o in outcomes if o.startswith("won ")]
    assert len(winners) == 1, outcomes
    assert winners[0] in {a.appointment_id for a in contenders}
    assert outcomes.count(f"lost to {winners[0]}") == len(contenders) - 1, outcomes
    return winners[0]


async def confirmed_of(stub: Stub, agent: str) -> list[str]:
    found = await stub.ListAppointments(pb.ListAppointmentsRequest(agent_id=agent,
                                                                   status=pb.APPOINTMENT_STATUS_CONFIRMED))
    return [a.appointment_id for a in found.appointments]


@pytest.fixture
async def stubs_and_lead(
    cluster: tuple[ServiceProcess, ServiceProcess, ServiceProcess],
    channel_for: Callable[..., grpc.aio.Channel],
) -> tuple[list[Stub], str]:
    leads, *replicas = cluster
    lead = await create_lead(leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)))
    return [Stub(channel_for(r.target)) for r in replicas], lead.lead_id


async def test_confirms_of_overlapping_slots_racing_on_two_replicas_confirm_exactly_one(
    stubs_and_lead: tuple[list[Stub], str], agent: str
) -> None:
    stubs, lead_id = stubs_and_lead
    # Every slot overlaps every other: each starts 10 minutes after the previous
    # and lasts 3 hours.
    contenders = [await book(stubs[i % 2], lead_id, agent, start=i / 6, hours=3)
                  for i in range(CONTENDERS)]
    winner = one_winner(await race(stubs, contenders), contenders)
    for stub in stubs:
        assert await confirmed_of(stub, agent) == [winner]


async def test_two_groups_of_slots_that_do_not_overlap_each_confirm_exactly_one(
    stubs_and_lead: tuple[list[Stub], str], agent: str
) -> None:
    stubs, lead_id = stubs_and_lead
    # The morning's slots all overlap one another, as do the afternoon's; the
    # morning's last one ends exactly when the afternoon's first one starts.
    morning = [await book(stubs[0], lead_id, agent, start=i / 6, hours=4 - i / 6)
               for i in range(CONTENDERS // 2)]
    afternoon = [await book(stubs[1], lead_id, agent, start=4 + i / 6, hours=2)
                 for i in range(CONTENDERS // 2)]
    outcomes = await race(stubs, [a for pair in zip(morning, afternoon, strict=True)
                                  for a in pair])
    winners = {one_winner([o for o in outcomes if any(a.appointment_id in o for a in group)],
                          group)
               for group in (morning, afternoon)}
    assert sorted(await confirmed_of(stubs[0], agent)) == sorted(winners)
