"""A text assumes its number has not opted out (services.shared.uow `assume`): on
PostgreSQL the first attempt of SendSms records its intent without reading the
number's consent, in one round trip, and its commit fails it if the number has
opted out; the call then runs again, reading, and is refused as before."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.messaging.conftest import LEAD_PHONE, send
from tests.integration.messaging.test_consent_and_status import inbound
from tests.integration.test_kept_rows import misreads
from tests.support.rpc import refusal
from tests.support.twilio_double import TwilioDouble

pytestmark = pytest.mark.postgres_only  # SQLite assumes nothing: its reads are calls

Stub = messaging_pb2_grpc.MessagingServiceStub


@pytest.fixture
async def willing(leads_for_messaging: RunningService,
                  channel_for: Callable[..., grpc.aio.Channel]) -> leads_pb2.Lead:
    """A lead whose number never opted out."""
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(leads_for_messaging.target))
    return await stub.CreateLead(
        leads_pb2.CreateLeadRequest(name="Grace Hopper", phone="+14155550122"),
        metadata=idempotency(new_key()))


@pytest.fixture
async def opted_out(lead: leads_pb2.Lead, webhooks: Stub) -> leads_pb2.Lead:
    """A lead who texted STOP."""
    await inbound(webhooks, "STOP")
    return lead


async def test_a_text_records_its_intent_in_one_round_trip_without_reading_consent(
    messaging: Stub, messaging_server: RunningService, lead: leads_pb2.Lead,
    round_trips: list[int],
) -> None:
    await send(messaging, lead.lead_id)  # the statements' first use
    round_trips.clear()
    await send(messaging, lead.lead_id)
    assert len(round_trips) == 2, round_trips  # the intent; the provider's acceptance
    messaging_server.runtime.storage.rows.stale_share = 1.0  # assuming judged not worth it
    round_trips.clear()
    await send(messaging, lead.lead_id)
    assert len(round_trips) == 3, round_trips  # the key and the consent read, then the intent


async def test_a_number_that_opted_out_is_refused_though_the_text_assumed_it_had_not(
    messaging: Stub, webhooks: Stub, messaging_server: RunningService, lead: leads_pb2.Lead,
    twilio: TwilioDouble,
) -> None:
    first = await send(messaging, lead.lead_id)
    await inbound(webhooks, "STOP")
    before = misreads("messaging")
    rows = messaging_server.runtime.storage.rows
    share = rows.stale_share
    key = new_key()
    for _ in range(2):  # and its replay, answered from the key
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await send(messaging, lead.lead_id, "one more thing", key=key)
        refused = refusal(failed.value)
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                  "RECIPIENT_OPTED_OUT")
    assert misreads("messaging") == before + 1  # the assuming attempt, undone
    # judged once, as wrong: the attempt that read after it does not judge again
    assert rows.stale_share == pytest.approx(share + (1 - share) / 32)
    assert [m.body for m in twilio.sent_to(LEAD_PHONE)] == [first.body]
    history = await messaging.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    assert [(m.direction, m.body) for m in history.messages] == [
        (pb.DIRECTION_INBOUND, "STOP"), (pb.DIRECTION_OUTBOUND, first.body)]


async def test_texts_to_opted_out_numbers_stop_the_assuming_until_it_would_hold_again(
    messaging: Stub, messaging_server: RunningService, opted_out: leads_pb2.Lead,
    willing: leads_pb2.Lead, round_trips: list[int],
) -> None:
    rows = messaging_server.runtime.storage.rows
    for _ in range(20):
        with pytest.raises(grpc.aio.AioRpcError):
            await send(messaging, opted_out.lead_id)
        if not rows.worth_it:
            break
    assert not rows.worth_it
    await send(messaging, willing.lead_id)  # the lead looked up (leads runs in this process)
    round_trips.clear()
    await send(messaging, willing.lead_id)
    assert len(round_trips) == 3, round_trips  # read first, and judged: it would have held
    for _ in range(20):
        if rows.worth_it:
            break
        await send(messaging, willing.lead_id)
    assert rows.worth_it
    round_trips.clear()
    await send(messaging, willing.lead_id)
    assert len(round_trips) == 2, round_trips
