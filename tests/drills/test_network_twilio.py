"""Drill 3 across a real network: a partition between messaging and Twilio (the
local double, on the machine's side of the lab) in the middle of sends.

Requests that had reached Twilio when the network was cut get their answers
dropped: Twilio sent those texts, messaging never heard. The breaker opens,
sends fail fast without reaching Twilio; once the partition heals, clients
retrying with their keys get every text sent, those whose answer was lost
looked up at Twilio and adopted, none sent twice.
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
from tests.drills.conftest import report, service_on
from tests.drills.test_twilio_outage import reason_of
from tests.integration.messaging.conftest import FROM, SID, TOKEN
from tests.support.netlab import Lab
from tests.support.postgres_cluster import PrivateCluster
from tests.support.servers import environment, wait_until
from tests.support.twilio_double import TwilioDouble

KEYS = 40
RESET = 3.0
# Twilio answers this late: requests are in flight at Twilio when the network is cut.
TWILIO_LATENCY = 0.3
# Long enough for what was on the wire at the cut to be read; far shorter than RESET.
SETTLE = 0.5


async def test_a_partition_from_twilio_opens_the_breaker_and_no_text_is_sent_twice(
    lab: Lab, lab_postgres: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN, host=lab.root.ip) as twilio:
        base = environment(lab_postgres.url(), tmp_path)
        leads = service_on(lab.host("leads"), "leads", base)
        await asyncio.to_thread(leads.start)
        messaging_host = lab.host("messaging")
        messaging = service_on(messaging_host, "messaging", {
            **base, "CRM_LEADS_TARGET": leads.target, "TWILIO_ACCOUNT_SID": SID,
            "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": FROM,
            "TWILIO_API_BASE_URL": twilio.base_url, "CRM_SMS_BREAKER_FAIL_MAX": "3",
            "CRM_SMS_BREAKER_RESET_SECONDS": str(RESET), "CRM_SMS_RETRY_MAX_ATTEMPTS": "2",
            "CRM_SMS_RETRY_BASE_SECONDS": "0.05", "CRM_SMS_PROVIDER_TIMEOUT_SECONDS": "1"})
        await asyncio.to_thread(messaging.start)
        try:
            lead = await leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)).CreateLead(
                leads_pb2.CreateLeadRequest(name="Drill", phone="+14155550111"),
                metadata=idempotency(new_key()))
            stub = messaging_pb2_grpc.MessagingServiceStub(
                channel_for(messaging.target, retries=False))
            outcomes: Counter[str] = Counter()
            answers: dict[str, set[str]] = {}
            twilio.slow(TWILIO_LATENCY, times=None)

            async def client(keys: list[str]) -> None:
                for key in keys:
                    while key not in answers:
                        try:
                            sent = await stub.SendSms(
                                pb.SendSmsRequest(lead_id=lead.lead_id, body=f"drill {key}"),
                                metadata=idempotency(key), timeout=5)
                        except grpc.aio.AioRpcError as error:
                            reason = reason_of(error)
                            outcomes[reason] += 1
                            await asyncio.sleep(0.5 if reason == "PROVIDER_CIRCUIT_OPEN" else 0.1)
                            continue
                        outcomes["OK"] += 1
                        answers.setdefault(key, set()).add(sent.provider_message_id)

            async def breaker_open() -> bool:
                status = await stub.GetProviderStatus(pb.GetProviderStatusRequest(), timeout=5)
                return bool(status.state == pb.BREAKER_STATE_OPEN)

            keys = [new_key() for _ in range(KEYS)]
            load = [asyncio.create_task(client(keys[n::6])) for n in range(6)]
            # Cut while requests are at Twilio, their answers still to come.
            await wait_until(lambda: len(twilio.sent) >= 8
                             and twilio.arrivals - twilio.requests >= 1, within=30, interval=0.01)
            lab.cut(messaging_host, lab.root, port=twilio.port)
            cut_at = time.monotonic()
            # A request whose bytes crossed the link just before the cut is still read
            # by the double (on this busy event loop) a moment later: it reached Twilio
            # before the partition. Count from when those are in.
            await asyncio.sleep(SETTLE)
            sent_before_cut = twilio.arrivals
            await wait_until(breaker_open, within=30, interval=0.05)
            open_after = time.monotonic() - cut_at
            await asyncio.sleep(RESET)  # sends keep failing fast meanwhile
            reached_while_cut = twilio.arrivals - sent_before_cut
            lab.heal()
            healed_at = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*load), 90)
            all_sent = time.monotonic() - healed_at
            adopted = messaging.log().count("adopted a message the provider already had")

            assert reached_while_cut == 0
            assert outcomes["PROVIDER_CIRCUIT_OPEN"] > 0
            assert "DEADLINE_EXCEEDED" not in outcomes and "INTERNAL" not in outcomes
            assert len(answers) == KEYS and all(len(sids) == 1 for sids in answers.values())
            bodies = Counter(message.body for message in twilio.sent)
            assert set(bodies) == {f"drill {key}" for key in keys}
            assert max(bodies.values()) == 1, "no text sent twice"
            assert adopted >= 1, "an answer lost in the partition was looked up, not resent"
            report("partition: messaging from Twilio", keys=KEYS,
                   calls=sum(outcomes.values()), ok=outcomes["OK"],
                   fast_failures=outcomes["PROVIDER_CIRCUIT_OPEN"],
                   provider_unavailable=outcomes["PROVIDER_UNAVAILABLE"],
                   in_use=outcomes["IDEMPOTENCY_KEY_IN_USE"], texts_sent=len(twilio.sent),
                   answers_lost_then_adopted=adopted, sent_twice=0, lost=0,
                   breaker_open_after_seconds=round(open_after, 2),
                   heal_to_all_sent_seconds=round(all_sent, 2))
        finally:
            for process in (messaging, leads):
                process.kill()

