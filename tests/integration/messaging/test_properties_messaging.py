"""Any input to the messaging RPCs: a success that says what it cost, or a proper refusal."""

from __future__ import annotations

import grpc
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from services.messaging.segments import measure
from services.shared.clients import idempotency, new_key
from tests.integration.test_properties import EXAMPLES, TEXT, proper
from tests.support.twilio_double import TwilioDouble

Stub = messaging_pb2_grpc.MessagingServiceStub
BODIES = st.one_of(TEXT, st.text(alphabet="a€[😀ç\n", max_size=400))


@given(body=BODIES, known_lead=st.booleans())
@EXAMPLES
async def test_send_sms_measures_what_it_sends_and_refuses_what_it_cannot(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble, body: str, known_lead: bool
) -> None:
    lead_id = lead.lead_id if known_lead else "not-a-lead"
    sent_before = len(twilio.sent)
    try:
        sent = await messaging.SendSms(pb.SendSmsRequest(lead_id=lead_id, body=body),
                                       metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"body", "lead_id"})
        assert len(twilio.sent) == sent_before
        return
    cost = measure(body)
    assert (sent.segments, pb.Encoding.Name(sent.encoding)) == (cost.segments,
                                                                f"ENCODING_{cost.encoding}")
    assert twilio.sent[-1].body == body


@given(sender=TEXT, body=TEXT, sid=TEXT)
@EXAMPLES
async def test_inbound_texts_of_any_shape_are_recorded_or_refused_cleanly(
    webhooks: Stub, sender: str, body: str, sid: str
) -> None:
    request = pb.ReceiveInboundMessageRequest(from_number=sender, body=body,
                                              provider_message_id=sid)
    try:
        answered = await webhooks.ReceiveInboundMessage(request, metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"from_number", "body", "provider_message_id", "to"})
        return
    assert answered.message.body == body


@given(status=TEXT, sid=TEXT, message_id=TEXT, code=st.integers(-(2**31), 2**31 - 1))
@EXAMPLES
async def test_delivery_reports_of_any_shape_are_applied_or_refused_cleanly(
    webhooks: Stub, status: str, sid: str, message_id: str, code: int
) -> None:
    try:
        await webhooks.RecordDeliveryStatus(
            pb.RecordDeliveryStatusRequest(provider_status=status, provider_message_id=sid,
                                           message_id=message_id, error_code=code),
            metadata=idempotency(new_key()))
    except grpc.aio.AioRpcError as error:
        proper(error, {"provider_status", "provider_message_id", "message_id", "error_message"})
