"""SendSms through the real twilio library against the local Twilio double."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.server import RunningService
from tests.integration.messaging.conftest import FROM, LEAD_PHONE, send
from tests.support.rpc import refusal
from tests.support.twilio_double import TwilioDouble

Stub = messaging_pb2_grpc.MessagingServiceStub


async def test_a_text_goes_to_twilio_once_and_is_recorded_with_its_sid_and_segments(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    sent = await send(messaging, lead.lead_id, "See you at 3pm")
    (accepted,) = twilio.sent_to(LEAD_PHONE)
    assert accepted.body == "See you at 3pm" and accepted.from_ == FROM
    assert accepted.status_callback == (
        f"http://127.0.0.1:8080/webhooks/twilio/status?message_id={sent.message_id}&org=default")
    assert (sent.provider, sent.provider_message_id, sent.status) == ("twilio", accepted.sid,
                                                                     pb.MESSAGE_STATUS_QUEUED)
    assert (sent.segments, sent.encoding, sent.to, sent.direction) == (
        1, pb.ENCODING_GSM_7, LEAD_PHONE, pb.DIRECTION_OUTBOUND)
    assert sent.created_by == "alice"
    history = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    assert list(history.messages) == [sent]
    assert await messaging.GetMessage(pb.GetMessageRequest(message_id=sent.message_id)) == sent


async def test_without_twilio_credentials_the_console_provider_reports_delivered(
    start_messaging: Callable[..., object], lead: leads_pb2.Lead, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    server: RunningService = await start_messaging(  # type: ignore[misc]
        TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="", TWILIO_FROM_NUMBER="")
    stub = Stub(channel_for(server.target))
    sent = await send(stub, lead.lead_id)
    assert (sent.provider, sent.status) == ("console", pb.MESSAGE_STATUS_DELIVERED)
    assert twilio.requests == 0
    status = await stub.GetProviderStatus(pb.GetProviderStatusRequest())
    assert (status.provider, status.state) == ("console", pb.BREAKER_STATE_CLOSED)


async def test_a_body_over_the_segment_limit_is_refused_naming_length_encoding_and_limit(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, lead.lead_id, "€" * 81)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LONG")
    assert refused.metadata == {"length": "162", "encoding": "GSM_7", "segments": "2",
                                "max_segments": "1"}
    assert "162 GSM-7 characters" in refused.fields["body"]
    assert twilio.requests == 0
    history = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    assert list(history.messages) == []


async def test_the_segment_limit_is_configurable(
    start_messaging: Callable[..., object], lead: leads_pb2.Lead,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    server: RunningService = await start_messaging(CRM_SMS_MAX_SEGMENTS="3")  # type: ignore[misc]
    sent = await send(Stub(channel_for(server.target)), lead.lead_id, "x" * 459)
    assert (sent.segments, sent.encoding) == (3, pb.ENCODING_GSM_7)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(Stub(channel_for(server.target)), lead.lead_id, "Ü" * 150 + "😀" * 30)
    assert refusal(failed.value).metadata["encoding"] == "UCS_2"


async def test_an_empty_body_and_an_unknown_lead_are_refused(messaging: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, "some-lead", "   ")
    assert "body" in refusal(failed.value).fields
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, "no-such-lead")
    assert (failed.value.code(), refusal(failed.value).reason) == (grpc.StatusCode.NOT_FOUND,
                                                                   "LEAD_NOT_FOUND")


@pytest.mark.parametrize("code", [21211, 21614])
async def test_a_permanent_twilio_error_fails_the_message_once_without_retry_or_breaker(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble, code: int
) -> None:
    twilio.reject(LEAD_PHONE, code=code)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, lead.lead_id)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                              "PROVIDER_REJECTED")
    assert refused.metadata["provider_error_code"] == str(code)
    assert twilio.requests == 1
    listed = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    (stored,) = listed.messages
    assert (stored.status, stored.error_code) == (pb.MESSAGE_STATUS_FAILED, code)
    status = await messaging.GetProviderStatus(pb.GetProviderStatusRequest())
    assert (status.state, status.failure_count, status.rejected_count) == (
        pb.BREAKER_STATE_CLOSED, 0, 1)


async def test_an_unsubscribed_recipient_is_remembered_as_opted_out(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio.reject(LEAD_PHONE, code=21610)
    with pytest.raises(grpc.aio.AioRpcError):
        await send(messaging, lead.lead_id)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(messaging, lead.lead_id, "another")
    assert refusal(failed.value).reason == "RECIPIENT_OPTED_OUT"
    assert twilio.requests == 1


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_transient_twilio_errors_are_retried_and_the_text_is_sent_once(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble, status: int
) -> None:
    twilio.fail(status, times=2, retry_after=0)
    sent = await send(messaging, lead.lead_id)
    assert len(twilio.sent_to(LEAD_PHONE)) == 1
    assert sent.provider_message_id == twilio.sent[0].sid
    provider = await messaging.GetProviderStatus(pb.GetProviderStatusRequest())
    assert (provider.transient_failure_count, provider.sent_count) == (2, 1)


async def test_a_lost_answer_is_looked_up_at_twilio_not_sent_again(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio.lose_answer()
    sent = await send(messaging, lead.lead_id)
    (accepted,) = twilio.sent
    assert sent.provider_message_id == accepted.sid
    lookups = [r for r in twilio.received if r.method == "GET"]
    assert len(lookups) == 1 and lookups[0].query.get("To") == LEAD_PHONE


async def test_a_dropped_connection_before_twilio_acted_is_sent_after_the_lookup(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio.drop()
    await send(messaging, lead.lead_id)
    assert len(twilio.sent) == 1
    assert [r.method for r in twilio.received] == ["POST", "GET", "POST"]


async def test_the_history_pages_newest_first(messaging: Stub, lead: leads_pb2.Lead) -> None:
    bodies = [f"message {i}" for i in range(5)]
    for body in bodies:
        await send(messaging, lead.lead_id, body)
    first = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id,
                                                                page_size=3))
    rest = await messaging.ListMessages(pb.ListMessagesRequest(
        lead_id=lead.lead_id, page_size=3, page_token=first.next_page_token))
    assert [m.body for m in [*first.messages, *rest.messages]] == bodies[::-1]
    assert rest.next_page_token == ""


async def test_a_leads_number_once_found_is_not_asked_of_the_leads_service_again(
    messaging: Stub, lead: leads_pb2.Lead, leads_for_messaging: RunningService,
    twilio: TwilioDouble,
) -> None:
    await send(messaging, lead.lead_id, "First")
    await leads_for_messaging.stop(grace=0, drain=0)
    again = await send(messaging, lead.lead_id, "Second")
    assert again.to == LEAD_PHONE and again.status == pb.MESSAGE_STATUS_QUEUED
    assert [m.body for m in twilio.sent_to(LEAD_PHONE)] == ["First", "Second"]
    with pytest.raises(grpc.aio.AioRpcError) as failed:  # the leads service is down indeed
        await send(messaging, "00000000-0000-4000-8000-000000000000", "Third")
    assert (failed.value.code(), refusal(failed.value).reason) == (grpc.StatusCode.UNAVAILABLE,
                                                                   "LEADS_UNAVAILABLE")


async def test_a_lead_found_for_one_org_is_not_found_for_another(
    messaging_server: RunningService, lead: leads_pb2.Lead, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    await send(Stub(channel_for(messaging_server.target)), lead.lead_id, "For alice's org")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(Stub(channel_for(messaging_server.target, "carol@acme")), lead.lead_id,
                   "From another org")
    assert (failed.value.code(), refusal(failed.value).reason) == (grpc.StatusCode.NOT_FOUND,
                                                                   "LEAD_NOT_FOUND")
    assert [m.body for m in twilio.sent_to(LEAD_PHONE)] == ["For alice's org"]
