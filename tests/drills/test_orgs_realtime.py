"""Drill: two orgs write and subscribe at once, on two replicas of each service
sharing one PostgreSQL (as the services' ordinary role, under row-level security).

Every stream, on either replica, sees exactly its own org's events (all of
them, once, in log order) and none of the other org's: live streams (the
in-memory ring) and streams that start late from the first cursor with a ring
too small to hold what they missed (pages read from the database) alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from crm.bookings.v1 import bookings_pb2 as bpb
from crm.bookings.v1 import bookings_pb2_grpc
from crm.leads.v1 import leads_pb2 as lpb
from crm.leads.v1 import leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as mpb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from tests.drills.conftest import report
from tests.integration.bookings.conftest import at
from tests.support.servers import ServiceProcess, environment

ORGS = {"default": "alice", "acme": "carol@acme"}
NUMBERS = "default:+14155550100,acme:+14155550200"
PHONE = "+14155550123"
LEADS_PER_WRITER = 12
STUBS = {"leads": leads_pb2_grpc.LeadsServiceStub,
         "bookings": bookings_pb2_grpc.BookingsServiceStub,
         "messaging": messaging_pb2_grpc.MessagingServiceStub}
SUBSCRIBE = {"leads": lpb.SubscribeRequest, "bookings": bpb.SubscribeRequest,
             "messaging": mpb.SubscribeRequest}


@dataclass
class Seen:
    org: str
    service: str
    replica: int
    events: list[Any] = field(default_factory=list)


async def test_two_orgs_on_two_replicas_each_stream_sees_exactly_its_own_orgs_events(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    # A ring of 8: streams that start late page through the database instead.
    env = environment(postgres_url, tmp_path, CRM_EVENT_RING_SIZE="8",
                      CRM_SMS_FROM_NUMBERS=NUMBERS)
    leads = [ServiceProcess("leads", env) for _ in range(2)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in leads))
    others = [ServiceProcess(name, {**env, "CRM_LEADS_TARGET": leads[i].target})
              for name in ("bookings", "messaging") for i in range(2)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in others))
    replicas = {"leads": leads, "bookings": others[:2], "messaging": others[2:]}
    try:
        def stub(service: str, i: int, who: str) -> Any:
            return STUBS[service](channel_for(replicas[service][i].target, who))

        origins = {}
        for service in STUBS:
            first = stub(service, 0, "alice").Subscribe(SUBSCRIBE[service]())
            origins[service] = (await first.read()).cursor
            first.cancel()

        live = [Seen(org, service, i) for org in ORGS for service in STUBS for i in range(2)]
        streams = {id(s): stub(s.service, s.replica, ORGS[s.org]).Subscribe(
            SUBSCRIBE[s.service](after_cursor=origins[s.service])) for s in live}
        written: dict[str, set[str]] = {org: set() for org in ORGS}

        async def writer(org: str, replica: int) -> None:
            who = ORGS[org]
            for n in range(LEADS_PER_WRITER):
                lead = await stub("leads", replica, who).CreateLead(
                    lpb.CreateLeadRequest(name=f"{org}-{replica}-{n}", phone=PHONE),
                    metadata=idempotency(new_key()))
                written[org].add(lead.lead_id)
                await stub("leads", 1 - replica, who).UpdateLeadStatus(
                    lpb.UpdateLeadStatusRequest(lead_id=lead.lead_id,
                                                status=lpb.LEAD_STATUS_CONTACTED),
                    metadata=idempotency(new_key()))
                await stub("bookings", replica, who).CreateAppointment(
                    bpb.CreateAppointmentRequest(
                        lead_id=lead.lead_id, agent_id=f"agent-{n}",
                        start_time=timestamp(at(n)), end_time=timestamp(at(n + 1))),
                    metadata=idempotency(new_key()))
                await stub("messaging", 1 - replica, who).SendSms(
                    mpb.SendSmsRequest(lead_id=lead.lead_id, body=f"Hello {n}"),
                    metadata=idempotency(new_key()))

        async def last_word(org: str) -> str:
            """One more lead, text and appointment of the org, after all its writes:
            a stream that has seen it has seen everything of its org."""
            who = ORGS[org]
            lead = await stub("leads", 0, who).CreateLead(
                lpb.CreateLeadRequest(name=f"{org}-last", phone=PHONE),
                metadata=idempotency(new_key()))
            await stub("bookings", 1, who).CreateAppointment(bpb.CreateAppointmentRequest(
                lead_id=lead.lead_id, agent_id="agent-last", start_time=timestamp(at(99)),
                end_time=timestamp(at(100))), metadata=idempotency(new_key()))
            await stub("messaging", 0, who).SendSms(
                mpb.SendSmsRequest(lead_id=lead.lead_id, body="Bye"),
                metadata=idempotency(new_key()))
            return str(lead.lead_id)

        async def read_until(seen: Seen, stream: Any) -> None:
            try:
                async with asyncio.timeout(120):  # a bound on the wait, not a measure
                    while True:
                        event = await stream.read()
                        if event.type == "bookmark":
                            continue
                        seen.events.append(event)
                        if is_last_word(seen, event):
                            return
            finally:
                stream.cancel()

        last: dict[str, str] = {}
        readers = [asyncio.create_task(read_until(s, streams[id(s)])) for s in live]
        await asyncio.gather(*(writer(org, r) for org in ORGS for r in range(2)))
        for org in ORGS:
            last[org] = await last_word(org)
            written[org].add(last[org])
        await asyncio.gather(*readers)

        # Late streams from the first cursor: the ring holds 8, the database the rest.
        late = [Seen(org, service, i) for org in ORGS for service in STUBS for i in range(2)]
        await asyncio.gather(*(read_until(s, stub(s.service, s.replica, ORGS[s.org]).Subscribe(
            SUBSCRIBE[s.service](after_cursor=origins[s.service]))) for s in late))

        crossed = 0
        for seen in (*live, *late):
            leads_seen = {e.lead_id for e in seen.events}
            cursors = [e.cursor for e in seen.events]
            crossed += len(leads_seen - written[seen.org])
            assert leads_seen == written[seen.org], (seen.org, seen.service, seen.replica)
            assert len(cursors) == len(set(cursors)), "an event delivered twice"
        counts = {(s.org, s.service): len(s.events) for s in live}
        for seen in (*live, *late):  # every stream of one org and service: the same events
            assert len(seen.events) == counts[(seen.org, seen.service)]
        report("two orgs, two replicas each", streams=len(live) + len(late),
               events_per_org={org: sum(n for (o, _), n in counts.items() if o == org)
                               for org in ORGS},
               crossed_orgs=crossed)
    finally:
        for process in (*leads, *others):
            process.kill()


def is_last_word(seen: Seen, event: Any) -> bool:
    """Whether the event is of its org's last word (`last_word`), by what it holds:
    it may arrive before the call that made it has answered."""
    if seen.service == "leads":
        return bool(event.lead.name == f"{seen.org}-last")
    if seen.service == "bookings":
        return bool(event.appointment.agent_id == "agent-last")
    return bool(event.message.body == "Bye")
