"""Drill: a Twilio outage and its recovery, under load, on two messaging replicas.

The breakers open, sends fail fast without reaching Twilio, each replica lets
one trial through once its reset timeout passes, the trial's success closes
it, and every key that clients kept retrying ends with exactly one text.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.drills.conftest import report
from tests.integration.messaging.conftest import FROM, SID, TOKEN
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, environment, wait_until
from tests.support.twilio_double import TwilioDouble

KEYS = 60
RESET = 5.0


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason, or the bare code of a status without one."""
    try:
        return refusal(error).reason
    except AssertionError:
        return error.code().name


async def test_a_twilio_outage_degrades_one_button_and_recovers_without_double_texts(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as twilio:
        leads = ServiceProcess("leads", environment(postgres_url, tmp_path))
        await asyncio.to_thread(leads.start)
        env = environment(
            postgres_url, tmp_path, CRM_LEADS_TARGET=leads.target,
            TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN=TOKEN, TWILIO_FROM_NUMBER=FROM,
            TWILIO_API_BASE_URL=twilio.base_url, CRM_SMS_BREAKER_FAIL_MAX="3",
            CRM_SMS_BREAKER_RESET_SECONDS=str(RESET), CRM_SMS_RETRY_BASE_SECONDS="0.05",
            CRM_SMS_RETRY_MAX_ATTEMPTS="2")
        replicas = [ServiceProcess("messaging", env), ServiceProcess("messaging", env)]
        await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
        try:
            lead = await leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)).CreateLead(
                leads_pb2.CreateLeadRequest(name="Drill", phone="+14155550111"),
                metadata=idempotency(new_key()))
            stubs = [messaging_pb2_grpc.MessagingServiceStub(channel_for(r.target, retries=False))
                     for r in replicas]
            outcomes: Counter[str] = Counter()
            answers: dict[str, set[str]] = {}
            reached_while_open = 0

            async def client(keys: list[str], n: int) -> None:
                for i, key in enumerate(keys):
                    while True:
                        stub = stubs[(n + i) % 2]
                        try:
                            sent = await stub.SendSms(
                                pb.SendSmsRequest(lead_id=lead.lead_id, body=f"drill {key}"),
                                metadata=idempotency(key), timeout=5)
                            answers.setdefault(key, set()).add(sent.provider_message_id)
                            outcomes["OK"] += 1
                            break
                        except grpc.aio.AioRpcError as error:
                            reason = reason_of(error)
                            outcomes[reason] += 1
                            await asyncio.sleep(0.05 if reason != "PROVIDER_CIRCUIT_OPEN"
                                                else 0.2)

            async def open_until() -> list[float]:
                """Seconds each replica's breaker stays open from now (0 if not open)."""
                states = [await s.GetProviderStatus(pb.GetProviderStatusRequest()) for s in stubs]
                now = time.time()
                return [s.closes_at.ToMicroseconds() / 1e6 - now if s.state == pb.OPEN else 0.0
                        for s in states]

            keys = [new_key() for _ in range(KEYS)]
            load = [asyncio.create_task(client(keys[n::8], n)) for n in range(8)]
            await asyncio.sleep(0.5)
            twilio.outage()
            started = time.monotonic()
            async def both_open_a_while() -> bool:  # with a second of their windows left
                return min(await open_until()) >= 1.2

            await wait_until(both_open_a_while, within=30, interval=0.05)
            before = twilio.arrivals
            await asyncio.sleep(1.0)
            reached_while_open = twilio.arrivals - before
            twilio.recover()
            # Each trial hangs: everyone else arrives meanwhile.
            twilio.slow(RESET + 5.0, times=None)
            trial_window_start = twilio.arrivals
            await asyncio.sleep(RESET + 1.0)  # past both breakers' reset timeouts
            trials = twilio.arrivals - trial_window_start
            twilio.recover()
            await asyncio.wait_for(asyncio.gather(*load), 90)
            recovered = time.monotonic() - started

            assert reached_while_open == 0
            assert "DEADLINE_EXCEEDED" not in outcomes and "INTERNAL" not in outcomes
            assert trials == 2, "one trial per replica while half-open"
            assert len(answers) == KEYS and all(len(sids) == 1 for sids in answers.values())
            assert len(twilio.sent) == KEYS, "every key made exactly one text"
            assert len({m.sid for m in twilio.sent}) == KEYS
            report("Twilio outage", keys=KEYS, calls=sum(outcomes.values()), ok=outcomes["OK"],
                   fast_failures=outcomes["PROVIDER_CIRCUIT_OPEN"],
                   provider_unavailable=outcomes["PROVIDER_UNAVAILABLE"],
                   in_use=outcomes["IDEMPOTENCY_KEY_IN_USE"], twilio_requests=twilio.requests,
                   reached_twilio_while_open=reached_while_open, half_open_trials=trials,
                   texts_sent=len(twilio.sent), sent_twice=0,
                   outage_to_all_sent_seconds=round(recovered, 1))
        finally:
            for process in (*replicas, leads):
                process.kill()
