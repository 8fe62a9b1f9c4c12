"""Twilio's webhooks: only validly signed ones reach the messaging service, and only once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from crm.messaging.v1 import messaging_pb2
from google.protobuf.message import Message
from twilio.request_validator import RequestValidator

from gateway.app import RunningGateway
from services.shared.server import RunningService
from tests.integration.gateway.conftest import (
    PUBLIC_URL,
    TWILIO_TOKEN,
    Client,
    StartGateway,
    spec_of,
)
from tests.integration.gateway.support import (
    Answer,
    FakeUpstream,
    create_lead,
    new_key,
    request,
)
from tests.support.ports import free_port
from tests.support.servers import TOKENS, start_in_process
from tests.support.twilio_double import TwilioDouble

STATUS = {"MessageSid": "SM0123456789abcdef0123456789abcdef", "MessageStatus": "delivered",
          "SmsSid": "SM0123456789abcdef0123456789abcdef", "SmsStatus": "delivered",
          "AccountSid": "AC" + "a" * 32, "To": "+14155550123", "From": "+15005550006",
          "ApiVersion": "2010-04-01"}
INBOUND = {"MessageSid": "SMfedcba9876543210fedcba9876543210", "From": "+14155550123",
           "To": "+15005550006", "Body": "STOP", "NumMedia": "0", "AccountSid": "AC" + "a" * 32}


def signed(path: str, form: dict[str, str], token: str = TWILIO_TOKEN,
           public_url: str = PUBLIC_URL) -> dict[str, str]:
    signature = RequestValidator(token).compute_signature(public_url + path, form)
    return {"X-Twilio-Signature": signature}


async def post(client: Client, gateway: RunningGateway, path: str, form: dict[str, str],
               headers: dict[str, str]) -> Answer:
    return await request(client(gateway, who=None), "POST", path, data=form, headers=headers)


@pytest.fixture
def recording(fake: FakeUpstream) -> FakeUpstream:
    async def record_status(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        return messaging_pb2.Message(message_id="m1", status=messaging_pb2.MESSAGE_STATUS_DELIVERED)

    async def receive(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        return messaging_pb2.ReceiveInboundMessageResponse(
            consent=messaging_pb2.ReceiveInboundMessageResponse.CONSENT_OPTED_OUT)

    fake.script["messaging", "RecordDeliveryStatus"] = record_status
    fake.script["messaging", "ReceiveInboundMessage"] = receive
    return fake


async def test_a_signed_status_callback_is_recorded_with_the_gateways_own_token(
    fake_gateway: RunningGateway, recording: FakeUpstream, client: Client,
) -> None:
    path = "/webhooks/twilio/status"
    form = {**STATUS, "MessageStatus": "undelivered", "ErrorCode": "30003",
            "ErrorMessage": "Unreachable destination handset"}
    answer = await post(client, fake_gateway, path, form, signed(path, form))
    assert (answer.status, answer.body) == (204, None)
    (call,) = recording.calls("RecordDeliveryStatus")
    forwarded: Any = call.request
    assert (forwarded.provider_message_id, forwarded.provider_status, forwarded.error_code,
            forwarded.error_message) == (STATUS["MessageSid"], "undelivered", 30003,
                                         "Unreachable destination handset")
    assert call.metadata["authorization"] == f"Bearer {TOKENS['gateway']}"
    assert call.metadata["idempotency-key"].startswith("twilio-sha256:")


async def test_a_signed_inbound_text_is_received_and_answered_with_empty_twiml(
    fake_gateway: RunningGateway, recording: FakeUpstream, client: Client,
) -> None:
    path = "/webhooks/twilio/inbound"
    answer = await post(client, fake_gateway, path, INBOUND, signed(path, INBOUND))
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/xml")
    assert answer.body.endswith("<Response/>")
    (call,) = recording.calls("ReceiveInboundMessage")
    received: Any = call.request
    assert (received.from_number, received.to, received.body,
            received.provider_message_id) == ("+14155550123", "+15005550006", "STOP",
                                              INBOUND["MessageSid"])


async def test_twilios_retries_carry_one_idempotency_key(
    fake_gateway: RunningGateway, recording: FakeUpstream, client: Client,
) -> None:
    path = "/webhooks/twilio/status"
    for _ in range(2):
        assert (await post(client, fake_gateway, path, STATUS, signed(path, STATUS))).status == 204
    other = {**STATUS, "MessageStatus": "sent"}
    await post(client, fake_gateway, path, other, signed(path, other))
    token = {**signed(path, STATUS), "I-Twilio-Idempotency-Token": "idem-4b1d"}
    await post(client, fake_gateway, path, STATUS, token)
    keys = [c.metadata["idempotency-key"] for c in recording.calls("RecordDeliveryStatus")]
    assert keys[0] == keys[1] != keys[2]
    assert keys[3] == "twilio:idem-4b1d"


async def test_forged_or_unsigned_webhooks_are_403_and_never_forwarded(
    fake_gateway: RunningGateway, recording: FakeUpstream, client: Client,
) -> None:
    for path, form in (("/webhooks/twilio/status", STATUS),
                       ("/webhooks/twilio/inbound", INBOUND)):
        forged = await post(client, fake_gateway, path, form,
                            signed(path, form, token="forged-" + TWILIO_TOKEN))
        assert (forged.status, forged.reason, forged.domain) == (
            403, "TWILIO_SIGNATURE_INVALID", "gateway")
        unsigned = await post(client, fake_gateway, path, form, {})
        assert unsigned.status == 403
        tampered = await post(client, fake_gateway, path, {**form, "Body": "START"},
                              signed(path, form))
        assert tampered.status == 403
        elsewhere = await post(client, fake_gateway, path, form,
                               signed(path, form, public_url="https://attacker.example"))
        assert elsewhere.status == 403
    assert recording.received == []


async def test_without_twilio_auth_token_every_webhook_is_refused(
    start_gateway: StartGateway, recording: FakeUpstream, client: Client,
) -> None:
    gateway = await start_gateway(CRM_MESSAGING_TARGET=recording.target, TWILIO_AUTH_TOKEN="")
    path = "/webhooks/twilio/status"
    answer = await post(client, gateway, path, STATUS, signed(path, STATUS))
    assert (answer.status, answer.reason) == (403, "TWILIO_WEBHOOKS_DISABLED")
    assert recording.received == []


async def test_a_messaging_outage_is_503_so_twilio_retries(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway()  # messaging is down
    path = "/webhooks/twilio/status"
    answer = await post(client, gateway, path, STATUS, signed(path, STATUS))
    assert (answer.status, answer.reason) == (503, "UPSTREAM_UNAVAILABLE")


async def test_an_oversized_webhook_is_413_and_not_forwarded(
    fake_gateway: RunningGateway, recording: FakeUpstream, client: Client,
) -> None:
    path = "/webhooks/twilio/inbound"
    form = {**INBOUND, "Body": "x" * (70 * 1024)}
    answer = await post(client, fake_gateway, path, form, signed(path, form))
    assert (answer.status, answer.reason) == (413, "BODY_TOO_LARGE")
    assert recording.received == []


# -- with the real messaging service and Twilio played by the local double ----------

SID, TOKEN, FROM = "AC" + "b" * 32, "twilio-auth-token-for-gateway-tests", "+15005550006"
LEAD_PHONE = "+14155550177"


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioDouble]:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as double:
        yield double


@pytest.fixture
async def twilio_gateway(
    start_gateway: StartGateway, messaging_env: dict[str, str], leads_server: RunningService,
    twilio: TwilioDouble,
) -> AsyncIterator[RunningGateway]:
    """Messaging sends through the double, which calls back the gateway at its public URL."""
    spec = spec_of("messaging")
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    messaging = await start_in_process(spec, {
        **messaging_env, "CRM_PUBLIC_URL": public_url, "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": FROM,
        "TWILIO_API_BASE_URL": twilio.base_url, "CRM_SMS_RETRY_BASE_SECONDS": "0.01",
    })
    gateway = await start_gateway(port=port, CRM_PUBLIC_URL=public_url, TWILIO_AUTH_TOKEN=TOKEN,
                                  CRM_LEADS_TARGET=leads_server.target,
                                  CRM_MESSAGING_TARGET=messaging.target)
    yield gateway
    await gateway.stop()
    await messaging.stop(grace=1, drain=0)


async def test_twilios_callbacks_reach_messaging_and_stop_opts_the_lead_out(
    twilio_gateway: RunningGateway, twilio: TwilioDouble, client: Client,
) -> None:
    api = client(twilio_gateway)
    lead = await create_lead(api, phone=LEAD_PHONE)
    sent = await request(api, "POST", "/v1/messages", key=new_key(),
                         json_body={"leadId": lead["leadId"], "body": "See you at 3pm"})
    assert sent.status == 200, sent.body
    assert sent.body["provider"] == "twilio"
    (texted,) = twilio.sent_to(LEAD_PHONE)
    forged = await twilio.deliver(texted.sid, "delivered", forged=True)
    assert forged is not None and forged.status == 403
    delivered = await twilio.deliver(texted.sid, "delivered")
    assert delivered is not None and delivered.status == 204
    message = await request(api, "GET", f"/v1/messages/{sent.body['messageId']}")
    assert message.body["status"] == "MESSAGE_STATUS_DELIVERED"
    stop = await twilio.send_inbound(f"{twilio_gateway.url}/webhooks/twilio/inbound",
                                     from_=LEAD_PHONE, to=FROM, body="STOP")
    assert (stop.status, stop.body.endswith("<Response/>")) == (200, True)
    refused = await request(api, "POST", "/v1/messages", key=new_key(),
                            json_body={"leadId": lead["leadId"], "body": "Still there?"})
    assert (refused.status, refused.reason) == (409, "RECIPIENT_OPTED_OUT")
    assert len(twilio.sent_to(LEAD_PHONE)) == 1
