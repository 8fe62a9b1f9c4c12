"""Page tokens of messaging's lists are tamper-proof, on SQLite and PostgreSQL."""

from __future__ import annotations

from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.integration.messaging.conftest import send
from tests.support.forgery import assert_every_forgery_refused

Stub = messaging_pb2_grpc.MessagingServiceStub


async def test_forged_tokens_are_refused_on_list_messages(
    messaging: Stub, lead: leads_pb2.Lead,
) -> None:
    for n in range(3):
        await send(messaging, lead.lead_id, f"Hello {n}")
    genuine = (await messaging.ListMessages(pb.ListMessagesRequest(
        lead_id=lead.lead_id, page_size=1))).next_page_token
    await assert_every_forgery_refused(
        messaging.ListMessages,
        lambda token: pb.ListMessagesRequest(lead_id=lead.lead_id, page_token=token),
        {"list": "messages", "lead_id": lead.lead_id}, time_ordered=True, genuine=genuine)


async def test_forged_tokens_are_refused_on_list_message_templates(messaging: Stub) -> None:
    for n in range(3):
        await messaging.SaveMessageTemplate(
            pb.SaveMessageTemplateRequest(name=f"Template {n}", body=f"Hello {n}"),
            metadata=idempotency(new_key()))
    genuine = (await messaging.ListMessageTemplates(pb.ListMessageTemplatesRequest(
        page_size=1))).next_page_token
    await assert_every_forgery_refused(
        messaging.ListMessageTemplates,
        lambda token: pb.ListMessageTemplatesRequest(page_token=token),
        {"list": "message_templates"}, time_ordered=False, genuine=genuine)
