"""Text messages and consent, with no IO.

An outbound message is recorded *before* it is handed to the provider (the
intent), so a crash can never leave a text sent but unknown:

    handoff:  in_flight ──accepted──▶ accepted
                  │  └──refused (permanent)──▶ rejected
                  └──no answer / transient──▶ uncertain (maybe sent) or none (not sent)

Its status then follows Twilio's and never moves backwards, whatever order the
provider's callbacks arrive in:

    queued → sending → sent → delivered | undelivered | failed

A recipient who texts STOP (or STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT) is not
texted again until they text START (or YES, UNSTOP).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from crm.messaging.v1 import messaging_pb2

from services.messaging.segments import Encoding, Measure, measure
from services.shared import errors, rules, validation

MIN_SEGMENTS, MAX_SEGMENTS = 1, 10
# Twilio refuses longer bodies whatever they cost in segments.
MAX_BODY_CHARACTERS = rules.of(messaging_pb2.SendSmsRequest, "body").max_length

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    RECEIVED = "received"


# How far along Twilio's order each status is: a message never moves back.
RANK = {
    MessageStatus.QUEUED: 1,
    MessageStatus.SENDING: 2,
    MessageStatus.SENT: 3,
    MessageStatus.DELIVERED: 4,
    MessageStatus.UNDELIVERED: 4,
    MessageStatus.FAILED: 4,
    MessageStatus.RECEIVED: 4,
}

# Twilio's MessageStatus values and what they mean here.
PROVIDER_STATUSES = {
    "accepted": MessageStatus.QUEUED,
    "scheduled": MessageStatus.QUEUED,
    "queued": MessageStatus.QUEUED,
    "sending": MessageStatus.SENDING,
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.DELIVERED,
    "undelivered": MessageStatus.UNDELIVERED,
    "failed": MessageStatus.FAILED,
    "canceled": MessageStatus.FAILED,
    "receiving": MessageStatus.RECEIVED,
    "received": MessageStatus.RECEIVED,
}


class Handoff(StrEnum):
    """How far an outbound message got toward the provider."""

    IN_FLIGHT = "in_flight"  # being handed over: after a crash, it may have been accepted
    UNCERTAIN = "uncertain"  # an attempt ended without an answer: it may have been accepted
    NONE = "none"  # every attempt was refused: it was not accepted
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RECEIVED = "received"  # inbound: nothing to hand over

    @property
    def maybe_sent(self) -> bool:
        return self in (Handoff.IN_FLIGHT, Handoff.UNCERTAIN)


class MessageNotFound(errors.NotFound):
    reason = "MESSAGE_NOT_FOUND"

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id!r} does not exist",
                         metadata={"message_id": message_id})


class RecipientOptedOut(errors.FailedPrecondition):
    reason = "RECIPIENT_OPTED_OUT"

    def __init__(self, phone: str, lead_id: str) -> None:
        super().__init__(
            f"lead {lead_id!r} texted STOP from {phone} and is not texted until they text START",
            metadata={"lead_id": lead_id, "phone": phone},
        )


class MessageTooLong(errors.InvalidArgument):
    reason = "MESSAGE_TOO_LONG"

    def __init__(self, cost: Measure, max_segments: int) -> None:
        name = "GSM-7" if cost.encoding is Encoding.GSM_7 else "UCS-2"
        single, part = (160, 153) if cost.encoding is Encoding.GSM_7 else (70, 67)
        capacity = single if max_segments == 1 else part * max_segments
        description = (
            f"{cost.units} {name} characters make {cost.segments} segments; the limit is "
            f"{max_segments} segment{'s' if max_segments > 1 else ''} "
            f"({capacity} {name} characters)"
        )
        super().__init__(
            f"body: {description}",
            violations=[errors.FieldViolation("body", description)],
            metadata={"length": str(cost.units), "encoding": cost.encoding.value,
                      "segments": str(cost.segments), "max_segments": str(max_segments)},
        )


def check_body(body: str, max_segments: int) -> Measure:
    """What the body costs, or the refusal that says why it cannot be sent."""
    if not body.strip():
        raise errors.InvalidArgument.field("body", "is required")
    validation.text(body, "body", max_length=MAX_BODY_CHARACTERS * 2)
    cost = measure(body)
    if cost.segments > max_segments or len(body) > MAX_BODY_CHARACTERS:
        raise MessageTooLong(cost, max_segments)
    return cost


def consent_keyword(body: str) -> bool | None:
    """True for an opt-out keyword, False for an opt-in one, else None.

    The whole text must be the keyword, in any case, with surrounding spaces
    and trailing punctuation ignored ("Stop.", " stop ").
    """
    word = body.strip().rstrip(".!").strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return True
    if word in OPT_IN_KEYWORDS:
        return False
    return None


@dataclass(frozen=True)
class MessageCreated:
    message: Message


@dataclass(frozen=True)
class MessageStatusChanged:
    message: Message
    previous: MessageStatus


@dataclass(frozen=True)
class ConsentChanged:
    recipient: Recipient
    lead_id: str


MessageEvent = MessageCreated | MessageStatusChanged


@dataclass
class Message:
    message_id: str
    lead_id: str
    direction: Direction
    to: str
    from_: str
    body: str
    segments: int
    encoding: Encoding
    status: MessageStatus
    provider: str
    provider_message_id: str
    error_code: int
    error_message: str
    handoff: Handoff
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int = 1
    events: list[MessageEvent] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def outbound(
        cls, *, message_id: str, lead_id: str, to: str, from_: str, body: str, cost: Measure,
        provider: str, actor: str, now: datetime,
    ) -> Message:
        """The intent to text a lead, recorded before the provider hears of it."""
        message = cls(message_id, lead_id, Direction.OUTBOUND, to, from_, body, cost.segments,
                      cost.encoding, MessageStatus.QUEUED, provider, "", 0, "",
                      Handoff.IN_FLIGHT, actor, now, now)
        message.events.append(MessageCreated(message.snapshot()))
        return message

    @classmethod
    def inbound(
        cls, *, message_id: str, lead_id: str, from_: str, to: str, body: str,
        provider: str, provider_message_id: str, actor: str, now: datetime,
    ) -> Message:
        cost = measure(body)
        message = cls(message_id, lead_id, Direction.INBOUND, to, from_, body, cost.segments,
                      cost.encoding, MessageStatus.RECEIVED, provider, provider_message_id, 0,
                      "", Handoff.RECEIVED, actor, now, now)
        message.events.append(MessageCreated(message.snapshot()))
        return message

    def handing_over(self, now: datetime) -> None:
        """Another attempt at the provider begins (after a retry took the call over)."""
        self.handoff = Handoff.IN_FLIGHT
        self._touch(now)

    def not_handed_over(self, *, maybe_sent: bool, now: datetime) -> None:
        """The attempts ended without the provider accepting, for now."""
        self.handoff = Handoff.UNCERTAIN if maybe_sent else Handoff.NONE
        self._touch(now)

    def accepted(self, provider_message_id: str, status: MessageStatus, now: datetime) -> None:
        self.provider_message_id = provider_message_id
        self.handoff = Handoff.ACCEPTED
        if not self.advance(status, now=now):
            self._touch(now)

    def rejected(self, code: int, reason: str, now: datetime) -> None:
        """The provider refused this message for good (an invalid number…)."""
        self.handoff = Handoff.REJECTED
        self.advance(MessageStatus.FAILED, now=now, error_code=code, error_message=reason)

    def abandoned(self, now: datetime) -> None:
        """Never accepted, and nobody is trying any more."""
        self.handoff = Handoff.NONE
        self.advance(MessageStatus.FAILED, now=now, error_message="not sent: the provider "
                     "could not be reached and the call was abandoned")

    def advance(
        self, status: MessageStatus, *, now: datetime, error_code: int = 0,
        error_message: str = "",
    ) -> bool:
        """Move to `status` if that is forward; a late or repeated report changes nothing."""
        if RANK[status] <= RANK[self.status]:
            return False
        previous = self.status
        self.status = status
        if error_code or error_message:
            self.error_code, self.error_message = error_code, error_message
        self._touch(now)
        self.events.append(MessageStatusChanged(self.snapshot(), previous))
        return True

    def _touch(self, now: datetime) -> None:
        self.updated_at = now
        self.version += 1

    def snapshot(self) -> Message:
        return replace(self, events=[])

    def pull_events(self) -> list[MessageEvent]:
        pulled, self.events = self.events, []
        return pulled


@dataclass
class Recipient:
    """A phone number's consent to be texted."""

    phone: str
    opted_out: bool
    keyword: str
    changed_at: datetime
    events: list[ConsentChanged] = field(default_factory=list, repr=False, compare=False)

    def answer(self, keyword: str, *, opt_out: bool, lead_id: str, now: datetime) -> bool:
        """Record an opt-out or opt-in keyword; True if consent changed."""
        if self.opted_out == opt_out:
            return False
        self.opted_out, self.keyword, self.changed_at = opt_out, keyword, now
        self.events.append(ConsentChanged(replace(self, events=[]), lead_id))
        return True

    def pull_events(self) -> list[ConsentChanged]:
        pulled, self.events = self.events, []
        return pulled
