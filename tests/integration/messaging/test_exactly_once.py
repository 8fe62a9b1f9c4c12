"""Exactly one text per idempotency key, toward Twilio too, whatever fails when."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging.api import MessagingApi
from services.messaging.service import LEASE_MARGIN
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.messaging.conftest import LEAD_PHONE, send
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, wait_until
from tests.support.twilio_double import TwilioDouble

Stub = messaging_pb2_grpc.MessagingServiceStub

# A send's deadline that leaves the service time to reach Twilio on a busy
# machine (it gives up on the handoff ANSWER_MARGIN or a fifth before it), and
# a lost answer that would come only after it.
DEADLINE = 2.5
SLOWER_THAN_THE_DEADLINE = DEADLINE + 2


async def history(stub: Stub, lead_id: str) -> list[pb.Message]:
    return list((await stub.ListMessages(pb.ListMessagesRequest(lead_id=lead_id))).messages)


async def test_a_same_key_retry_storm_sends_one_text_and_every_answer_agrees(
    messaging: Stub, lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    twilio.slow(0.5)
    key = new_key()

    async def attempt() -> Any:
        try:
            return await send(messaging, lead.lead_id, key=key)
        except grpc.aio.AioRpcError as error:
            return refusal(error).reason

    outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
    sent = [o for o in outcomes if isinstance(o, pb.Message)]
    assert sent and {o for o in outcomes if isinstance(o, str)} <= {"IDEMPOTENCY_KEY_IN_USE"}
    assert all(m == sent[0] for m in sent)
    assert len(twilio.sent_to(LEAD_PHONE)) == 1
    call = messaging.SendSms(pb.SendSmsRequest(lead_id=lead.lead_id, body="Hi Ada"),
                             metadata=(("idempotency-key", key),))
    assert await call == sent[0]
    assert dict(await call.initial_metadata())["idempotent-replayed"] == "true"
    assert len(await history(messaging, lead.lead_id)) == 1


@pytest.fixture
async def patient(
    start_messaging: Callable[..., object], channel_for: Callable[..., grpc.aio.Channel]
) -> tuple[Stub, MessagingApi]:
    """Two attempts per send and a breaker that will not open, on a channel without retries."""
    server: RunningService = await start_messaging(  # type: ignore[misc]
        CRM_SMS_BREAKER_FAIL_MAX="1000", CRM_SMS_RETRY_MAX_ATTEMPTS="2")
    api = server.servicer
    assert isinstance(api, MessagingApi)
    return Stub(channel_for(server.target, retries=False)), api


async def test_a_retry_after_a_transient_failure_sends_the_same_message_once(
    patient: tuple[Stub, MessagingApi], lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    stub, _ = patient
    key = new_key()
    twilio.outage()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(stub, lead.lead_id, key=key)
    assert refusal(failed.value).reason == "PROVIDER_UNAVAILABLE"
    (queued,) = await history(stub, lead.lead_id)
    assert queued.status == pb.MESSAGE_STATUS_QUEUED
    twilio.recover()
    sent = await send(stub, lead.lead_id, key=key)
    assert sent.message_id == queued.message_id
    assert len(twilio.sent) == 1
    assert [m.message_id for m in await history(stub, lead.lead_id)] == [sent.message_id]


async def test_an_answer_lost_past_the_deadline_is_adopted_by_the_retry_not_sent_again(
    patient: tuple[Stub, MessagingApi], lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    stub, _ = patient
    key = new_key()
    twilio.lose_answer(after=SLOWER_THAN_THE_DEADLINE)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await send(stub, lead.lead_id, key=key, timeout=DEADLINE)
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    (accepted,) = twilio.sent  # Twilio has it, though nobody heard
    async def retried() -> pb.Message | None:
        try:
            return await send(stub, lead.lead_id, key=key)
        except grpc.aio.AioRpcError as error:
            assert refusal(error).reason == "IDEMPOTENCY_KEY_IN_USE"
            return None

    outcome: list[pb.Message] = []

    async def done() -> bool:
        found = await retried()
        if found is not None:
            outcome.append(found)
        return bool(outcome)

    await wait_until(done, within=DEADLINE + LEASE_MARGIN + 10, interval=0.25)
    assert outcome[0].provider_message_id == accepted.sid
    assert len(twilio.sent) == 1


async def test_the_sweep_adopts_a_text_twilio_took_when_nobody_retries(
    patient: tuple[Stub, MessagingApi], lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    stub, sender = patient
    key = new_key()
    twilio.lose_answer(after=SLOWER_THAN_THE_DEADLINE)
    with pytest.raises(grpc.aio.AioRpcError):
        await send(stub, lead.lead_id, key=key, timeout=DEADLINE)
    await wait_until(lambda: sender.recover_abandoned(older_than=-LEASE_MARGIN - 5), within=10)
    (adopted,) = await history(stub, lead.lead_id)
    assert adopted.provider_message_id == twilio.sent[0].sid
    call = stub.SendSms(pb.SendSmsRequest(lead_id=lead.lead_id, body="Hi Ada"),
                        metadata=(("idempotency-key", key),))
    assert (await call).provider_message_id == adopted.provider_message_id
    assert dict(await call.initial_metadata())["idempotent-replayed"] == "true"
    assert len(twilio.sent) == 1


async def test_the_sweep_fails_a_text_twilio_never_took_and_frees_its_key(
    patient: tuple[Stub, MessagingApi], lead: leads_pb2.Lead, twilio: TwilioDouble
) -> None:
    stub, sender = patient
    key = new_key()
    twilio.outage()
    with pytest.raises(grpc.aio.AioRpcError):
        await send(stub, lead.lead_id, key=key)
    twilio.recover()
    assert await sender.recover_abandoned(older_than=0) == 1
    (abandoned,) = await history(stub, lead.lead_id)
    assert abandoned.status == pb.MESSAGE_STATUS_FAILED and "abandoned" in abandoned.error_message
    fresh = await send(stub, lead.lead_id, key=key)
    assert fresh.message_id != abandoned.message_id
    assert len(twilio.sent) == 1


async def test_a_crash_between_twilios_answer_and_the_commit_never_sends_twice(
    messaging_env: dict[str, str], lead: leads_pb2.Lead, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    env = {**messaging_env, "CRM_SMS_BREAKER_FAIL_MAX": "1000"}
    first = ServiceProcess("messaging", env)
    await asyncio.to_thread(first.start)
    key = new_key()
    twilio.lose_answer(after=30)
    stub = Stub(channel_for(first.target, retries=False))
    pending = asyncio.create_task(send(stub, lead.lead_id, key=key, timeout=2))
    await wait_until(lambda: len(twilio.sent) == 1)
    first.kill()  # after Twilio took the text, before the service heard back
    with pytest.raises(grpc.aio.AioRpcError):
        await pending

    second = ServiceProcess("messaging", env)
    await asyncio.to_thread(second.start)
    try:
        again = Stub(channel_for(second.target, retries=False))
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await send(again, lead.lead_id, key=key)
        assert refusal(early.value).reason == "IDEMPOTENCY_KEY_IN_USE"  # the lease still holds
        recovered: list[pb.Message] = []

        async def retried() -> bool:
            try:
                recovered.append(await send(again, lead.lead_id, key=key))
            except grpc.aio.AioRpcError as error:
                assert refusal(error).reason == "IDEMPOTENCY_KEY_IN_USE"
            return bool(recovered)

        await wait_until(retried, within=2 + LEASE_MARGIN + 5, interval=0.25)
        assert recovered[0].provider_message_id == twilio.sent[0].sid
        assert len(twilio.sent) == 1
        assert len(await history(again, lead.lead_id)) == 1
    finally:
        await asyncio.to_thread(second.terminate)


async def test_a_duplicate_checking_the_key_does_not_make_the_sender_fail(
    postgres_url: str, tmp_path: Path, twilio: TwilioDouble,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    """While the sender is with Twilio, a duplicate holds the key's lock a moment;
    the sender waits for it to store its outcome, rather than giving up."""
    from services.leads.bootstrap import SPEC as LEADS
    from services.messaging.bootstrap import SPEC as MESSAGING
    from tests.integration.messaging.conftest import twilio_env
    from tests.support.servers import environment, start_in_process

    leads = await start_in_process(LEADS, environment(postgres_url, tmp_path))
    messaging = await start_in_process(MESSAGING, environment(
        postgres_url, tmp_path, CRM_LEADS_TARGET=leads.target, **twilio_env(twilio)))
    try:
        lead = await leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)).CreateLead(
            leads_pb2.CreateLeadRequest(name="Ada", phone=LEAD_PHONE),
            metadata=idempotency(new_key()))
        stub = Stub(channel_for(messaging.target, retries=False))
        key = new_key()
        digest = hashlib.sha256(
            f"default\0alice\0/crm.messaging.v1.MessagingService/SendSms\0{key}".encode()).digest()
        lock = int.from_bytes(digest[:8], "big", signed=True)
        twilio_answers, before = twilio.hold(), twilio.arrivals
        sending = asyncio.create_task(send(stub, lead.lead_id, key=key))
        await wait_until(lambda: twilio.arrivals == before + 1)  # the sender is with Twilio
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
            twilio_answers.set()  # Twilio answers while the duplicate holds the key

            async def sender_waits_for_the_key() -> bool:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                row = await cursor.fetchone()
                return row is not None and row[0] >= 1

            await wait_until(sender_waits_for_the_key, within=10)
            assert not sending.done()  # waiting for the key, not given up
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        sent = await sending
        assert sent.provider_message_id == twilio.sent[0].sid and len(twilio.sent) == 1
    finally:
        await messaging.stop(grace=1, drain=0)
        await leads.stop(grace=1, drain=0)
