"""Isolation between orgs, over every RPC of the contracts, on both databases.

Two orgs: `default` (alice, an agent) holds a lead, its status change, a
confirmed appointment, a message and a template; `acme` (carol, an agent)
then calls every RPC against them. Another org's object is NOT_FOUND with the
same message as one that does not exist, lists and streams never show it,
and nothing of it changes. The table below has a check for every RPC that
the service descriptors declare: a new RPC without one fails
`test_every_rpc_of_the_contracts_has_an_isolation_check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2 as bpb
from crm.bookings.v1 import bookings_pb2_grpc
from crm.leads.v1 import leads_pb2 as lpb
from crm.leads.v1 import leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as mpb
from crm.messaging.v1 import messaging_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.bootstrap import SPEC as LEADS
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from services.shared.server import RunningService
from tests.integration.bookings.conftest import at
from tests.support.servers import environment, start_in_process

A, B = "alice", "carol@acme"  # agents of the orgs `default` and `acme`
A_NUMBER, B_NUMBER = "+14155550100", "+14155550200"
PHONE = "+14155550123"
SERVICES = {"leads": (LEADS, leads_pb2_grpc.LeadsServiceStub),
            "bookings": (BOOKINGS, bookings_pb2_grpc.BookingsServiceStub),
            "messaging": (MESSAGING, messaging_pb2_grpc.MessagingServiceStub)}
FULL_NAMES = {"leads": "crm.leads.v1.LeadsService",
              "bookings": "crm.bookings.v1.BookingsService",
              "messaging": "crm.messaging.v1.MessagingService"}


@dataclass
class World:
    servers: dict[str, RunningService]
    channel_for: Callable[..., grpc.aio.Channel]
    # What `default` holds.
    lead: lpb.Lead = field(default_factory=lpb.Lead)
    appointment: bpb.Appointment = field(default_factory=bpb.Appointment)
    message: mpb.Message = field(default_factory=mpb.Message)
    template: mpb.MessageTemplate = field(default_factory=mpb.MessageTemplate)

    def stub(self, service: str, who: str) -> Any:
        return SERVICES[service][1](self.channel_for(self.servers[service].target, who))

    def leads(self, who: str) -> leads_pb2_grpc.LeadsServiceStub:
        return self.stub("leads", who)  # type: ignore[no-any-return]

    def bookings(self, who: str) -> bookings_pb2_grpc.BookingsServiceStub:
        return self.stub("bookings", who)  # type: ignore[no-any-return]

    def messaging(self, who: str) -> messaging_pb2_grpc.MessagingServiceStub:
        return self.stub("messaging", who)  # type: ignore[no-any-return]


@pytest.fixture
async def world(new_database: Callable[[str], str], tmp_path: Path,
                channel_for: Callable[..., grpc.aio.Channel]) -> AsyncIterator[World]:
    async with open_world(new_database, tmp_path, channel_for) as made:
        yield made


@contextlib.asynccontextmanager
async def open_world(new_database: Callable[[str], str], tmp_path: Path,
                     channel_for: Callable[..., grpc.aio.Channel]) -> AsyncIterator[World]:
    """The three services, each on a database of its own, and `default`'s objects."""
    env = environment("", tmp_path)
    servers: dict[str, RunningService] = {}
    servers["leads"] = await start_in_process(
        LEADS, {**env, "CRM_DATABASE_URL": new_database("leads")})
    try:
        extra = {"CRM_LEADS_TARGET": servers["leads"].target,
                 "CRM_SMS_FROM_NUMBERS": f"default:{A_NUMBER},acme:{B_NUMBER}"}
        for name, spec in (("bookings", BOOKINGS), ("messaging", MESSAGING)):
            servers[name] = await start_in_process(
                spec, {**env, **extra, "CRM_DATABASE_URL": new_database(name)})
        made = World(servers, channel_for)
        made.lead = await made.leads(A).CreateLead(
            lpb.CreateLeadRequest(name="Ada Lovelace", phone=PHONE),
            metadata=idempotency(new_key()))
        made.lead = await made.leads(A).UpdateLeadStatus(
            lpb.UpdateLeadStatusRequest(lead_id=made.lead.lead_id,
                                        status=lpb.LEAD_STATUS_CONTACTED),
            metadata=idempotency(new_key()))
        booked = await made.bookings(A).CreateAppointment(_booking(made.lead.lead_id),
                                                          metadata=idempotency(new_key()))
        made.appointment = await made.bookings(A).ConfirmAppointment(
            bpb.ConfirmAppointmentRequest(appointment_id=booked.appointment_id),
            metadata=idempotency(new_key()))
        made.message = await made.messaging(A).SendSms(
            mpb.SendSmsRequest(lead_id=made.lead.lead_id, body="Hello Ada"),
            metadata=idempotency(new_key()))
        made.template = await made.messaging(A).SaveMessageTemplate(
            mpb.SaveMessageTemplateRequest(name="Welcome", body="Hello {first_name}"),
            metadata=idempotency(new_key()))
        yield made
    finally:
        for server in reversed(servers.values()):
            await server.stop(grace=1, drain=0)


def _booking(lead_id: str, agent: str = "agent-1") -> bpb.CreateAppointmentRequest:
    return bpb.CreateAppointmentRequest(lead_id=lead_id, agent_id=agent,
                                        start_time=timestamp(at(0)), end_time=timestamp(at(1)))


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call was not refused")


async def not_found_as_if_missing(call: Callable[[str], Awaitable[Any]], their_id: str) -> None:
    """`call` on another org's object is NOT_FOUND, saying what it says of a missing one."""
    theirs = await refusal(call(their_id))
    missing_id = str(uuid.uuid4())
    missing = await refusal(call(missing_id))
    assert theirs.code() is grpc.StatusCode.NOT_FOUND, theirs.details()
    assert missing.code() is grpc.StatusCode.NOT_FOUND, missing.details()
    assert theirs.details() == (missing.details() or "").replace(missing_id, their_id)


def key() -> tuple[tuple[str, str], ...]:
    return idempotency(new_key())


# -- leads -------------------------------------------------------------------------------


async def check_create_lead(w: World) -> None:
    """One phone may be a lead in two orgs; each finds its own only."""
    theirs = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Other Ada", phone=PHONE),
                                         metadata=key())
    mine = await w.leads(B).ListLeads(lpb.ListLeadsRequest(phone=PHONE))
    assert [lead.lead_id for lead in mine.leads] == [theirs.lead_id]
    yours = await w.leads(A).ListLeads(lpb.ListLeadsRequest(phone=PHONE))
    assert [lead.lead_id for lead in yours.leads] == [w.lead.lead_id]


async def check_get_lead(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.leads(B).GetLead(lpb.GetLeadRequest(lead_id=i)), w.lead.lead_id)


async def check_list_leads(w: World) -> None:
    await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone="+14155550999"),
                                metadata=key())
    token, listed = "", []
    while True:  # every page of B's list
        page = await w.leads(B).ListLeads(lpb.ListLeadsRequest(page_size=1, page_token=token))
        listed += [lead.lead_id for lead in page.leads]
        if not (token := page.next_page_token):
            break
    assert listed and w.lead.lead_id not in listed
    # A page token is signed with its org: another org's token is refused.
    await w.leads(A).CreateLead(lpb.CreateLeadRequest(name="Cy", phone="+14155550998"),
                                metadata=key())
    page = await w.leads(A).ListLeads(lpb.ListLeadsRequest(page_size=1))
    assert page.next_page_token
    refused = await refusal(w.leads(B).ListLeads(
        lpb.ListLeadsRequest(page_size=1, page_token=page.next_page_token)))
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT


async def check_update_lead_status(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.leads(B).UpdateLeadStatus(
            lpb.UpdateLeadStatusRequest(lead_id=i, status=lpb.LEAD_STATUS_LOST), metadata=key()),
        w.lead.lead_id)
    assert (await w.leads(A).GetLead(lpb.GetLeadRequest(lead_id=w.lead.lead_id))).version == \
        w.lead.version


async def check_batch_update_lead_status(w: World) -> None:
    refused = await refusal(w.leads(B).BatchUpdateLeadStatus(
        lpb.BatchUpdateLeadStatusRequest(lead_ids=[w.lead.lead_id],
                                         status=lpb.LEAD_STATUS_LOST), metadata=key()))
    missing = str(uuid.uuid4())
    as_missing = await refusal(w.leads(B).BatchUpdateLeadStatus(
        lpb.BatchUpdateLeadStatusRequest(lead_ids=[missing], status=lpb.LEAD_STATUS_LOST),
        metadata=key()))
    assert refused.code() == as_missing.code()
    assert refused.details() == (as_missing.details() or "").replace(missing, w.lead.lead_id)
    assert (await w.leads(A).GetLead(lpb.GetLeadRequest(lead_id=w.lead.lead_id))).version == \
        w.lead.version


async def check_list_status_changes(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.leads(B).ListStatusChanges(lpb.ListStatusChangesRequest(lead_id=i)),
        w.lead.lead_id)


async def check_leads_subscribe(w: World) -> None:
    async def act_as_a() -> None:
        await w.leads(A).UpdateLeadStatus(lpb.UpdateLeadStatusRequest(
            lead_id=w.lead.lead_id, status=lpb.LEAD_STATUS_QUALIFIED), metadata=key())

    async def act_as_b() -> str:
        made = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone=PHONE),
                                           metadata=key())
        return str(made.lead_id)

    await sees_only_its_own(w.leads(B).Subscribe(lpb.SubscribeRequest()), act_as_a, act_as_b,
                            foreign={w.lead.lead_id})


# -- bookings -------------------------------------------------------------------------------


async def check_create_appointment(w: World) -> None:
    """Another org's lead is LEAD_NOT_FOUND; one org's agent's slot is not another's."""
    await not_found_as_if_missing(
        lambda i: w.bookings(B).CreateAppointment(_booking(i), metadata=key()), w.lead.lead_id)
    lead = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone=PHONE),
                                       metadata=key())
    booked = await w.bookings(B).CreateAppointment(_booking(lead.lead_id), metadata=key())
    confirmed = await w.bookings(B).ConfirmAppointment(
        bpb.ConfirmAppointmentRequest(appointment_id=booked.appointment_id), metadata=key())
    assert confirmed.status == bpb.APPOINTMENT_STATUS_CONFIRMED  # the same agent, slot, org B


async def check_get_appointment(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.bookings(B).GetAppointment(bpb.GetAppointmentRequest(appointment_id=i)),
        w.appointment.appointment_id)


async def check_list_appointments(w: World) -> None:
    for request in (bpb.ListAppointmentsRequest(),
                    bpb.ListAppointmentsRequest(lead_id=w.lead.lead_id),
                    bpb.ListAppointmentsRequest(agent_id="agent-1")):
        listed = await w.bookings(B).ListAppointments(request)
        assert w.appointment.appointment_id not in [a.appointment_id
                                                    for a in listed.appointments]
        assert all(a.created_by == "carol" for a in listed.appointments)


async def _appointment_unchanged(w: World) -> None:
    found = await w.bookings(A).GetAppointment(
        bpb.GetAppointmentRequest(appointment_id=w.appointment.appointment_id))
    assert (found.status, found.version) == (w.appointment.status, w.appointment.version)


async def check_confirm_appointment(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.bookings(B).ConfirmAppointment(
            bpb.ConfirmAppointmentRequest(appointment_id=i), metadata=key()),
        w.appointment.appointment_id)
    await _appointment_unchanged(w)


async def check_cancel_appointment(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.bookings(B).CancelAppointment(
            bpb.CancelAppointmentRequest(appointment_id=i, reason="no"), metadata=key()),
        w.appointment.appointment_id)
    await _appointment_unchanged(w)


async def check_complete_appointment(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.bookings(B).CompleteAppointment(
            bpb.CompleteAppointmentRequest(appointment_id=i), metadata=key()),
        w.appointment.appointment_id)
    await _appointment_unchanged(w)


async def check_list_appointment_changes(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.bookings(B).ListAppointmentChanges(
            bpb.ListAppointmentChangesRequest(appointment_id=i)),
        w.appointment.appointment_id)


async def check_bookings_subscribe(w: World) -> None:
    lead = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone=PHONE),
                                       metadata=key())

    async def act_as_a() -> None:
        await w.bookings(A).CancelAppointment(bpb.CancelAppointmentRequest(
            appointment_id=w.appointment.appointment_id, reason="moved"), metadata=key())

    async def act_as_b() -> str:
        await w.bookings(B).CreateAppointment(_booking(lead.lead_id), metadata=key())
        return str(lead.lead_id)

    await sees_only_its_own(w.bookings(B).Subscribe(bpb.SubscribeRequest()), act_as_a,
                            act_as_b, foreign={w.lead.lead_id})


# -- messaging --------------------------------------------------------------------------------


async def check_send_sms(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.messaging(B).SendSms(mpb.SendSmsRequest(lead_id=i, body="Hi"),
                                         metadata=key()), w.lead.lead_id)
    lead = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone=PHONE),
                                       metadata=key())
    sent = await w.messaging(B).SendSms(mpb.SendSmsRequest(lead_id=lead.lead_id, body="Hi"),
                                        metadata=key())
    # Each org texts from its own number.
    assert (sent.from_number, w.message.from_number) == (B_NUMBER, A_NUMBER)


async def check_get_message(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.messaging(B).GetMessage(mpb.GetMessageRequest(message_id=i)),
        w.message.message_id)


async def check_list_messages(w: World) -> None:
    listed = await w.messaging(B).ListMessages(mpb.ListMessagesRequest(lead_id=w.lead.lead_id))
    assert w.message.message_id not in [m.message_id for m in listed.messages]
    assert all(m.created_by == "carol" for m in listed.messages)


async def check_get_provider_status(w: World) -> None:
    """No org's data: the one provider's state, the same for every org."""
    mine = await w.messaging(B).GetProviderStatus(mpb.GetProviderStatusRequest())
    yours = await w.messaging(A).GetProviderStatus(mpb.GetProviderStatusRequest())
    assert (mine.provider, mine.state) == (yours.provider, yours.state)


async def check_receive_inbound_message(w: World) -> None:
    """A STOP to one org's number opts the sender out in that org only."""
    lead = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone=PHONE),
                                       metadata=key())
    answer = await w.messaging("gateway").ReceiveInboundMessage(
        mpb.ReceiveInboundMessageRequest(from_number=PHONE, to=B_NUMBER, body="STOP",
                                         provider_message_id=f"SM{uuid.uuid4().hex}"),
        metadata=key())
    assert answer.consent == mpb.ReceiveInboundMessageResponse.CONSENT_OPTED_OUT
    refused = await refusal(w.messaging(B).SendSms(
        mpb.SendSmsRequest(lead_id=lead.lead_id, body="Hi"), metadata=key()))
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
    sent = await w.messaging(A).SendSms(
        mpb.SendSmsRequest(lead_id=w.lead.lead_id, body="Still here"), metadata=key())
    assert sent.message_id
    # A number of no org is refused, naming the field.
    stray = await refusal(w.messaging("gateway").ReceiveInboundMessage(
        mpb.ReceiveInboundMessageRequest(from_number=PHONE, to="+14155550777", body="STOP",
                                         provider_message_id=f"SM{uuid.uuid4().hex}"),
        metadata=key()))
    assert stray.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "to" in (stray.details() or "")


async def check_record_delivery_status(w: World) -> None:
    """A report naming another org's message, in the org it names, finds nothing."""
    async def report(message_id: str) -> Any:
        return await w.messaging("gateway").RecordDeliveryStatus(
            mpb.RecordDeliveryStatusRequest(provider_message_id=f"SM{uuid.uuid4().hex}",
                                            provider_status="delivered",
                                            message_id=message_id),
            metadata=(*key(), ("x-crm-org", "acme")))

    await not_found_as_if_missing(report, w.message.message_id)


async def check_list_message_templates(w: World) -> None:
    listed = await w.messaging(B).ListMessageTemplates(mpb.ListMessageTemplatesRequest())
    assert list(listed.templates) == []


async def check_save_message_template(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.messaging(B).SaveMessageTemplate(
            mpb.SaveMessageTemplateRequest(template_id=i, name="Mine", body="Hi"),
            metadata=key()), w.template.template_id)
    # Both orgs may hold a template of one name.
    await w.messaging(B).SaveMessageTemplate(
        mpb.SaveMessageTemplateRequest(name=w.template.name, body="Hi"), metadata=key())
    yours = await w.messaging(A).ListMessageTemplates(mpb.ListMessageTemplatesRequest())
    assert [t.template_id for t in yours.templates] == [w.template.template_id]


async def check_delete_message_template(w: World) -> None:
    await not_found_as_if_missing(
        lambda i: w.messaging(B).DeleteMessageTemplate(
            mpb.DeleteMessageTemplateRequest(template_id=i), metadata=key()),
        w.template.template_id)
    yours = await w.messaging(A).ListMessageTemplates(mpb.ListMessageTemplatesRequest())
    assert [t.template_id for t in yours.templates] == [w.template.template_id]


async def check_messaging_subscribe(w: World) -> None:
    # Another number: a check before may have opted PHONE out in B.
    lead = await w.leads(B).CreateLead(lpb.CreateLeadRequest(name="Bea", phone="+14155550124"),
                                       metadata=key())

    async def act_as_a() -> None:
        await w.messaging(A).SendSms(mpb.SendSmsRequest(lead_id=w.lead.lead_id, body="Again"),
                                     metadata=key())

    async def act_as_b() -> str:
        await w.messaging(B).SendSms(mpb.SendSmsRequest(lead_id=lead.lead_id, body="Hi"),
                                     metadata=key())
        return str(lead.lead_id)

    await sees_only_its_own(w.messaging(B).Subscribe(mpb.SubscribeRequest()), act_as_a,
                            act_as_b, foreign={w.lead.lead_id})


async def sees_only_its_own(stream: Any, act_as_a: Callable[[], Awaitable[None]],
                            act_as_b: Callable[[], Awaitable[str]], *,
                            foreign: set[str]) -> None:
    """B's stream, live, while A and then B change something: it shows B's events and
    none of A's (the events of one process's ring, and of its database alike)."""
    seen: list[Any] = []
    try:
        async with asyncio.timeout(30):  # a bound on a wait, not a measure of speed
            first = await stream.read()
            assert first.type == "bookmark"
            await act_as_a()
            mine = await act_as_b()
            while True:
                event = await stream.read()
                if event.type == "bookmark":
                    continue
                seen.append(event)
                if event.lead_id == mine:
                    break
    finally:
        stream.cancel()
    assert [e.lead_id for e in seen if e.lead_id in foreign] == []
    assert all(e.lead_id == mine for e in seen), [(e.type, e.lead_id) for e in seen]


CHECKS: dict[str, Callable[[World], Awaitable[None]]] = {
    "crm.leads.v1.LeadsService.CreateLead": check_create_lead,
    "crm.leads.v1.LeadsService.GetLead": check_get_lead,
    "crm.leads.v1.LeadsService.ListLeads": check_list_leads,
    "crm.leads.v1.LeadsService.UpdateLeadStatus": check_update_lead_status,
    "crm.leads.v1.LeadsService.BatchUpdateLeadStatus": check_batch_update_lead_status,
    "crm.leads.v1.LeadsService.ListStatusChanges": check_list_status_changes,
    "crm.leads.v1.LeadsService.Subscribe": check_leads_subscribe,
    "crm.bookings.v1.BookingsService.CreateAppointment": check_create_appointment,
    "crm.bookings.v1.BookingsService.GetAppointment": check_get_appointment,
    "crm.bookings.v1.BookingsService.ListAppointments": check_list_appointments,
    "crm.bookings.v1.BookingsService.ConfirmAppointment": check_confirm_appointment,
    "crm.bookings.v1.BookingsService.CancelAppointment": check_cancel_appointment,
    "crm.bookings.v1.BookingsService.CompleteAppointment": check_complete_appointment,
    "crm.bookings.v1.BookingsService.ListAppointmentChanges": check_list_appointment_changes,
    "crm.bookings.v1.BookingsService.Subscribe": check_bookings_subscribe,
    "crm.messaging.v1.MessagingService.SendSms": check_send_sms,
    "crm.messaging.v1.MessagingService.GetMessage": check_get_message,
    "crm.messaging.v1.MessagingService.ListMessages": check_list_messages,
    "crm.messaging.v1.MessagingService.GetProviderStatus": check_get_provider_status,
    "crm.messaging.v1.MessagingService.ReceiveInboundMessage": check_receive_inbound_message,
    "crm.messaging.v1.MessagingService.RecordDeliveryStatus": check_record_delivery_status,
    "crm.messaging.v1.MessagingService.ListMessageTemplates": check_list_message_templates,
    "crm.messaging.v1.MessagingService.SaveMessageTemplate": check_save_message_template,
    "crm.messaging.v1.MessagingService.DeleteMessageTemplate": check_delete_message_template,
    "crm.messaging.v1.MessagingService.Subscribe": check_messaging_subscribe,
}


def contract_rpcs() -> set[str]:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    found = set()
    for full_name in FULL_NAMES.values():
        service = pool.FindServiceByName(full_name)
        found |= {f"{full_name}.{method.name}" for method in service.methods}
    return found


def test_every_rpc_of_the_contracts_has_an_isolation_check() -> None:
    assert sorted(contract_rpcs() - set(CHECKS)) == []
    assert sorted(set(CHECKS) - contract_rpcs()) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_another_orgs_objects_are_invisible_to_every_rpc(world: World, service: str
                                                               ) -> None:
    failures = []
    for rpc, check in CHECKS.items():
        if rpc.startswith(FULL_NAMES[service] + "."):
            try:
                await check(world)
            except (AssertionError, grpc.aio.AioRpcError) as failure:
                failures.append(f"{rpc}: {failure!r}")
    assert not failures, "\n".join(failures)
