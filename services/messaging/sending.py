"""Handing a text to the SMS provider: through the breaker, again after a transient
failure, within the deadline, and never twice.

An attempt that may have reached the provider without an answer (a timeout, a
dropped connection) is looked up at the provider before another is made:
found, it is adopted, not sent again. `Delivery` keeps, over the attempts of
one call, whether the provider may have the message; a caller that gives up
learns it from `NotHandedOver.maybe_sent`, and records it, so that whoever
takes the send over looks before sending.

The use case around it (the intent recorded first, the outcome after, the
recovery of abandoned sends) is `services.messaging.service.send_sms`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

from services.messaging.breaker import CircuitOpen, ProviderBreaker
from services.messaging.domain import Message
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

log = logging.getLogger(__name__)

# Reads the provider ids already recorded for other texts to a message's number
# since it was made, which a look-up must not take for this one's.
KnownIds = Callable[[], Awaitable[Collection[str]]]


class ProviderDown(errors.Unavailable):
    reason = "PROVIDER_UNAVAILABLE"


class NotHandedOver(Exception):
    """The provider did not take the message, for now: its breaker is open, it is
    failing, or the deadline came first. `refusal` is the caller's answer."""

    def __init__(self, refusal: errors.Unavailable, *, maybe_sent: bool) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.maybe_sent = maybe_sent


class SmsSender:
    """The provider, behind its breaker, with the retries a send may make."""

    def __init__(self, *, provider: SmsProvider, breaker: ProviderBreaker, sms: SmsSettings,
                 public_url: str) -> None:
        self.provider = provider
        self.breaker = breaker
        self.sms = sms
        self.callback_url = f"{public_url}/webhooks/twilio/status"

    async def hand_over(self, message: Message, *, maybe_sent: bool, deadline: float,
                        known: KnownIds, org: str) -> Receipt:
        """The provider's receipt for `message`, sent or found there; ProviderRejected
        if it refuses the message for good, NotHandedOver if it did not take it now."""
        delivery = Delivery(self, message, maybe_sent=maybe_sent, known=known, org=org)
        try:
            return await send_with_retries(
                delivery.attempt, breaker=self.breaker, max_attempts=self.sms.retry_max_attempts,
                deadline=deadline, is_transient=is_transient,
                base_delay=self.sms.retry_base_seconds,
            )
        except CircuitOpen as refused:
            raise NotHandedOver(refused, maybe_sent=delivery.maybe_sent) from refused
        except (ProviderUnavailable, TimeoutError) as failure:
            # What the transport said (hosts, ports) is for operators, not callers.
            log.warning("the SMS provider is unavailable: %s", failure,
                        extra={"message_id": message.message_id})
            down = ProviderDown("the SMS provider is unavailable; try again shortly",
                                retry_after=1.0)
            raise NotHandedOver(down, maybe_sent=delivery.maybe_sent) from failure

    async def look_up(self, message: Message, known: KnownIds) -> Receipt | None:
        """The provider's receipt for a message it may have, through the breaker."""
        return await self.breaker.call(lambda: self._find(message, known))

    async def _find(self, message: Message, known: KnownIds) -> Receipt | None:
        return await self.provider.find(to=message.to, body=message.body,
                                        since=message.created_at, known=await known(),
                                        from_number=message.from_ or None)

    def callback(self, message: Message, org: str) -> str | None:
        """The status callback URL the provider reports this message's fate to."""
        if self.provider.name != "twilio":
            return None
        # The org rides along (Twilio signs the whole URL): the gateway forwards it
        # in `x-crm-org`, so the report is recorded in the message's org.
        return f"{self.callback_url}?message_id={message.message_id}&org={org}"


class Delivery:
    """The attempts of one call at handing one message over."""

    def __init__(self, sender: SmsSender, message: Message, *, maybe_sent: bool,
                 known: KnownIds, org: str) -> None:
        self.sender = sender
        self.message = message
        # Whose message it is: its status callback is recorded in this org.
        self.org = org
        # Whether the provider may have the message: then look before sending.
        self.maybe_sent = maybe_sent
        self.known = known

    async def attempt(self) -> Receipt:
        if self.maybe_sent:
            adopted = await self.sender._find(self.message, self.known)
            if adopted is not None:
                log.info("adopted a message the provider already had",
                         extra={"message_id": self.message.message_id,
                                "provider_message_id": adopted.provider_message_id})
                return adopted
            self.maybe_sent = False
        try:
            return await self.sender.provider.send(
                to=self.message.to, body=self.message.body, from_number=self.message.from_ or None,
                status_callback=self.sender.callback(self.message, self.org))
        except ProviderUnavailable as failure:
            self.maybe_sent = self.maybe_sent or failure.maybe_sent
            raise
        except ProviderRejected:
            raise
        except BaseException:
            # Cut off mid-request (the deadline, a cancelled call): it may have arrived.
            self.maybe_sent = True
            raise
