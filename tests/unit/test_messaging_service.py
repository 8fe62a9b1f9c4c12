"""The messaging use cases with fakes of their unit of work and of the provider:
no database, no server, no Twilio."""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

import pytest

from services.messaging import messages, service
from services.messaging.breaker import ProviderBreaker
from services.messaging.domain import (
    ConsentChanged,
    Direction,
    Handoff,
    Message,
    MessageNotFound,
    MessageStatus,
    Recipient,
    RecipientOptedOut,
)
from services.messaging.providers import (
    ProviderRejected,
    ProviderUnavailable,
    Receipt,
    is_transient,
)
from services.messaging.sending import ProviderDown, SmsSender
from services.messaging.settings import SmsSettings
from services.shared.auth import Caller
from services.shared.idempotency import Key, KeyReused, Pending, Stored
from services.shared.lead_lookup import LeadContact, LeadNotFound, LeadsUnavailable
from tests.unit.fakes import FakeDatabase, FakeRows, FakeUnitOfWork, FakeUnits, guarded

ALICE, TWILIO = Caller("alice"), Caller("gateway")
LEAD = LeadContact("lead-1", "Ada Lovelace", "+14155550123")
SEND = "/crm.messaging.v1.MessagingService/SendSms"
INBOUND = "/crm.messaging.v1.MessagingService/ReceiveInboundMessage"
STATUS = "/crm.messaging.v1.MessagingService/RecordDeliveryStatus"


class FakeMessages(FakeRows[Message], service.MessageRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        super().__init__(uow, "messages", lambda m: m.message_id, MessageNotFound)
        self._loaded: dict[str, int] = {}

    async def add(self, message: Message) -> None:
        await super().add(message)
        self._loaded[message.message_id] = message.version

    async def get(self, message_id: str, *, for_update: bool = False) -> Message:
        message = await super().get(message_id)
        self._loaded[message_id] = message.version
        return message

    async def by_provider_id(self, provider_message_id: str, *, for_update: bool = False
                             ) -> Message | None:
        found = [i for i, m in self.rows.items() if m.provider_message_id == provider_message_id]
        return await self.get(found[0]) if found else None

    def adopt(self, message: Message) -> Message:
        adopted = self.seen[message.message_id] = replace(copy.deepcopy(message), events=[])
        self._loaded[message.message_id] = message.version
        return adopted

    async def save(self, message: Message) -> None:
        row, loaded = copy.deepcopy(message), self._loaded[message.message_id]
        self.uow.stage(lambda: guarded(self.rows, message.message_id, loaded, row))

    async def history(self, lead_id: str, after: tuple[datetime, str] | None, limit: int
                      ) -> list[Message]:
        return []

    async def lead_of(self, phone: str) -> str:
        return next((m.lead_id for m in self.rows.values()
                     if m.to == phone and m.direction is Direction.OUTBOUND), "")

    async def known_provider_ids(self, phone: str, since: datetime) -> Collection[str]:
        return {m.provider_message_id for m in self.rows.values()
                if m.to == phone and m.provider_message_id}


class FakeRecipients(service.RecipientRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.uow = uow
        self.rows = uow.db.table("recipients")
        self.seen: dict[str, Recipient] = {}

    async def get(self, phone: str, *, now: datetime) -> Recipient:
        found = copy.deepcopy(self.rows.get(phone) or Recipient(phone, False, "", now))
        self.seen[phone] = found
        return found

    async def opted_out(self, phone: str) -> bool:
        found = self.rows.get(phone)
        return found is not None and found.opted_out

    async def save(self, recipient: Recipient) -> None:
        row = copy.deepcopy(recipient)
        self.uow.stage(lambda: self.rows.__setitem__(recipient.phone, row))


class FakeMessagingUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeDatabase, respond: object = None) -> None:
        super().__init__(db, respond)  # type: ignore[arg-type]
        self.messages = FakeMessages(self)
        self.recipients = FakeRecipients(self)

    def recorded_events(self) -> list[object]:
        return [*(e for m in self.messages.seen.values() for e in m.pull_events()),
                *(e for r in self.recipients.seen.values() for e in r.pull_events())]


class FakeProvider:
    """The SMS provider (the SmsProvider Protocol): takes texts, or fails as told."""

    name = "twilio"
    from_number = "+15005550006"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failures: list[Exception] = []

    async def send(self, *, to: str, body: str, status_callback: str | None,
                   from_number: str | None = None) -> Receipt:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(body)
        return Receipt(f"SM{len(self.sent)}", MessageStatus.QUEUED)

    async def find(self, *, to: str, body: str, since: datetime, known: Collection[str],
                   from_number: str | None = None) -> Receipt | None:
        return None

    async def close(self) -> None:
        return None


class FakeLeads(service.Leads):
    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> LeadContact:
        return LEAD


@pytest.fixture
def units() -> FakeUnits[FakeMessagingUnitOfWork]:
    return FakeUnits(FakeMessagingUnitOfWork, respond=messages.message)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def sender(provider: FakeProvider) -> SmsSender:
    breaker = ProviderBreaker(5, 30.0, is_failure=is_transient)
    return SmsSender(provider=provider, breaker=breaker, public_url="http://gateway",
                     sms=SmsSettings(retry_max_attempts=1))


def answering_inbound(units: FakeUnits[FakeMessagingUnitOfWork]) -> FakeMessagingUnitOfWork:
    return FakeMessagingUnitOfWork(units.db, messages.inbound)


async def send(units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, body: str = "Hi",
               key: str = "text-1") -> Message | Stored:
    command = service.SendSms(lead_id=LEAD.lead_id, body=body, caller=ALICE,
                              key=Key(SEND, key, body))
    return await service.send_sms(command, units, sender, FakeLeads(), time_remaining=10.0)


async def test_a_text_is_recorded_then_handed_over_and_its_outcome_stored_once(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
) -> None:
    sent = await send(units, sender)
    assert isinstance(sent, Message)
    assert (sent.handoff, sent.provider_message_id, sent.to) == (Handoff.ACCEPTED, "SM1",
                                                                  LEAD.phone)
    again = await send(units, sender)
    assert isinstance(again, Stored) and again.replayed
    assert provider.sent == ["Hi"]
    # The intent, then the outcome: two transactions, both the caller's.
    assert units.db.committed()[-2:] == [(ALICE, False, True), (ALICE, False, True)]


class CallbackFirst(FakeProvider):
    """A provider whose status callback for a text is recorded before its answer
    to the send arrives: the stored message moves on meanwhile."""

    def __init__(self, rows: dict[str, Message]) -> None:
        super().__init__()
        self.rows = rows

    async def send(self, *, to: str, body: str, status_callback: str | None,
                   from_number: str | None = None) -> Receipt:
        receipt = await super().send(to=to, body=body, status_callback=status_callback,
                                     from_number=from_number)
        for message in self.rows.values():
            message.accepted(receipt.provider_message_id, MessageStatus.DELIVERED,
                             message.updated_at)
        return receipt


async def test_an_acceptance_saves_the_message_as_recorded_or_reads_it_if_it_moved_on(
    units: FakeUnits[FakeMessagingUnitOfWork],
) -> None:
    """The acceptance takes the message as the call recorded it, without reading it
    again; if a status callback changed it meanwhile, that save writes nothing and
    the acceptance is recorded on the message as it is now, once."""
    provider = CallbackFirst(units.db.table("messages"))
    sender = SmsSender(provider=provider, breaker=ProviderBreaker(5, 30.0, is_failure=is_transient),
                       public_url="http://gateway", sms=SmsSettings(retry_max_attempts=1))
    sent = await send(units, sender)
    assert isinstance(sent, Message)
    (stored,) = units.db.table("messages").values()
    assert (sent.status, sent.handoff, sent.provider_message_id) == (
        MessageStatus.DELIVERED, Handoff.ACCEPTED, "SM1")
    assert (stored.status, stored.version) == (MessageStatus.DELIVERED, sent.version)
    assert sent.version == 3  # recorded, moved on by the callback, accepted
    assert provider.sent == ["Hi"]
    again = await send(units, sender)
    assert isinstance(again, Stored) and again.replayed and provider.sent == ["Hi"]


class LeadsGone(service.Leads):
    """The lead deleted since, or the leads service down."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.asked = 0

    async def get(self, lead_id: str, *, deadline_seconds: float | None) -> LeadContact:
        self.asked += 1
        raise self.error


@pytest.mark.parametrize("error", [LeadNotFound("lead-1"), LeadsUnavailable("leads is down")])
async def test_a_replay_needs_neither_the_lead_nor_its_service(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
    error: Exception,
) -> None:
    """A new key is the common case, so the lead is looked up before the key is read;
    a lookup that fails reads the key, and a stored outcome is answered as ever."""
    sent = await send(units, sender)
    assert isinstance(sent, Message)
    command = service.SendSms(lead_id=LEAD.lead_id, body="Hi", caller=ALICE,
                              key=Key(SEND, "text-1", "Hi"))
    leads = LeadsGone(error)
    again = await service.send_sms(command, units, sender, leads, time_remaining=10.0)
    assert isinstance(again, Stored) and again.replayed
    assert leads.asked == 1 and provider.sent == ["Hi"]
    # A new key with the lead gone gets the lookup's own refusal.
    fresh = service.SendSms(lead_id=LEAD.lead_id, body="Hi", caller=ALICE,
                            key=Key(SEND, "text-2", "Hi"))
    with pytest.raises(type(error)):
        await service.send_sms(fresh, units, sender, leads, time_remaining=10.0)
    assert provider.sent == ["Hi"]


async def test_a_reused_key_is_refused_as_such_though_the_lookup_failed(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender,
) -> None:
    await send(units, sender, body="Hi", key="text-1")
    other = service.SendSms(lead_id=LEAD.lead_id, body="Hello", caller=ALICE,
                            key=Key(SEND, "text-1", "Hello"))
    with pytest.raises(KeyReused):
        await service.send_sms(other, units, sender, LeadsGone(LeadsUnavailable("down")),
                               time_remaining=10.0)


async def test_a_refused_text_fails_its_message_and_stores_the_refusal(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
) -> None:
    provider.failures.append(ProviderRejected(21211, "invalid number"))
    refused = await send(units, sender)
    assert isinstance(refused, Stored) and not refused.replayed
    assert refused.outcome.status().details  # the google.rpc.Status, ErrorInfo and all
    (message,) = units.db.table("messages").values()
    assert (message.status, message.handoff, message.error_code) == (
        MessageStatus.FAILED, Handoff.REJECTED, 21211)


async def an_outage(units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender,
                    provider: FakeProvider) -> Message:
    """A send the provider fails with a 503: ProviderDown; the message it left."""
    provider.failures.append(ProviderUnavailable("503", maybe_sent=False))
    with pytest.raises(ProviderDown):
        await send(units, sender)
    (message,) = units.db.table("messages").values()
    return message  # type: ignore[no-any-return]


async def test_a_provider_outage_stores_nothing_and_ends_the_lease_now(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
) -> None:
    message = await an_outage(units, sender, provider)
    assert (message.status, message.handoff) == (MessageStatus.QUEUED, Handoff.NONE)
    (_, pending), = units.db.keys.values()
    assert isinstance(pending, Pending) and pending.resource_id == message.message_id
    retried = await send(units, sender)  # the lease ended: the retry takes it over
    assert isinstance(retried, Message) and retried.message_id == message.message_id
    assert provider.sent == ["Hi"]


async def test_a_recipient_who_texted_stop_is_not_texted(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
) -> None:
    inbound = service.ReceiveInbound(from_number=LEAD.phone, to=FakeProvider.from_number,
                                     body="Stop.", provider_message_id="SMin1", caller=TWILIO,
                                     key=Key(INBOUND, "in-1", "f"))
    answered = await service.receive_inbound(inbound, answering_inbound(units), region="US",
                                             provider="twilio")
    assert isinstance(answered, service.Inbound) and answered.opt_out is True
    assert any(isinstance(e, ConsentChanged) for e in units.db.events)
    with pytest.raises(RecipientOptedOut):
        await send(units, sender)
    assert provider.sent == [] and len(units.db.table("messages")) == 1


async def test_a_text_delivered_twice_by_the_provider_is_recorded_once(
    units: FakeUnits[FakeMessagingUnitOfWork],
) -> None:
    for key in ("in-1", "in-2"):
        inbound = service.ReceiveInbound(from_number=LEAD.phone, to="", body="hello",
                                         provider_message_id="SMsame", caller=TWILIO,
                                         key=Key(INBOUND, key, "f"))
        answered = await service.receive_inbound(inbound, answering_inbound(units),
                                                 region="US", provider="twilio")
        assert isinstance(answered, service.Inbound) and answered.opt_out is None
    assert len(units.db.table("messages")) == 1


async def test_a_late_delivery_report_never_moves_a_status_backwards(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender,
) -> None:
    sent = await send(units, sender)
    assert isinstance(sent, Message)

    async def report(status: str, key: str) -> Message | Stored:
        return await service.record_delivery_status(service.RecordDeliveryStatus(
            provider_status=status, message_id="", provider_message_id=sent.provider_message_id,
            error_code=0, error_message="", caller=TWILIO, key=Key(STATUS, key, status)),
            units())

    await report("delivered", "r1")
    late = await report("sent", "r2")
    assert isinstance(late, Message) and late.status is MessageStatus.DELIVERED


async def test_a_send_abandoned_past_its_lease_is_failed_and_its_key_forgotten(
    units: FakeUnits[FakeMessagingUnitOfWork], sender: SmsSender, provider: FakeProvider,
) -> None:
    await an_outage(units, sender, provider)
    assert await service.recover_abandoned(units, sender, older_than=-60) == 1
    (message,) = units.db.table("messages").values()
    assert (message.status, message.handoff) == (MessageStatus.FAILED, Handoff.NONE)
    assert units.db.keys == {}

