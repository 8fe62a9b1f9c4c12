"""A Twilio outage degrades one button: the breaker, as SendSms callers meet it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.server import RunningService
from tests.integration.messaging.conftest import LEAD_PHONE, send
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, wait_until
from tests.support.twilio_double import TwilioDouble

Stub = messaging_pb2_grpc.MessagingServiceStub


async def fail_until_open(stub: Stub, lead_id: str) -> None:
    """Send (and fail) until the breaker opens."""
    for _ in range(10):
        try:
            await send(stub, lead_id, timeout=10)
        except grpc.aio.AioRpcError as error:
            if refusal(error).reason == "PROVIDER_CIRCUIT_OPEN":
                return
    raise AssertionError("the breaker never opened")


@pytest.fixture
async def slow_server(start_messaging: Callable[..., object]) -> RunningService:
    """A messaging server whose breaker stays open 30 s."""
    return await start_messaging(CRM_SMS_BREAKER_RESET_SECONDS="30")  # type: ignore[misc, no-any-return]


@pytest.fixture
def slow_to_close(
    slow_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> Stub:
    """That server, on a channel without retries."""
    return Stub(channel_for(slow_server.target, retries=False))


async def test_an_outage_opens_the_breaker_then_sends_fail_fast_without_reaching_twilio(
    slow_to_close: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble,
) -> None:
    twilio.outage()
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await send(slow_to_close, lead.lead_id)
    # Its retries were the failures that opened the breaker, which ended them.
    assert refusal(first.value).reason == "PROVIDER_CIRCUIT_OPEN"
    reached = twilio.requests
    assert reached == 3

    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await send(slow_to_close, lead.lead_id)
    refused = refusal(fast.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_CIRCUIT_OPEN")
    assert refused.retry_delay is not None and 25 < refused.retry_delay <= 30
    assert twilio.requests == reached, "nothing reached Twilio while the breaker was open"

    status = await slow_to_close.GetProviderStatus(pb.GetProviderStatusRequest())
    assert (status.state, status.failure_count, status.fail_max) == (pb.BREAKER_STATE_OPEN, 3, 3)
    window = status.closes_at.ToDatetime() - status.opened_at.ToDatetime()
    assert window.total_seconds() == pytest.approx(30, abs=0.01)
    assert status.short_circuited_count >= 1


async def test_other_buttons_keep_working_while_sms_is_down(
    slow_to_close: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio.outage()
    await fail_until_open(slow_to_close, lead.lead_id)
    history = await slow_to_close.ListMessages(pb.ListMessagesRequest(lead_id=lead.lead_id))
    assert history.messages and all(m.status == pb.MESSAGE_STATUS_QUEUED for m in history.messages)


async def test_after_the_reset_timeout_one_trial_goes_through_and_success_closes(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel], messaging_server: RunningService,
) -> None:
    no_retries = Stub(channel_for(messaging_server.target, retries=False))
    twilio.outage()
    await fail_until_open(no_retries, lead.lead_id)
    twilio.recover()
    # The trial hangs at Twilio until the others are answered (the 2 s provider
    # timeout bounds it; a fixed delay was outrun on a loaded machine).
    release = twilio.hold()
    await asyncio.sleep(0.6)  # CRM_SMS_BREAKER_RESET_SECONDS=0.5
    before = twilio.arrivals

    async def attempt(i: int) -> str:
        try:
            await send(no_retries, lead.lead_id, f"burst {i}")
            return "sent"
        except grpc.aio.AioRpcError as error:
            return refusal(error).reason

    trial = asyncio.create_task(attempt(0))
    await wait_until(lambda: twilio.arrivals > before)  # the trial is at Twilio
    others = await asyncio.gather(*(attempt(i) for i in range(1, 20)))
    release.set()
    assert others == ["PROVIDER_CIRCUIT_OPEN"] * 19, others
    assert twilio.arrivals - before == 1, "exactly one trial call reached Twilio"
    assert await trial == "sent"
    status = await messaging.GetProviderStatus(pb.GetProviderStatusRequest())
    assert status.state == pb.BREAKER_STATE_CLOSED
    await send(messaging, lead.lead_id, "after")
    assert len(twilio.sent_to(LEAD_PHONE)) == 2


async def test_the_breaker_changes_are_events(
    slow_to_close: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    stream = slow_to_close.Subscribe(pb.SubscribeRequest(types=["provider.state_changed"]))
    await stream.read()
    twilio.outage()
    await fail_until_open(slow_to_close, lead.lead_id)
    event = await asyncio.wait_for(stream.read(), 10)
    while event.type == "bookmark":
        event = await asyncio.wait_for(stream.read(), 10)
    assert (event.type, event.provider.state, event.provider.provider) == (
        "provider.state_changed", pb.BREAKER_STATE_OPEN, "twilio")
    stream.cancel()


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo"])
async def test_the_breaker_keeps_time_in_any_time_zone(
    messaging_env: dict[str, str], lead: leads_pb2.Lead, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel], zone: str,
) -> None:
    process = ServiceProcess("messaging", {**messaging_env, "TZ": zone,
                                           "CRM_SMS_BREAKER_RESET_SECONDS": "1"})
    await asyncio.to_thread(process.start)
    try:
        stub = Stub(channel_for(process.target, retries=False))
        twilio.outage()
        await fail_until_open(stub, lead.lead_id)
        status = await stub.GetProviderStatus(pb.GetProviderStatusRequest())
        assert status.state == pb.BREAKER_STATE_OPEN
        window = (status.closes_at.ToDatetime() - status.opened_at.ToDatetime()).total_seconds()
        assert window == pytest.approx(1.0, abs=0.01)
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await send(stub, lead.lead_id)
        assert 0 < refusal(fast.value).retry_delay <= 1.0  # type: ignore[operator]
        twilio.recover()

        async def closed() -> bool:
            try:
                await send(stub, lead.lead_id, "trial")
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_until(closed, within=5, interval=0.2)
        status = await stub.GetProviderStatus(pb.GetProviderStatusRequest())
        assert status.state == pb.BREAKER_STATE_CLOSED
    finally:
        await asyncio.to_thread(process.terminate)


async def test_an_open_breaker_is_answered_at_once_even_to_a_retrying_client(
    slow_server: RunningService, slow_to_close: Stub, lead: leads_pb2.Lead,
    twilio: TwilioDouble, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    twilio.outage()
    await fail_until_open(slow_to_close, lead.lead_id)
    status = await slow_to_close.GetProviderStatus(pb.GetProviderStatusRequest())
    assert status.state == pb.BREAKER_STATE_OPEN
    # The default channel retries UNAVAILABLE; the refusal's pushback stops it.
    retrying_calls = Stub(channel_for(slow_server.target))
    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await send(retrying_calls, lead.lead_id)
    assert refusal(fast.value).reason == "PROVIDER_CIRCUIT_OPEN"
    # The channel's policy would have retried UNAVAILABLE with backoff; the breaker
    # counted exactly one call, so the pushback stopped it (no timing asserted).
    after = await slow_to_close.GetProviderStatus(pb.GetProviderStatusRequest())
    assert after.short_circuited_count == status.short_circuited_count + 1, "one call, no retries"
