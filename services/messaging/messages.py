"""Translation between the messaging domain and the crm.messaging.v1 messages."""

from __future__ import annotations

from crm.messaging.v1 import messaging_pb2 as pb
from google.protobuf import duration_pb2

from services.messaging.breaker import BreakerSnapshot, BreakerState
from services.messaging.domain import (
    ConsentChanged,
    Direction,
    Message,
    MessageCreated,
    MessageEvent,
    MessageStatus,
)
from services.messaging.segments import Encoding
from services.messaging.service import Inbound, ProviderStateChanged
from services.messaging.templates import (
    MessageTemplate,
    TemplateDeleted,
    TemplateEvent,
    TemplateSaved,
)
from services.shared.events import EventRecord
from services.shared.paging import Page
from services.shared.protos import enum_numbers, timestamp

EVENT_TYPES = ("message.created", "message.status_changed", "recipient.opted_out",
               "recipient.opted_in", "provider.state_changed", "template.saved",
               "template.deleted")

_STATUS = enum_numbers(MessageStatus, pb.MessageStatus.DESCRIPTOR)
_DIRECTION = enum_numbers(Direction, pb.Direction.DESCRIPTOR)
_ENCODING = enum_numbers(Encoding, pb.Encoding.DESCRIPTOR)
_BREAKER = enum_numbers(BreakerState, pb.BreakerState.DESCRIPTOR)


def message(value: Message) -> pb.Message:
    return pb.Message(
        message_id=value.message_id,
        lead_id=value.lead_id,
        direction=_DIRECTION[value.direction],  # type: ignore[arg-type]
        to=value.to,
        body=value.body,
        segments=value.segments,
        encoding=_ENCODING[value.encoding],  # type: ignore[arg-type]
        status=_STATUS[value.status],  # type: ignore[arg-type]
        provider=value.provider,
        provider_message_id=value.provider_message_id,
        error_code=value.error_code,
        error_message=value.error_message,
        created_by=value.created_by,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        from_number=value.from_,
    )


def provider_status(provider: str, snapshot: BreakerSnapshot, max_segments: int
                    ) -> pb.ProviderStatus:
    return pb.ProviderStatus(
        max_segments=max_segments,
        provider=provider,
        state=_BREAKER[snapshot.state],  # type: ignore[arg-type]
        failure_count=snapshot.failure_count,
        fail_max=snapshot.fail_max,
        reset_timeout=duration_pb2.Duration(
            seconds=int(snapshot.reset_timeout),
            nanos=int((snapshot.reset_timeout % 1) * 1e9),
        ),
        opened_at=timestamp(snapshot.opened_at),
        closes_at=timestamp(snapshot.closes_at),
        sent_count=snapshot.successes,
        transient_failure_count=snapshot.failures,
        rejected_count=snapshot.rejections,
        short_circuited_count=snapshot.short_circuited,
    )


def inbound(value: Inbound) -> pb.ReceiveInboundMessageResponse:
    consent = pb.ReceiveInboundMessageResponse.CONSENT_UNCHANGED
    if value.opt_out is not None:
        consent = (pb.ReceiveInboundMessageResponse.CONSENT_OPTED_OUT if value.opt_out
                   else pb.ReceiveInboundMessageResponse.CONSENT_OPTED_IN)
    return pb.ReceiveInboundMessageResponse(message=message(value.message), consent=consent)


def messages_page(found: Page[Message]) -> pb.ListMessagesResponse:
    return pb.ListMessagesResponse(messages=[message(m) for m in found.items],
                                   next_page_token=found.next_token)


def templates_page(found: Page[MessageTemplate]) -> pb.ListMessageTemplatesResponse:
    return pb.ListMessageTemplatesResponse(templates=[template(t) for t in found.items],
                                           next_page_token=found.next_token)


def event_record(event: MessageEvent | ConsentChanged | ProviderStateChanged | TemplateEvent
                 ) -> EventRecord:
    """Any event of the messaging service, as its event log keeps it."""
    if isinstance(event, TemplateSaved | TemplateDeleted):
        return _template_record(event)
    if isinstance(event, ConsentChanged):
        return _consent_record(event)
    if isinstance(event, ProviderStateChanged):
        return _provider_record(event)
    kind = "message.created" if isinstance(event, MessageCreated) else "message.status_changed"
    value = event.message
    at = value.created_at if isinstance(event, MessageCreated) else value.updated_at
    payload = pb.Event(type=kind, actor=value.created_by, lead_id=value.lead_id,
                       message_id=value.message_id, message=message(value),
                       occurred_at=timestamp(at))
    return EventRecord(type=kind, actor=value.created_by, occurred_at=at,
                       payload=payload.SerializeToString(), lead_id=value.lead_id or None,
                       subject_id=value.message_id)


def template(value: MessageTemplate) -> pb.MessageTemplate:
    return pb.MessageTemplate(
        template_id=value.template_id, name=value.name, body=value.body,
        created_by=value.created_by, created_at=timestamp(value.created_at),
        updated_by=value.updated_by, updated_at=timestamp(value.updated_at),
        version=value.version,
    )


def _template_record(event: TemplateEvent) -> EventRecord:
    kind = "template.saved" if isinstance(event, TemplateSaved) else "template.deleted"
    value = event.template
    at = value.updated_at
    actor = value.updated_by
    payload = pb.Event(type=kind, actor=actor, occurred_at=timestamp(at),
                       template=template(value))
    return EventRecord(type=kind, actor=actor, occurred_at=at,
                       payload=payload.SerializeToString(), subject_id=value.template_id)


def _consent_record(event: ConsentChanged) -> EventRecord:
    recipient = event.recipient
    kind = "recipient.opted_out" if recipient.opted_out else "recipient.opted_in"
    payload = pb.Event(type=kind, actor=recipient.phone, lead_id=event.lead_id,
                       occurred_at=timestamp(recipient.changed_at),
                       consent=pb.Consent(phone=recipient.phone, opted_out=recipient.opted_out))
    return EventRecord(type=kind, actor=recipient.phone, occurred_at=recipient.changed_at,
                       payload=payload.SerializeToString(), lead_id=event.lead_id or None)


def _provider_record(event: ProviderStateChanged) -> EventRecord:
    kind = "provider.state_changed"
    payload = pb.Event(type=kind, actor=event.actor, occurred_at=timestamp(event.at),
                       provider=provider_status(event.provider, event.snapshot,
                                                event.max_segments))
    return EventRecord(type=kind, actor=event.actor, occurred_at=event.at,
                       payload=payload.SerializeToString())
