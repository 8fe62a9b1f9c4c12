"""Opt-out and opt-in by text, and delivery statuses that never move backwards."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.integration.messaging.conftest import FROM, LEAD_PHONE, send
from tests.support.rpc import refusal
from tests.support.servers import wait_until
from tests.support.twilio_double import TwilioDouble

Stub = messaging_pb2_grpc.MessagingServiceStub
Consent = pb.ReceiveInboundMessageResponse


async def inbound(stub: Stub, body: str, sid: str | None = None, phone: str = LEAD_PHONE,
                  key: str | None = None) -> pb.ReceiveInboundMessageResponse:
    request = pb.ReceiveInboundMessageRequest(from_number=phone, to=FROM, body=body,
                                              provider_message_id=sid or f"SM{new_key()}")
    return await stub.ReceiveInboundMessage(request, metadata=idempotency(key or new_key()))


async def report(stub: Stub, message: pb.Message, status: str, *, by_id: bool = False,
                 error_code: int = 0) -> pb.Message:
    request = pb.RecordDeliveryStatusRequest(provider_message_id=message.provider_message_id,
                                             provider_status=status, error_code=error_code)
    if by_id:
        request.message_id = message.message_id
    return await stub.RecordDeliveryStatus(request, metadata=idempotency(new_key()))


@pytest.mark.parametrize("word", ["STOP", "stop", " Unsubscribe ", "QUIT.", "stopall", "End"])
async def test_a_lead_who_texts_an_opt_out_keyword_is_not_texted_again(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble, word: str
) -> None:
    await send(messaging, lead.lead_id)
    answered = await inbound(webhooks, word)
    assert answered.consent == Consent.CONSENT_OPTED_OUT
    assert (answered.message.direction, answered.message.lead_id) == (pb.DIRECTION_INBOUND,
                                                                      lead.lead_id)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, lead.lead_id, "one more thing")
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                              "RECIPIENT_OPTED_OUT")
    assert len(twilio.sent) == 1


@pytest.mark.parametrize("word", ["START", "yes", "Unstop"])
async def test_an_opt_in_keyword_lets_texts_through_again(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble, word: str
) -> None:
    await inbound(webhooks, "STOP")
    assert (await inbound(webhooks, word)).consent == Consent.CONSENT_OPTED_IN
    await send(messaging, lead.lead_id)
    assert len(twilio.sent) == 1


async def test_an_ordinary_reply_changes_no_consent_and_joins_the_history(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    sent = await send(messaging, lead.lead_id)
    reply = await inbound(webhooks, "Stop by at 3? Sounds good")
    assert reply.consent == Consent.CONSENT_UNCHANGED
    history = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    assert [m.message_id for m in history.messages] == [reply.message.message_id, sent.message_id]
    assert history.messages[0].status == pb.MESSAGE_STATUS_RECEIVED


async def test_an_inbound_text_delivered_twice_is_recorded_once(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    first = await inbound(webhooks, "hello", sid="SM" + "1" * 32)
    again = await inbound(webhooks, "hello", sid="SM" + "1" * 32)
    assert again.message.message_id == first.message.message_id


async def test_delivery_statuses_never_move_backwards(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    sent = await send(messaging, lead.lead_id)
    assert (await report(webhooks, sent, "sent")).status == pb.MESSAGE_STATUS_SENT
    assert (await report(webhooks, sent, "delivered")).status == pb.MESSAGE_STATUS_DELIVERED
    for late in ("sending", "sent", "queued", "undelivered"):
        assert (await report(webhooks, sent, late)).status == pb.MESSAGE_STATUS_DELIVERED
    stored = await messaging.GetMessage(pb.GetMessageRequest(message_id=sent.message_id))
    assert stored.status == pb.MESSAGE_STATUS_DELIVERED


async def test_an_undelivered_report_keeps_the_carriers_error_code(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    sent = await send(messaging, lead.lead_id)
    failed = await report(webhooks, sent, "undelivered", error_code=30003)
    assert (failed.status, failed.error_code) == (pb.MESSAGE_STATUS_UNDELIVERED, 30003)


async def test_a_callback_that_beats_the_senders_commit_finds_the_message_by_our_id(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio_answers, before = twilio.hold(), twilio.arrivals
    sending = asyncio.create_task(send(messaging, lead.lead_id))
    await wait_until(lambda: twilio.arrivals == before + 1)  # the text is with Twilio now
    listed = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    (queued,) = listed.messages
    early = pb.Message(message_id=queued.message_id, provider_message_id="SM" + "e" * 32)
    assert (await report(webhooks, early, "sent", by_id=True)).status == pb.MESSAGE_STATUS_SENT
    twilio_answers.set()
    sent = await sending
    # The callback's news is kept, not overwritten by "queued".
    assert sent.status == pb.MESSAGE_STATUS_SENT


async def test_unknown_statuses_and_messages_are_refused(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    sent = await send(messaging, lead.lead_id)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await report(webhooks, sent, "teleported")
    assert "provider_status" in refusal(failed.value).fields
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await report(webhooks, pb.Message(provider_message_id="SMnope"), "sent")
    assert refusal(failed.value).reason == "MESSAGE_NOT_FOUND"


async def test_subscribers_see_sends_status_changes_and_consent_for_their_lead(
    messaging: Stub, webhooks: Stub, lead: leads_pb2.Lead
) -> None:
    stream = messaging.Subscribe(pb.SubscribeRequest(lead_ids=[lead.lead_id]))
    assert (await stream.read()).type == "bookmark"
    sent = await send(messaging, lead.lead_id)
    await report(webhooks, sent, "delivered")
    await inbound(webhooks, "STOP")
    seen: list[pb.Event] = []
    async with asyncio.timeout(10):
        while len(seen) < 4:
            event = await stream.read()
            if event.type != "bookmark":
                seen.append(event)
    # Twilio's acceptance leaves the status at "queued": no change to announce.
    assert [e.type for e in seen] == ["message.created", "message.status_changed",
                                      "message.created", "recipient.opted_out"]
    assert seen[0].message.status == pb.MESSAGE_STATUS_QUEUED
    assert (seen[1].message.status, seen[1].message.provider_message_id) == (
        pb.MESSAGE_STATUS_DELIVERED, sent.provider_message_id)
    assert seen[3].consent == pb.Consent(phone=LEAD_PHONE, opted_out=True)
    stream.cancel()
