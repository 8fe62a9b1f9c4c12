"""Twilio's callbacks reach the messaging service only from services: a user calling
ReceiveInboundMessage or RecordDeliveryStatus directly is PERMISSION_DENIED."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.messaging.conftest import FROM, LEAD_PHONE, send
from tests.support.rpc import refusal

Stub = messaging_pb2_grpc.MessagingServiceStub


def stop_from(phone: str) -> pb.ReceiveInboundMessageRequest:
    return pb.ReceiveInboundMessageRequest(from_number=phone, to=FROM, body="STOP",
                                           provider_message_id="SM" + new_key())


async def test_a_user_cannot_forge_a_stop_or_a_delivery_report(
    messaging: Stub, lead: leads_pb2.Lead,
) -> None:
    sent = await send(messaging, lead.lead_id)
    for call, request in (
        (messaging.ReceiveInboundMessage, stop_from(LEAD_PHONE)),
        (messaging.RecordDeliveryStatus, pb.RecordDeliveryStatusRequest(
            provider_message_id=sent.provider_message_id, provider_status="failed")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call(request, metadata=idempotency(new_key()))
        refused = refusal(denied.value)
        assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                                  "ROLE_FORBIDS")
        assert refused.metadata == {"role": "agent", "required_role": "service"}
    # Nothing happened: the lead is still texted, the message still as it was.
    again = await send(messaging, lead.lead_id, "still reachable")
    assert again.status != pb.MESSAGE_STATUS_FAILED
    stored = await messaging.GetMessage(pb.GetMessageRequest(message_id=sent.message_id))
    assert stored.status == sent.status


@pytest.mark.parametrize("who", ["gateway", "bookings"])
async def test_service_principals_may_call_them(
    messaging_server: RunningService, channel_for: Callable[..., grpc.aio.Channel],
    lead: leads_pb2.Lead, who: str,
) -> None:
    service = Stub(channel_for(messaging_server.target, who))
    answered = await service.ReceiveInboundMessage(stop_from(LEAD_PHONE),
                                                   metadata=idempotency(new_key()))
    assert answered.consent == pb.ReceiveInboundMessageResponse.CONSENT_OPTED_OUT


async def test_crm_service_principals_names_the_services(
    start_messaging: Callable[..., object], channel_for: Callable[..., grpc.aio.Channel],
    lead: leads_pb2.Lead,
) -> None:
    running: RunningService = await start_messaging(  # type: ignore[misc]
        CRM_SERVICE_PRINCIPALS="gateway,bob")
    as_bob = Stub(channel_for(running.target, "bob"))
    as_bookings = Stub(channel_for(running.target, "bookings"))
    answered = await as_bob.ReceiveInboundMessage(stop_from(LEAD_PHONE),
                                                  metadata=idempotency(new_key()))
    assert answered.consent == pb.ReceiveInboundMessageResponse.CONSENT_OPTED_OUT
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await as_bookings.ReceiveInboundMessage(stop_from(LEAD_PHONE),
                                                metadata=idempotency(new_key()))
    assert refusal(denied.value).reason == "ROLE_FORBIDS"
