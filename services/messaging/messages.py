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
    MessageStatusChanged,
)
from services.messaging.segments import Encoding
from services.shared.events import EventRecord
from services.shared.protos import timestamp

EVENT_TYPES = ("message.created", "message.status_changed", "recipient.opted_out",
               "recipient.opted_in", "provider.state_changed")

_STATUS = {s: pb.MessageStatus.Value(s.name) for s in MessageStatus}
_DIRECTION = {d: pb.Direction.Value(d.name) for d in Direction}
_ENCODING = {Encoding.GSM_7: pb.GSM_7, Encoding.UCS_2: pb.UCS_2}
_BREAKER = {BreakerState.CLOSED: pb.CLOSED, BreakerState.OPEN: pb.OPEN,
            BreakerState.HALF_OPEN: pb.HALF_OPEN}


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
        **{"from": value.from_},
    )


def provider_status(provider: str, snapshot: BreakerSnapshot) -> pb.ProviderStatus:
    return pb.ProviderStatus(
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


def event_record(event: MessageEvent) -> EventRecord:
    kind = "message.created" if isinstance(event, MessageCreated) else "message.status_changed"
    assert isinstance(event, MessageCreated | MessageStatusChanged)
    value = event.message
    at = value.created_at if isinstance(event, MessageCreated) else value.updated_at
    payload = pb.Event(type=kind, actor=value.created_by, lead_id=value.lead_id,
                       message_id=value.message_id, message=message(value),
                       occurred_at=timestamp(at))
    return EventRecord(type=kind, actor=value.created_by, occurred_at=at,
                       payload=payload.SerializeToString(), lead_id=value.lead_id or None,
                       subject_id=value.message_id)


def consent_record(event: ConsentChanged) -> EventRecord:
    recipient = event.recipient
    kind = "recipient.opted_out" if recipient.opted_out else "recipient.opted_in"
    payload = pb.Event(type=kind, actor=recipient.phone, lead_id=event.lead_id,
                       occurred_at=timestamp(recipient.changed_at),
                       consent=pb.Consent(phone=recipient.phone, opted_out=recipient.opted_out))
    return EventRecord(type=kind, actor=recipient.phone, occurred_at=recipient.changed_at,
                       payload=payload.SerializeToString(), lead_id=event.lead_id or None)


def provider_record(status: pb.ProviderStatus, actor: str) -> EventRecord:
    from services.shared.db import utcnow

    at = utcnow()
    payload = pb.Event(type="provider.state_changed", actor=actor, occurred_at=timestamp(at),
                       provider=status)
    return EventRecord(type="provider.state_changed", actor=actor, occurred_at=at,
                       payload=payload.SerializeToString())
