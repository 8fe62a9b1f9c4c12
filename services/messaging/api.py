"""The gRPC entrypoint of the messaging service: proto in → command → result → proto out."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging import messages as convert
from services.messaging import service
from services.messaging.adapters import SqlMessagingUnitOfWork
from services.messaging.sending import SmsSender
from services.shared import subscribe
from services.shared.entrypoint import Entrypoint, caller, idempotent, key
from services.shared.events import Filter
from services.shared.paging import PageRequest
from services.shared.uow import Units

Context: TypeAlias = grpc.aio.ServicerContext
UoW = SqlMessagingUnitOfWork


class MessagingApi(Entrypoint[UoW], messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, units: Units[UoW], *, sender: SmsSender, leads: service.Leads,
                 region: str, heartbeat_seconds: float) -> None:
        super().__init__(units)
        self.sender = sender
        self.leads = leads
        self.region = region
        self.heartbeat_seconds = heartbeat_seconds

    @idempotent
    async def SendSms(self, request: pb.SendSmsRequest, context: Context) -> pb.Message:
        command = service.SendSms(lead_id=request.lead_id, body=request.body, caller=caller(),
                                  key=key(request))
        # Several transactions, each retried on its own: not one unit of work.
        sent = await service.send_sms(command, self.units.answering(convert.message),
                                      self.sender, self.leads,
                                      time_remaining=context.time_remaining())
        return await self.answer_result(context, sent, convert.message)

    async def GetMessage(self, request: pb.GetMessageRequest, context: Context) -> pb.Message:
        query = service.GetMessage(message_id=request.message_id, caller=caller())
        return await self.run_query(context, service.get_message, query, convert.message)

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Context
                           ) -> pb.ListMessagesResponse:
        query = service.ListMessages(lead_id=request.lead_id, caller=caller(),
                                     page=PageRequest(request.page_size, request.page_token))
        return await self.run_query(context, service.list_messages, query,
                                    convert.messages_page)

    async def GetProviderStatus(self, request: pb.GetProviderStatusRequest, context: Context
                                ) -> pb.ProviderStatus:
        return convert.provider_status(self.sender.provider.name, self.sender.breaker.snapshot(),
                                       self.sender.sms.max_segments)

    async def ListMessageTemplates(self, request: pb.ListMessageTemplatesRequest,
                                   context: Context) -> pb.ListMessageTemplatesResponse:
        query = service.ListTemplates(page=PageRequest(request.page_size, request.page_token),
                                      caller=caller())
        return await self.run_query(context, service.list_templates, query,
                                    convert.templates_page)

    @idempotent
    async def SaveMessageTemplate(self, request: pb.SaveMessageTemplateRequest,
                                  context: Context) -> pb.MessageTemplate:
        command = service.SaveTemplate(template_id=request.template_id, name=request.name,
                                       body=request.body, caller=caller(), key=key(request))
        return await self.run_command(context, service.save_template, command,
                                      convert.template)

    @idempotent
    async def DeleteMessageTemplate(self, request: pb.DeleteMessageTemplateRequest,
                                    context: Context) -> pb.MessageTemplate:
        command = service.DeleteTemplate(template_id=request.template_id, caller=caller(),
                                         key=key(request))
        return await self.run_command(context, service.delete_template, command,
                                      convert.template)

    @idempotent
    async def ReceiveInboundMessage(
        self, request: pb.ReceiveInboundMessageRequest, context: Context
    ) -> pb.ReceiveInboundMessageResponse:
        # A text is the org's that owns the number it was sent to: a STOP opts
        # its sender out there only (services.messaging.numbers).
        org = self.sender.sms.numbers.org_texted(request.to, self.region)
        command = service.ReceiveInbound(
            from_number=request.from_number, to=request.to, body=request.body,
            provider_message_id=request.provider_message_id,
            caller=dataclasses.replace(caller(), org=org), key=key(request),
        )
        receive = functools.partial(service.receive_inbound, region=self.region,
                                    provider=self.sender.provider.name)
        return await self.run_command(context, receive, command, convert.inbound)

    @idempotent
    async def RecordDeliveryStatus(self, request: pb.RecordDeliveryStatusRequest,
                                   context: Context) -> pb.Message:
        command = service.RecordDeliveryStatus(
            provider_status=request.provider_status, message_id=request.message_id,
            provider_message_id=request.provider_message_id, error_code=request.error_code,
            error_message=request.error_message, caller=caller(), key=key(request),
        )
        return await self.run_command(context, service.record_delivery_status, command,
                                      convert.message)

    # Events go out as bytes made once for every subscriber (see shared.subscribe).
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Event | bytes]:
        where = Filter.of(lead_ids=request.lead_ids, types=request.types,
                          known_types=convert.EVENT_TYPES)
        async for event in subscribe.stream(self.units.storage, context, pb.Event,
                                            request.after_cursor, where,
                                            heartbeat=self.heartbeat_seconds):
            yield event

    async def recover_abandoned(self, *, older_than: float = service.ABANDON_AFTER) -> int:
        """Finish the sends nobody retried (the recovery sweep's round)."""
        return await service.recover_abandoned(self.units.answering(convert.message),
                                               self.sender, older_than=older_than)
