"""The gRPC entrypoint of the messaging service: proto in → use case → proto out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging import messages as convert
from services.messaging.adapters import SqlMessagingUnitOfWork
from services.messaging.breaker import ProviderBreaker
from services.messaging.domain import PROVIDER_STATUSES, Message, MessageNotFound, consent_keyword
from services.messaging.providers import SmsProvider
from services.messaging.sending import SmsSender
from services.shared import paging, subscribe, validation
from services.shared.context import current_call
from services.shared.db import utcnow
from services.shared.errors import InvalidArgument
from services.shared.events import Filter
from services.shared.idempotency import idempotent, reads
from services.shared.phones import to_e164
from services.shared.runtime import ServiceRuntime

Context: TypeAlias = grpc.aio.ServicerContext
UoW = SqlMessagingUnitOfWork
MAX_INBOUND_BODY = 1600


class MessagingApi(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, runtime: ServiceRuntime, *, sender: SmsSender, provider: SmsProvider,
                 breaker: ProviderBreaker) -> None:
        self.runtime = runtime
        self.sender = sender
        self.provider = provider
        self.breaker = breaker
        self.region = runtime.settings.default_region

    async def SendSms(self, request: pb.SendSmsRequest, context: Context) -> pb.Message:
        return await self.sender.send(request, context)

    SendSms.__idempotent__ = True  # type: ignore[attr-defined]

    @reads
    async def GetMessage(self, request: pb.GetMessageRequest, context: Context, uow: UoW
                         ) -> pb.Message:
        message_id = validation.identifier(request.message_id, "message_id")
        return convert.message(await uow.messages.get(message_id))

    @reads
    async def ListMessages(self, request: pb.ListMessagesRequest, context: Context, uow: UoW
                           ) -> pb.ListMessagesResponse:
        validation.identifier(request.lead_id, "lead_id")
        size = paging.page_size(request.page_size)
        query = {"list": "messages", "lead_id": request.lead_id}
        after = paging.decode_time_and_id(request.page_token, query)
        found = await uow.messages.history(request.lead_id, list(after) if after else None,
                                           size + 1)
        page = found[:size]
        token = ""
        if len(found) > size:
            token = paging.encode_time_and_id(page[-1].created_at, page[-1].message_id, query)
        return pb.ListMessagesResponse(messages=[convert.message(m) for m in page],
                                       next_page_token=token)

    async def GetProviderStatus(self, request: pb.GetProviderStatusRequest, context: Context
                                ) -> pb.ProviderStatus:
        return convert.provider_status(self.provider.name, self.breaker.snapshot())

    @idempotent
    async def ReceiveInboundMessage(
        self, request: pb.ReceiveInboundMessageRequest, context: Context, uow: UoW
    ) -> pb.ReceiveInboundMessageResponse:
        sender = to_e164(getattr(request, "from"), self.region, field="from")
        validation.identifier(request.provider_message_id, "provider_message_id")
        validation.text(request.body, "body", max_length=MAX_INBOUND_BODY)
        validation.text(request.to, "to", max_length=32)
        keyword = consent_keyword(request.body)
        consent = pb.ReceiveInboundMessageResponse.UNCHANGED
        if keyword is not None:
            consent = (pb.ReceiveInboundMessageResponse.OPTED_OUT if keyword
                       else pb.ReceiveInboundMessageResponse.OPTED_IN)
        known = await uow.messages.by_provider_id(request.provider_message_id)
        if known is not None:  # the provider delivered the same text again
            return pb.ReceiveInboundMessageResponse(message=convert.message(known), consent=consent)
        now = utcnow()
        lead_id = await uow.messages.lead_of(sender)
        message = Message.inbound(
            message_id=_new_id(), lead_id=lead_id, from_=sender, to=request.to, body=request.body,
            provider=self.provider.name, provider_message_id=request.provider_message_id,
            actor=current_call().principal, now=now,
        )
        await uow.messages.add(message)
        if keyword is not None:
            recipient = await uow.recipients.get(sender, now=now)
            if recipient.answer(request.body.strip().upper()[:16], opt_out=keyword,
                                lead_id=lead_id, now=now):
                await uow.recipients.save(recipient)
        return pb.ReceiveInboundMessageResponse(message=convert.message(message), consent=consent)

    @idempotent
    async def RecordDeliveryStatus(
        self, request: pb.RecordDeliveryStatusRequest, context: Context, uow: UoW
    ) -> pb.Message:
        status = PROVIDER_STATUSES.get(request.provider_status.strip().lower())
        if status is None:
            raise InvalidArgument.field("provider_status",
                                        f"unknown status {request.provider_status!r}")
        validation.identifier(request.message_id, "message_id", required=False)
        validation.identifier(request.provider_message_id, "provider_message_id", required=False)
        validation.text(request.error_message, "error_message", max_length=500)
        if request.message_id:
            message = await uow.messages.get(request.message_id, for_update=True)
        elif request.provider_message_id:
            found = await uow.messages.by_provider_id(request.provider_message_id,
                                                      for_update=True)
            if found is None:
                raise MessageNotFound(request.provider_message_id)
            message = found
        else:
            raise InvalidArgument.field("provider_message_id", "is required")
        now = utcnow()
        if request.provider_message_id and not message.provider_message_id:
            # The callback beat the sender's own record of the provider's answer.
            message.accepted(request.provider_message_id, status, now)
        message.advance(status, now=now, error_code=request.error_code,
                        error_message=request.error_message)
        await uow.messages.save(message)
        return convert.message(message)

    # Events go out as bytes made once for every subscriber (see shared.subscribe).
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Event | bytes]:
        where = Filter.of(lead_ids=request.lead_ids, types=request.types,
                          known_types=convert.EVENT_TYPES)
        async for event in subscribe.stream(self.runtime, context, pb.Event,
                                            request.after_cursor, where):
            yield event



def _new_id() -> str:
    return str(uuid.uuid4())
