"""SendSms: one text per idempotency key, toward the provider too, whatever fails when.

1. Replay. A stored outcome for the key is answered again.
2. Intent. The message is recorded, with the key marked *pending* (leased
   until the caller's deadline plus a margin), and committed before the
   provider hears of it. A duplicate arriving now is IDEMPOTENCY_KEY_IN_USE.
3. Handoff. Through the breaker, with retries for transient failures. An
   attempt that may have reached the provider without an answer (a timeout, a
   dropped connection) is looked up at the provider before another is made:
   found, it is adopted, not sent again.
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
found, it is sent. Where nobody retries, the recovery sweep does the same
after ABANDON_AFTER seconds, except that a message not found at the provider
is marked failed (abandoned) and its key forgotten, so that a much later retry
starts afresh. The one case that cannot be known is a provider that accepted a
message but does not list it yet; Twilio lists a message as soon as it answers
for it, so we treat "not listed" as "not accepted".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import cast

import grpc
from crm.messaging.v1 import messaging_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncConnection

from services.messaging import messages as convert
from services.messaging.adapters import SqlMessagingUnitOfWork
from services.messaging.breaker import CircuitOpen, ProviderBreaker
from services.messaging.domain import Handoff, Message, RecipientOptedOut, check_body
from services.messaging.providers import (
    ProviderRejected,
    ProviderUnavailable,
    Receipt,
    SmsProvider,
    is_transient,
)
from services.messaging.retry import send_with_retries
from services.messaging.settings import SmsSettings
from services.shared import errors
from services.shared.context import Call, current_call
from services.shared.db import retrying, utcnow
from services.shared.idempotency import (
    KeyInUse,
    Outcome,
    Pending,
    answer,
    fingerprint,
    store_refusal,
)
from services.shared.lead_lookup import LeadLookup
from services.shared.runtime import ServiceRuntime
from services.shared.status import to_status

log = logging.getLogger(__name__)

# Deadline of a send whose caller set none.
DEFAULT_DEADLINE = 30.0
# How long past the caller's deadline a pending key stays leased to its call.
LEASE_MARGIN = 5.0
# How long before the caller's deadline the handoff gives up, to answer in time.
ANSWER_MARGIN = 1.0
# How long after its lease ended an unfinished send is recovered by the sweep.
ABANDON_AFTER = 300.0
# The provider's error for a recipient who texted STOP to the provider itself.
UNSUBSCRIBED = 21610


class ProviderRejectedMessage(errors.FailedPrecondition):
    reason = "PROVIDER_REJECTED"

    def __init__(self, message: Message, refusal: ProviderRejected) -> None:
        super().__init__(
            f"the SMS provider refused the message: {refusal.message} (error {refusal.code})",
            metadata={"provider_error_code": str(refusal.code),
                      "message_id": message.message_id},
        )


class ProviderDown(errors.Unavailable):
    reason = "PROVIDER_UNAVAILABLE"


@dataclass
class _Attempts:
    """What the handoff knows so far: may the provider have accepted the message?"""

    maybe_sent: bool


class SmsSender:
    def __init__(
        self,
        runtime: ServiceRuntime,
        *,
        provider: SmsProvider,
        breaker: ProviderBreaker,
        leads: LeadLookup,
        sms: SmsSettings,
    ) -> None:
        self.runtime = runtime
        self.provider = provider
        self.breaker = breaker
        self.leads = leads
        self.sms = sms
        self.callback_url = f"{runtime.settings.public_url}/webhooks/twilio/status"

    async def send(self, request: pb.SendSmsRequest, context: grpc.aio.ServicerContext
                   ) -> pb.Message:
        call = current_call()
        request_fingerprint = fingerprint(request)
        budget = context.time_remaining() or DEFAULT_DEADLINE
        loop = asyncio.get_running_loop()
        # The handoff ends early enough to record its outcome and answer before
        # the caller's deadline: UNAVAILABLE, never DEADLINE_EXCEEDED.
        deadline = loop.time() + budget - min(ANSWER_MARGIN, budget * 0.2)
        lease_until = utcnow() + timedelta(seconds=budget + LEASE_MARGIN)

        def left() -> float:
            return max(0.001, deadline - loop.time())

        found = await retrying(lambda: self._key(call, request_fingerprint), time_remaining=left())
        if isinstance(found, Outcome):
            return cast(pb.Message, await answer(context, self.runtime, call, found, replayed=True))
        try:
            if found is None:
                cost = check_body(request.body, self.sms.max_segments)
                lead = await self.leads.get(request.lead_id, deadline_seconds=left())
                started = await retrying(
                    partial(self._record_intent, call, request_fingerprint, lead.phone,
                            Message.outbound(
                                message_id=_new_id(), lead_id=lead.lead_id, to=lead.phone,
                                from_=self.provider.from_number, body=request.body, cost=cost,
                                provider=self.provider.name, actor=call.principal, now=utcnow(),
                            ), lease_until),
                    time_remaining=left(),
                )
            else:
                if not found.expired(utcnow()):
                    raise KeyInUse()
                started = await retrying(
                    lambda: self._take_over(call, request_fingerprint, lease_until),
                    time_remaining=left(),
                )
        except errors.DomainError as refusal:
            outcome, replayed = await store_refusal(self.runtime, call, request_fingerprint,
                                                    refusal, time_remaining=left())
            return cast(pb.Message, await answer(context, self.runtime, call, outcome,
                                                  replayed=replayed))
        if isinstance(started, Outcome):
            return cast(pb.Message, await answer(context, self.runtime, call, started,
                                                  replayed=True))

        message, attempts = started
        if message.handoff is Handoff.ACCEPTED:
            # A status callback proved the provider has it: nothing to send.
            receipt = Receipt(message.provider_message_id, message.status)
        else:
            try:
                receipt = await self._hand_over(message, attempts, deadline)
            except ProviderRejected as refused:
                outcome = await retrying(
                    partial(self._record_rejection, call, request_fingerprint, message, refused),
                    time_remaining=left() + LEASE_MARGIN,
                )
                return cast(pb.Message, await answer(context, self.runtime, call, outcome,
                                                      replayed=False))
            except (CircuitOpen, ProviderUnavailable, TimeoutError) as failure:
                await self._release(call, request_fingerprint, message, attempts)
                if isinstance(failure, CircuitOpen):
                    raise
                raise ProviderDown(f"the SMS provider is unavailable: {failure}",
                                   retry_after=1.0) from failure
        response = await retrying(
            lambda: self._record_acceptance(call, request_fingerprint, message, receipt),
            time_remaining=left() + LEASE_MARGIN,
        )
        return response

    # -- the steps, each one transaction ------------------------------------------

    async def _key(self, call: Call, request_fingerprint: str) -> Outcome | Pending | None:
        async with self.runtime.db.transaction(write=False) as conn:
            return await self.runtime.idempotency.peek(conn, call, request_fingerprint)

    async def _record_intent(
        self, call: Call, request_fingerprint: str, phone: str, intent: Message,
        lease_until: datetime,
    ) -> tuple[Message, _Attempts] | Outcome:
        """Record the message before the provider hears of it, its key pending."""
        store = self.runtime.idempotency
        async with self.runtime.db.transaction(write=True) as conn:
            found = await store.claim(conn, call, request_fingerprint)
            if isinstance(found, Outcome):
                return found
            if found is not None:
                raise KeyInUse()
            uow = self._uow(conn)
            recipient = await uow.recipients.get(phone, now=intent.created_at)
            if recipient.opted_out:
                raise RecipientOptedOut(phone, intent.lead_id)
            # A fresh copy per attempt: a retried transaction must not reuse events.
            message = replace(intent, events=list(intent.events))
            await uow.messages.add(message)
            await store.record(uow, call, request_fingerprint,
                             Pending(message.message_id, intent.created_at, lease_until))
            await uow.commit()
            return message, _Attempts(maybe_sent=False)

    async def _take_over(
        self, call: Call, request_fingerprint: str, lease_until: datetime
    ) -> tuple[Message, _Attempts] | Outcome:
        """Continue a send whose call ended (or died) before its outcome was stored."""
        store = self.runtime.idempotency
        now = utcnow()
        async with self.runtime.db.transaction(write=True) as conn:
            found = await store.claim(conn, call, request_fingerprint)
            if isinstance(found, Outcome):
                return found
            if found is None or not found.expired(now):
                raise KeyInUse()
            uow = self._uow(conn)
            message = await uow.messages.get(found.resource_id, for_update=True)
            attempts = _Attempts(maybe_sent=message.handoff.maybe_sent)
            if message.handoff is not Handoff.ACCEPTED:
                message.handing_over(now)
                await uow.messages.save(message)
            await store.record(uow, call, request_fingerprint,
                             Pending(message.message_id, found.created_at, lease_until))
            await uow.commit()
            log.info("took over an unfinished send", extra={"message_id": message.message_id,
                                                             "maybe_sent": attempts.maybe_sent})
            return message, attempts

    async def _hand_over(self, message: Message, attempts: _Attempts, deadline: float) -> Receipt:
        async def attempt() -> Receipt:
            if attempts.maybe_sent:
                adopted = await self._find_at_provider(message)
                if adopted is not None:
                    log.info("adopted a message the provider already had",
                             extra={"message_id": message.message_id,
                                    "provider_message_id": adopted.provider_message_id})
                    return adopted
                attempts.maybe_sent = False
            try:
                return await self.provider.send(
                    to=message.to, body=message.body, status_callback=self._callback(message))
            except ProviderUnavailable as failure:
                attempts.maybe_sent = attempts.maybe_sent or failure.maybe_sent
                raise
            except ProviderRejected:
                raise
            except BaseException:
                # Cut off mid-request (the deadline, a cancelled call): it may have arrived.
                attempts.maybe_sent = True
                raise

        return await send_with_retries(
            attempt, breaker=self.breaker, max_attempts=self.sms.retry_max_attempts,
            deadline=deadline, is_transient=is_transient, base_delay=self.sms.retry_base_seconds,
        )

    async def _find_at_provider(self, message: Message) -> Receipt | None:
        async with self.runtime.db.transaction(write=False) as conn:
            known = await self._uow(conn).messages.known_provider_ids(message.to,
                                                                      message.created_at)
        return await self.provider.find(to=message.to, body=message.body,
                                        since=message.created_at, known=known)

    async def _record_acceptance(
        self, call: Call, request_fingerprint: str, intent: Message, receipt: Receipt
    ) -> pb.Message:
        store = self.runtime.idempotency
        async with self.runtime.db.transaction(write=True) as conn:
            await store.claim(conn, call, request_fingerprint, wait=True)
            uow = self._uow(conn)
            message = await uow.messages.get(intent.message_id, for_update=True)
            message.accepted(receipt.provider_message_id, receipt.status, utcnow())
            await uow.messages.save(message)
            response = convert.message(message)
            await store.record(uow, call, request_fingerprint, Outcome.success(response))
            await uow.commit()
            return response

    async def _record_rejection(
        self, call: Call, request_fingerprint: str, intent: Message, refused: ProviderRejected
    ) -> Outcome:
        store = self.runtime.idempotency
        now = utcnow()
        async with self.runtime.db.transaction(write=True) as conn:
            await store.claim(conn, call, request_fingerprint, wait=True)
            uow = self._uow(conn)
            message = await uow.messages.get(intent.message_id, for_update=True)
            message.rejected(refused.code, refused.message, now)
            await uow.messages.save(message)
            if refused.code == UNSUBSCRIBED:
                recipient = await uow.recipients.get(message.to, now=now)
                if recipient.answer("STOP", opt_out=True, lead_id=message.lead_id, now=now):
                    await uow.recipients.save(recipient)
            outcome = Outcome.failure(
                to_status(ProviderRejectedMessage(message, refused), self.runtime.domain))
            await store.record(uow, call, request_fingerprint, outcome)
            await uow.commit()
            return outcome

    async def _release(
        self, call: Call, request_fingerprint: str, intent: Message, attempts: _Attempts
    ) -> None:
        """The provider did not take the message, for now: end the lease, store nothing."""
        store = self.runtime.idempotency
        now = utcnow()

        async def release() -> None:
            async with self.runtime.db.transaction(write=True) as conn:
                found = await store.claim(conn, call, request_fingerprint, wait=True)
                if not isinstance(found, Pending) or found.resource_id != intent.message_id:
                    return
                uow = self._uow(conn)
                message = await uow.messages.get(intent.message_id, for_update=True)
                message.not_handed_over(maybe_sent=attempts.maybe_sent, now=now)
                await uow.messages.save(message)
                await store.record(uow, call, request_fingerprint,
                                 Pending(found.resource_id, found.created_at, now))
                await uow.commit()

        try:
            await retrying(release, time_remaining=LEASE_MARGIN)
        except errors.Unavailable:
            log.warning("could not release an unfinished send; its lease will run out",
                        extra={"message_id": intent.message_id})

    # -- recovery ---------------------------------------------------------------

    async def recover_abandoned(self, *, older_than: float = ABANDON_AFTER) -> int:
        """Finish the sends nobody retried; returns how many were settled."""
        store = self.runtime.idempotency
        cutoff = utcnow() - timedelta(seconds=older_than)
        async with self.runtime.db.transaction(write=False) as conn:
            stale = await store.pending(conn, lease_ended_before=cutoff)
        settled = 0
        for call, message_id in stale:
            try:
                settled += await self._settle(call, message_id, cutoff)
            except (ProviderUnavailable, errors.Unavailable, errors.Aborted):
                log.info("recovery postponed: the provider, the database or the key is busy",
                         extra={"message_id": message_id})
        return settled

    async def _settle(self, call: Call, message_id: str, cutoff: datetime) -> int:
        async with self.runtime.db.transaction(write=False) as conn:
            message = await self._uow(conn).messages.get(message_id)
        receipt = None
        if message.handoff is Handoff.ACCEPTED:
            receipt = Receipt(message.provider_message_id, message.status)
        elif message.handoff.maybe_sent:
            receipt = await self.breaker.call(lambda: self._find_at_provider(message))
        store = self.runtime.idempotency
        now = utcnow()
        async with self.runtime.db.transaction(write=True) as conn:
            found = await store.claim(conn, call, None)
            if not isinstance(found, Pending) or found.lease_until >= cutoff:
                return 0
            uow = self._uow(conn)
            current = await uow.messages.get(message_id, for_update=True)
            if receipt is not None:
                current.accepted(receipt.provider_message_id, receipt.status, now)
                await uow.messages.save(current)
                await store.record(uow, call, found.fingerprint,
                                 Outcome.success(convert.message(current)))
            else:
                current.abandoned(now)
                await uow.messages.save(current)
                await store.forget(conn, call)
            await uow.commit()
        log.info("recovered an unfinished send", extra={"message_id": message_id,
                                                         "adopted": receipt is not None})
        return 1

    def _uow(self, conn: AsyncConnection) -> SqlMessagingUnitOfWork:
        uow = self.runtime.unit_of_work(conn)
        assert isinstance(uow, SqlMessagingUnitOfWork)
        return uow

    def _callback(self, message: Message) -> str | None:
        if self.provider.name != "twilio":
            return None
        return f"{self.callback_url}?message_id={message.message_id}"


def _new_id() -> str:
    return str(uuid.uuid4())
