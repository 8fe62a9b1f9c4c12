"""The messaging use cases: texts out (SendSms), texts in, delivery reports, the
SMS history, and the breaker's changes on the event stream.

Each step runs in one unit of work, visible here. A text out is several
(`send_sms`): one text per idempotency key, toward the provider too, whatever
fails when.

1. Replay. A stored outcome for the key is answered again. (A new key is the
   common case: the body is checked and the lead looked up first, and the key
   claimed with the intent; only if that refuses or fails is the key read on its
   own, so a replay never depends on the lead or its service.)
2. Intent. The message is recorded, with the key marked *pending* (leased
   until the caller's deadline plus a margin), and committed before the
   provider hears of it. A duplicate arriving now is IDEMPOTENCY_KEY_IN_USE.
3. Handoff (services.messaging.sending). Through the breaker, with retries for
   transient failures; a message the provider may already have is looked up
   there first, and adopted if found.
4. Outcome, in one transaction with the message:
   accepted   → the Message is stored as the key's outcome and answered;
   refused    → the message fails with the provider's code, and the key stores
                FAILED_PRECONDITION / PROVIDER_REJECTED with that code;
   transient  → nothing is stored: the lease ends now and the caller gets
                UNAVAILABLE (PROVIDER_CIRCUIT_OPEN with a RetryInfo when the
                breaker is open); a retry with the key takes the same message over.

A crash between the provider's answer and the commit leaves the key pending
and the message `in_flight`. Once the lease has ended, a retry with the key
takes the call over and, since the message may have been accepted, looks it
up at the provider first: found, it is adopted and nothing is sent again; not
found, it is sent. Where nobody retries, the recovery sweep
(`recover_abandoned`) does the same after ABANDON_AFTER seconds, except that a
message not found at the provider is marked failed (abandoned) and its key
forgotten, so that a much later retry starts afresh. The one case that cannot
be known is a provider that accepted a message but does not list it yet;
Twilio lists a message as soon as it answers for it, so we treat "not listed"
as "not accepted".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

from services.messaging.breaker import BreakerSnapshot
from services.messaging.domain import (
    PROVIDER_STATUSES,
    Handoff,
    Message,
    MessageNotFound,
    Recipient,
    RecipientOptedOut,
    check_body,
    consent_keyword,
)
from services.messaging.providers import ProviderRejected, ProviderUnavailable, Receipt
from services.messaging.sending import NotHandedOver, SmsSender
from services.messaging.templates import MAX_TEMPLATES, MessageTemplate, TooManyTemplates
from services.shared import errors, ids, paging, validation
from services.shared.auth import Caller
from services.shared.db import utcnow
from services.shared.idempotency import Key, KeyInUse, KeyReused, Outcome, Pending, Stored
from services.shared.lead_lookup import LeadContact
from services.shared.phones import to_e164
from services.shared.uow import ConcurrentChange

log = logging.getLogger(__name__)
T = TypeVar("T")

# Deadline of a send whose caller set none.
DEFAULT_DEADLINE = 30.0
# How long past the caller's deadline a pending key stays leased to its call.
LEASE_MARGIN = 5.0
# How long before the caller's deadline the handoff gives up, to answer in time.
ANSWER_MARGIN = 1.0
# Of the time left, what a new send's lead lookup leaves over (at most this much) to
# read the key, should the lookup fail: a replay is still answered.
KEY_READ_MARGIN = 0.5
# How long after its lease ended an unfinished send is recovered by the sweep.
ABANDON_AFTER = 300.0
# The provider's error for a recipient who texted STOP to the provider itself.
UNSUBSCRIBED = 21610
MAX_INBOUND_BODY = 1600
# Who the recovery sweep and the breaker's records act as: the service itself,
# over every org (the system scope of services.shared.orgs). The sweep settles
# each abandoned send as its own caller, in that caller's org.
SERVICE = "messaging"


# -- what the use cases need -------------------------------------------------------


class MessageRepository(Protocol):
    async def add(self, message: Message) -> None: ...
    async def get(self, message_id: str, *, for_update: bool = False) -> Message: ...
    async def by_provider_id(self, provider_message_id: str, *,
                             for_update: bool = False) -> Message | None: ...
    async def save(self, message: Message) -> None: ...
    def adopt(self, message: Message) -> Message: ...
    async def history(self, lead_id: str, after: tuple[datetime, str] | None,
                      limit: int) -> list[Message]: ...
    async def lead_of(self, phone: str) -> str: ...
    async def known_provider_ids(self, phone: str, since: datetime) -> Collection[str]: ...


class RecipientRepository(Protocol):
    async def get(self, phone: str, *, now: datetime) -> Recipient: ...
    async def opted_out(self, phone: str) -> bool: ...
    async def save(self, recipient: Recipient) -> None: ...


class TemplateRepository(Protocol):
    async def get(self, template_id: str) -> MessageTemplate: ...
    async def add(self, template: MessageTemplate) -> None: ...
    async def save(self, template: MessageTemplate) -> None: ...
    async def remove(self, template: MessageTemplate) -> None: ...
    async def count(self) -> int: ...
    async def by_name(self, after: tuple[str, str] | None, limit: int
                      ) -> list[MessageTemplate]: ...


class KeySteps(Protocol):
    def remembered(self, key: Key) -> Stored | None: ...
    async def claim(self, key: Key) -> Stored | None: ...
    async def claim_or_pending(self, key: Key) -> Stored | Pending | None: ...
    async def take(self, key: Key, *, wait: bool) -> Outcome | Pending | None: ...
    async def hold(self, key: Key) -> None: ...
    async def peek(self, key: Key) -> Outcome | Pending | None: ...
    async def abandoned(self, *, lease_ended_before: datetime
                        ) -> list[tuple[Caller, Key, str]]: ...
    def pend(self, pending: Pending) -> None: ...
    def refuse(self, refusal: errors.DomainError) -> Stored: ...
    def forget(self) -> None: ...


class MessagingUnitOfWork(Protocol):
    @property
    def messages(self) -> MessageRepository: ...
    @property
    def recipients(self) -> RecipientRepository: ...
    @property
    def templates(self) -> TemplateRepository: ...
    @property
    def keys(self) -> KeySteps: ...
    def for_caller(self, caller: Caller, *, read_only: bool = False
                   ) -> AbstractAsyncContextManager[object]: ...
    def for_system(self, principal: str, *, read_only: bool = False
                   ) -> AbstractAsyncContextManager[object]: ...
    def record(self, event: object) -> None: ...
    async def commit(self, outcome: object = None) -> None: ...


class UnitsOfWork(Protocol):
    """A fresh unit of work per transaction (services.shared.uow.Units)."""

    def __call__(self) -> MessagingUnitOfWork: ...
    async def attempt(self, step: Callable[[MessagingUnitOfWork], Awaitable[T]], *,
                      time_remaining: float | None) -> T: ...


class Leads(Protocol):
    """The leads service, as `services.shared.lead_lookup.LeadLookup` asks it."""

    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> LeadContact: ...


# -- commands, queries, results --------------------------------------------------------


@dataclass(frozen=True)
class SendSms:
    lead_id: str
    body: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class ReceiveInbound:
    from_number: str
    to: str
    body: str
    provider_message_id: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class Inbound:
    """A text received, and what it did to its sender's consent: True opted out,
    False opted in, None neither."""

    message: Message
    opt_out: bool | None


@dataclass(frozen=True)
class RecordDeliveryStatus:
    provider_status: str
    message_id: str
    provider_message_id: str
    error_code: int
    error_message: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class GetMessage:
    message_id: str
    caller: Caller


@dataclass(frozen=True)
class ListMessages(paging.Listing):
    lead_id: str


@dataclass(frozen=True)
class ListTemplates(paging.Listing):
    pass


@dataclass(frozen=True)
class SaveTemplate:
    """Create a template (no id) or replace one."""

    template_id: str
    name: str
    body: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class DeleteTemplate:
    template_id: str
    caller: Caller
    key: Key


@dataclass(frozen=True)
class ProviderStateChanged:
    """The SMS provider's breaker changed state (an event no aggregate records)."""

    provider: str
    snapshot: BreakerSnapshot
    actor: str
    at: datetime
    # The longest text accepted, in segments, as GetProviderStatus tells it.
    max_segments: int = 1


Uow = MessagingUnitOfWork


# -- texts out ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    """The time a send has: when its handoff must end, and until when its key is leased."""

    deadline: float
    lease_until: datetime

    @classmethod
    def of(cls, time_remaining: float | None) -> _Budget:
        budget = time_remaining or DEFAULT_DEADLINE
        # The handoff ends early enough to record its outcome and answer before
        # the caller's deadline: UNAVAILABLE, never DEADLINE_EXCEEDED.
        deadline = _now() + budget - min(ANSWER_MARGIN, budget * 0.2)
        return cls(deadline, utcnow() + timedelta(seconds=budget + LEASE_MARGIN))

    def left(self) -> float:
        return max(0.001, self.deadline - _now())


def _now() -> float:
    return asyncio.get_running_loop().time()


async def send_sms(cmd: SendSms, units: UnitsOfWork, sender: SmsSender, leads: Leads, *,
                   time_remaining: float | None) -> Message | Stored:
    """Text a lead, once per key (see the module docstring)."""
    budget = _Budget.of(time_remaining)
    begun = await _begin(cmd, units, sender, leads, budget)
    if isinstance(begun, Stored):
        return begun
    message, maybe_sent = begun
    known = partial(_known_ids, units, cmd.caller, message)
    try:
        if message.handoff is Handoff.ACCEPTED:
            # A status callback proved the provider has it: nothing to send.
            receipt = Receipt(message.provider_message_id, message.status)
        else:
            receipt = await sender.hand_over(message, maybe_sent=maybe_sent,
                                             deadline=budget.deadline, known=known,
                                             org=cmd.caller.org)
    except ProviderRejected as refused:
        return await units.attempt(partial(_record_rejection, cmd, message.message_id, refused),
                                   time_remaining=budget.left() + LEASE_MARGIN)
    except NotHandedOver as failure:
        await _release(cmd, units, message.message_id, maybe_sent=failure.maybe_sent)
        raise failure.refusal from failure
    try:
        return await units.attempt(
            partial(_record_acceptance, cmd, message, receipt, as_recorded=True),
            time_remaining=budget.left() + LEASE_MARGIN)
    except ConcurrentChange:
        # The message changed since this call recorded it (a status callback came
        # first): read it, under lock, and record the acceptance on what it is now.
        return await units.attempt(
            partial(_record_acceptance, cmd, message, receipt, as_recorded=False),
            time_remaining=budget.left() + LEASE_MARGIN)


async def _begin(cmd: SendSms, units: UnitsOfWork, sender: SmsSender, leads: Leads,
                 budget: _Budget) -> tuple[Message, bool] | Stored:
    """The message to hand over, and whether the provider may have it already: a
    new one recorded as intended, or one an ended call left unfinished.

    A replay this process remembers is answered at once. Otherwise a new key is
    the common case, so the body is checked, the lead looked up (leaving time over
    to read the key) and the intent recorded with the key's claim; the key is read
    on its own only if that refuses or fails. So a replay never depends on the lead
    (gone since, or its service down) or on a check made since, and a key reused
    for another request is refused as such."""
    uow = units()
    async with uow.for_caller(cmd.caller, read_only=True):  # takes no connection
        remembered = uow.keys.remembered(cmd.key)
    if remembered is not None:
        return remembered
    try:
        intent = await _intent(cmd, sender, leads, budget)
    except Exception as refused:
        try:
            found = await units.attempt(partial(_peek, cmd), time_remaining=budget.left())
        except KeyReused:
            raise  # the key's own refusal comes first, as it would have
        except Exception:
            raise refused from None
        if isinstance(found, Outcome):
            return Stored(found)
        if found is None:
            raise
    else:
        recorded = await units.attempt(partial(_record_intent, cmd, intent, budget.lease_until),
                                       time_remaining=budget.left())
        if not isinstance(recorded, Pending):
            return recorded
        found = recorded
    if not found.expired(utcnow()):
        raise KeyInUse()
    return await units.attempt(partial(_take_over, cmd, budget.lease_until),
                               time_remaining=budget.left())


async def _intent(cmd: SendSms, sender: SmsSender, leads: Leads, budget: _Budget) -> Message:
    """The message a new call means to send: its body checked, its lead's number."""
    cost = check_body(cmd.body, sender.sms.max_segments)
    # Time is kept back to read the key should the lookup fail (a replay is answered).
    left = budget.left()
    lead = await leads.get(cmd.lead_id, deadline_seconds=max(0.001, left - min(
        KEY_READ_MARGIN, left * 0.2)))
    return Message.outbound(
        message_id=_new_id(), lead_id=lead.lead_id, to=lead.phone,
        from_=sender.sms.numbers.sender_for(
            cmd.caller.org, the_one_number=sender.provider.from_number,
            required=sender.provider.name != "console"),
        body=cmd.body, cost=cost,
        provider=sender.provider.name, actor=cmd.caller.principal, now=utcnow(),
    )


async def _peek(cmd: SendSms, uow: Uow) -> Outcome | Pending | None:
    async with uow.for_caller(cmd.caller, read_only=True):
        return await uow.keys.peek(cmd.key)


async def _record_intent(cmd: SendSms, intent: Message, lease_until: datetime, uow: Uow
                         ) -> tuple[Message, bool] | Stored | Pending:
    """Record the message before the provider hears of it, its key pending; what
    the key holds instead, if it is not new."""
    async with uow.for_caller(cmd.caller):
        if (found := await uow.keys.claim_or_pending(cmd.key)) is not None:
            return found
        if await uow.recipients.opted_out(intent.to):
            raise RecipientOptedOut(intent.to, intent.lead_id)
        # A fresh copy per attempt: a retried transaction must not reuse events.
        message = replace(intent, events=list(intent.events))
        await uow.messages.add(message)
        uow.keys.pend(Pending(message.message_id, intent.created_at, lease_until))
        await uow.commit()
        return message, False


async def _take_over(cmd: SendSms, lease_until: datetime, uow: Uow
                     ) -> tuple[Message, bool] | Stored:
    """Continue a send whose call ended (or died) before its outcome was stored."""
    async with uow.for_caller(cmd.caller):
        found = await uow.keys.take(cmd.key, wait=False)
        if isinstance(found, Outcome):
            return Stored(found)
        if found is None or not found.expired(utcnow()):
            raise KeyInUse()
        message = await uow.messages.get(found.resource_id, for_update=True)
        maybe_sent = message.handoff.maybe_sent
        if message.handoff is not Handoff.ACCEPTED:
            message.handing_over(utcnow())
            await uow.messages.save(message)
        uow.keys.pend(Pending(message.message_id, found.created_at, lease_until))
        await uow.commit()
    log.info("took over an unfinished send", extra={"message_id": message.message_id,
                                                     "maybe_sent": maybe_sent})
    return message, maybe_sent


async def _record_acceptance(cmd: SendSms, recorded: Message, receipt: Receipt, uow: Uow, *,
                             as_recorded: bool) -> Message:
    """The provider took the message: store that, and the answer under the key.

    `as_recorded`: take the message as this call last recorded it, without reading
    it (a round trip less); its save is guarded by the version recorded, so if it
    changed meanwhile nothing is written and ConcurrentChange says so."""
    async with uow.for_caller(cmd.caller):
        await uow.keys.hold(cmd.key)
        if as_recorded:
            message = uow.messages.adopt(recorded)
        else:
            message = await uow.messages.get(recorded.message_id, for_update=True)
        message.accepted(receipt.provider_message_id, receipt.status, utcnow())
        await uow.messages.save(message)
        await uow.commit(outcome=message)
        return message


async def _record_rejection(cmd: SendSms, message_id: str, refused: ProviderRejected, uow: Uow
                            ) -> Stored:
    async with uow.for_caller(cmd.caller):
        await uow.keys.hold(cmd.key)
        now = utcnow()
        message = await uow.messages.get(message_id, for_update=True)
        message.rejected(refused.code, refused.message, now)
        await uow.messages.save(message)
        if refused.code == UNSUBSCRIBED:
            recipient = await uow.recipients.get(message.to, now=now)
            if recipient.answer("STOP", opt_out=True, lead_id=message.lead_id, now=now):
                await uow.recipients.save(recipient)
        stored = uow.keys.refuse(ProviderRejectedMessage(message, refused))
        await uow.commit()
        return stored


async def _release(cmd: SendSms, units: UnitsOfWork, message_id: str, *, maybe_sent: bool
                   ) -> None:
    """The provider did not take the message, for now: end the lease, store nothing."""

    async def release(uow: Uow) -> None:
        async with uow.for_caller(cmd.caller):
            found = await uow.keys.take(cmd.key, wait=True)
            if not isinstance(found, Pending) or found.resource_id != message_id:
                return
            now = utcnow()
            message = await uow.messages.get(message_id, for_update=True)
            message.not_handed_over(maybe_sent=maybe_sent, now=now)
            await uow.messages.save(message)
            uow.keys.pend(Pending(found.resource_id, found.created_at, now))
            await uow.commit()

    try:
        await units.attempt(release, time_remaining=LEASE_MARGIN)
    except errors.Unavailable:
        log.warning("could not release an unfinished send; its lease will run out",
                    extra={"message_id": message_id})


async def _known_ids(units: UnitsOfWork, caller: Caller, message: Message) -> Collection[str]:
    """Provider ids already recorded for other texts to the message's number."""

    async def read(uow: Uow) -> Collection[str]:
        async with uow.for_caller(caller, read_only=True):
            return await uow.messages.known_provider_ids(message.to, message.created_at)

    return await units.attempt(read, time_remaining=None)


class ProviderRejectedMessage(errors.FailedPrecondition):
    reason = "PROVIDER_REJECTED"

    def __init__(self, message: Message, refusal: ProviderRejected) -> None:
        super().__init__(
            f"the SMS provider refused the message: {refusal.message} (error {refusal.code})",
            metadata={"provider_error_code": str(refusal.code),
                      "message_id": message.message_id},
        )


# -- recovery ----------------------------------------------------------------------------


async def recover_abandoned(units: UnitsOfWork, sender: SmsSender, *,
                            older_than: float = ABANDON_AFTER) -> int:
    """Finish the sends nobody retried; returns how many were settled."""
    cutoff = utcnow() - timedelta(seconds=older_than)

    async def stale(uow: Uow) -> list[tuple[Caller, Key, str]]:
        async with uow.for_system(SERVICE, read_only=True):
            return await uow.keys.abandoned(lease_ended_before=cutoff)

    settled = 0
    for caller, key, message_id in await units.attempt(stale, time_remaining=None):
        try:
            settled += await _settle(units, sender, caller, key, message_id=message_id,
                                     cutoff=cutoff)
        except (ProviderUnavailable, errors.Unavailable, errors.Aborted):
            log.info("recovery postponed: the provider, the database or the key is busy",
                     extra={"message_id": message_id})
    return settled


async def _settle(units: UnitsOfWork, sender: SmsSender, caller: Caller, key: Key, *,
                  message_id: str, cutoff: datetime) -> int:
    """Adopt an abandoned message the provider has, or fail it and forget its key."""

    async def read(uow: Uow) -> Message:
        async with uow.for_caller(caller, read_only=True):
            return await uow.messages.get(message_id)

    message = await units.attempt(read, time_remaining=None)
    receipt = None
    if message.handoff is Handoff.ACCEPTED:
        receipt = Receipt(message.provider_message_id, message.status)
    elif message.handoff.maybe_sent:
        receipt = await sender.look_up(message, partial(_known_ids, units, caller, message))

    async def settle(uow: Uow) -> int:
        async with uow.for_caller(caller):
            found = await uow.keys.take(key, wait=False)
            if not isinstance(found, Pending) or found.lease_until >= cutoff:
                return 0
            now = utcnow()
            current = await uow.messages.get(message_id, for_update=True)
            if receipt is not None:
                current.accepted(receipt.provider_message_id, receipt.status, now)
                await uow.messages.save(current)
                await uow.commit(outcome=current)
            else:
                current.abandoned(now)
                await uow.messages.save(current)
                uow.keys.forget()
                await uow.commit()
            return 1

    settled = await units.attempt(settle, time_remaining=None)
    if settled:
        log.info("recovered an unfinished send", extra={"message_id": message_id,
                                                         "adopted": receipt is not None})
    return settled


# -- texts in, delivery reports -------------------------------------------------------------


async def receive_inbound(cmd: ReceiveInbound, uow: Uow, *, region: str, provider: str
                          ) -> Inbound | Stored:
    """A text a lead sent us; STOP and START change their consent."""
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        sender = to_e164(cmd.from_number, region, field="from_number")
        validation.identifier(cmd.provider_message_id, "provider_message_id")
        validation.text(cmd.body, "body", max_length=MAX_INBOUND_BODY)
        validation.text(cmd.to, "to", max_length=32)
        opt_out = consent_keyword(cmd.body)
        known = await uow.messages.by_provider_id(cmd.provider_message_id)
        if known is not None:  # the provider delivered the same text again
            result = Inbound(known, opt_out)
        else:
            result = Inbound(await _received(cmd, uow, sender, opt_out, provider), opt_out)
        await uow.commit(outcome=result)
        return result


async def _received(cmd: ReceiveInbound, uow: Uow, sender: str, opt_out: bool | None,
                    provider: str) -> Message:
    now = utcnow()
    lead_id = await uow.messages.lead_of(sender)
    message = Message.inbound(
        message_id=_new_id(), lead_id=lead_id, from_=sender, to=cmd.to, body=cmd.body,
        provider=provider, provider_message_id=cmd.provider_message_id,
        actor=cmd.caller.principal, now=now,
    )
    await uow.messages.add(message)
    if opt_out is not None:
        recipient = await uow.recipients.get(sender, now=now)
        if recipient.answer(cmd.body.strip().upper()[:16], opt_out=opt_out, lead_id=lead_id,
                            now=now):
            await uow.recipients.save(recipient)
    return message


async def record_delivery_status(cmd: RecordDeliveryStatus, uow: Uow) -> Message | Stored:
    """A status the provider reported; a status never moves backwards."""
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        status = PROVIDER_STATUSES.get(cmd.provider_status.strip().lower())
        if status is None:
            raise errors.InvalidArgument.field("provider_status",
                                               f"unknown status {cmd.provider_status!r}")
        validation.identifier(cmd.message_id, "message_id", required=False)
        validation.identifier(cmd.provider_message_id, "provider_message_id", required=False)
        validation.text(cmd.error_message, "error_message", max_length=500)
        message = await _reported(cmd, uow)
        now = utcnow()
        if cmd.provider_message_id and not message.provider_message_id:
            # The callback beat the sender's own record of the provider's answer.
            message.accepted(cmd.provider_message_id, status, now)
        message.advance(status, now=now, error_code=cmd.error_code,
                        error_message=cmd.error_message)
        await uow.messages.save(message)
        await uow.commit(outcome=message)
        return message


async def _reported(cmd: RecordDeliveryStatus, uow: Uow) -> Message:
    """The message a report is about: by our id if the callback URL carried it."""
    if cmd.message_id:
        return await uow.messages.get(cmd.message_id, for_update=True)
    if not cmd.provider_message_id:
        raise errors.InvalidArgument.field("provider_message_id", "is required")
    found = await uow.messages.by_provider_id(cmd.provider_message_id, for_update=True)
    if found is None:
        raise MessageNotFound(cmd.provider_message_id)
    return found


# -- reads and the breaker ---------------------------------------------------------------


async def get_message(query: GetMessage, uow: Uow) -> Message:
    message_id = validation.identifier(query.message_id, "message_id")
    async with uow.for_caller(query.caller, read_only=True):
        return await uow.messages.get(message_id)


async def list_messages(query: ListMessages, uow: Uow) -> paging.Page[Message]:
    """A lead's SMS history, both directions, newest first."""
    lead_id = validation.identifier(query.lead_id, "lead_id")
    async with uow.for_caller(query.caller, read_only=True):
        return await paging.page(
            query.page, {"list": "messages", "lead_id": lead_id},
            paging.by_time_and_id(lambda m: (m.created_at, m.message_id)),
            lambda after, limit: uow.messages.history(lead_id, after, limit), org=query.caller.org)


# -- message templates -------------------------------------------------------------------


async def list_templates(query: ListTemplates, uow: Uow) -> paging.Page[MessageTemplate]:
    """By name, then id."""
    async with uow.for_caller(query.caller, read_only=True):
        return await paging.page(
            query.page, {"list": "message_templates"},
            paging.by_text_and_id(lambda t: (t.name, t.template_id)),
            uow.templates.by_name, org=query.caller.org)


async def save_template(cmd: SaveTemplate, uow: Uow) -> MessageTemplate | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        now, actor = utcnow(), cmd.caller.principal
        if not cmd.template_id:
            if await uow.templates.count() >= MAX_TEMPLATES:
                raise TooManyTemplates()
            template = MessageTemplate.create(name=cmd.name, body=cmd.body, actor=actor, now=now)
            await uow.templates.add(template)
        else:
            template = await uow.templates.get(
                validation.identifier(cmd.template_id, "template_id"))
            template.change(name=cmd.name, body=cmd.body, actor=actor, now=now)
            await uow.templates.save(template)
        await uow.commit(outcome=template)
        return template


async def delete_template(cmd: DeleteTemplate, uow: Uow) -> MessageTemplate | Stored:
    async with uow.for_caller(cmd.caller):
        if (stored := await uow.keys.claim(cmd.key)) is not None:
            return stored
        template = await uow.templates.get(validation.identifier(cmd.template_id, "template_id"))
        template.delete(actor=cmd.caller.principal, now=utcnow())
        await uow.templates.remove(template)
        await uow.commit(outcome=template)
        return template


async def record_provider_state(units: UnitsOfWork, provider: str, snapshot: BreakerSnapshot,
                                max_segments: int) -> None:
    """Put the breaker's new state on the event stream."""

    async def record(uow: Uow) -> None:
        async with uow.for_system(SERVICE):
            uow.record(ProviderStateChanged(provider, snapshot, SERVICE, utcnow(),
                                            max_segments))
            await uow.commit()

    await units.attempt(record, time_remaining=10)


def _new_id() -> str:
    return str(ids.uuid4())
