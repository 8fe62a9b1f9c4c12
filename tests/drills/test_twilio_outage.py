"""Drill: a Twilio outage and its recovery, under load, on two messaging replicas.

The breakers open, sends fail fast without reaching Twilio, each replica lets
one trial through once its reset timeout passes, the trial's success closes
it, and every key that clients kept retrying ends with exactly one text.

Each replica is judged on its own: breakers are per process and open and close
at their own times, so the drill never waits for the two to coincide. It tells
the replicas' requests apart at the double by their StatusCallback (each replica
has its own CRM_PUBLIC_URL; nothing else differs, the From number included, so a
lookup by one replica finds what the other sent), and checks the double's log of
arrivals against every open window each replica reported (GetProviderStatus's
`opened_at`, polled throughout; a window lasts RESET seconds, so no poll misses
one): no request of a SendSms call made after a replica's breaker opened reached
Twilio before that window ended. (A call admitted just before the breaker opened
may still arrive after: that is not a leak, and its call started before the window.)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
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
from tests.support.twilio_double import Arrival, TwilioDouble

KEYS = 60
RESET = 5.0


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason, or the bare code of a status without one."""
    try:
        return refusal(error).reason
    except AssertionError:
        return error.code().name


def replica_url(n: int) -> str:
    """CRM_PUBLIC_URL of replica n: its texts' StatusCallback names it at the double."""
    return f"http://messaging-{n}.drill.test"


def replica_of(request: Arrival) -> int | None:
    """Which replica sent this request: its StatusCallback is `<CRM_PUBLIC_URL>/webhooks/
    twilio/status?message_id=…`. None for a lookup (a GET carries no callback)."""
    callback = request.form.get("StatusCallback", "").partition("/webhooks/")[0]
    return next((n for n in range(2) if callback == replica_url(n)), None)


@dataclass(frozen=True)
class Call:
    """One SendSms call of the drill's clients, on the test's wall clock."""

    key: str
    replica: int
    started: float


def leaks(arrived: list[Arrival], calls: list[Call],
          windows: list[set[float]]) -> list[tuple[int, str, float]]:
    """Requests that reached Twilio from a replica while its breaker was open, for a
    call made after it opened: (replica, key, seconds into the window)."""
    found = []
    for request in arrived:
        replica = replica_of(request)
        body = request.form.get("Body", "")
        if replica is None or not body.startswith("drill "):
            continue  # a lookup (GET) carries no body: it is judged by its call's send
        key = body.removeprefix("drill ")
        for opened in windows[replica]:
            if not opened <= request.at < opened + RESET:
                continue
            # The call this request belongs to: the last one of this key to this
            # replica made before it arrived (a key's calls are sequential).
            made = [c.started for c in calls
                    if c.key == key and c.replica == replica and c.started <= request.at]
            if made and max(made) >= opened:
                found.append((replica, key, round(request.at - opened, 3)))
    return found


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
        replicas = [ServiceProcess("messaging", {**env, "CRM_PUBLIC_URL": replica_url(n)})
                    for n in range(2)]
        await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
        poller: asyncio.Task[None] | None = None
        try:
            lead = await leads_pb2_grpc.LeadsServiceStub(channel_for(leads.target)).CreateLead(
                leads_pb2.CreateLeadRequest(name="Drill", phone="+14155550111"),
                metadata=idempotency(new_key()))
            stubs = [messaging_pb2_grpc.MessagingServiceStub(channel_for(r.target, retries=False))
                     for r in replicas]
            outcomes: Counter[str] = Counter()
            answers: dict[str, set[str]] = {}
            calls: list[Call] = []

            async def client(keys: list[str], n: int) -> None:
                """Sends each key until it is answered, every attempt on the other replica:
                both keep getting calls, so both breakers open (with each client pinned
                to one replica, all could end up on one, and the other's breaker would
                never open)."""
                for i, key in enumerate(keys):
                    for attempt in itertools.count():
                        replica = (n + i + attempt) % 2
                        calls.append(Call(key, replica, time.time()))
                        try:
                            sent = await stubs[replica].SendSms(
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

            # Every time each replica's breaker opened (opened_at, wall-clock seconds),
            # and its latest status.
            windows: list[set[float]] = [set(), set()]
            status: list[pb.ProviderStatus] = [pb.ProviderStatus(), pb.ProviderStatus()]

            async def poll() -> None:
                while True:
                    for n, stub in enumerate(stubs):
                        status[n] = await stub.GetProviderStatus(pb.GetProviderStatusRequest())
                        if status[n].HasField("opened_at"):
                            opened = status[n].opened_at.ToMicroseconds() / 1e6
                            # Reported anew each time, to a few µs: the same window.
                            if all(abs(opened - o) > 0.5 for o in windows[n]):
                                windows[n].add(opened)
                    await asyncio.sleep(0.05)

            def arrived_from(n: int, since: int) -> list[Arrival]:
                return [a for a in twilio.arrived[since:] if replica_of(a) == n]

            keys = [new_key() for _ in range(KEYS)]
            load = [asyncio.create_task(client(keys[n::8], n)) for n in range(8)]
            await wait_until(lambda: outcomes["OK"] >= 8, within=30)  # texts are flowing
            poller = asyncio.create_task(poll())
            twilio.outage()
            started = time.monotonic()
            # Each replica opens, and refuses calls fast, in its own time.
            await wait_until(lambda: all(s.state == pb.BREAKER_STATE_OPEN
                                         and s.short_circuited_count > 0 for s in status),
                             within=30)
            # Twilio is back, but holds every request: what reaches it now is a
            # replica's trial, once that replica's reset timeout has passed.
            twilio.recover()
            twilio_answers = twilio.hold(times=None)
            mark = len(twilio.arrived)
            await wait_until(lambda: all(arrived_from(n, mark) for n in range(2)),
                             within=RESET + 30)
            # While its trial is held, each replica refuses more calls fast …
            refused = [s.short_circuited_count for s in status]
            await wait_until(lambda: all(s.short_circuited_count >= r + 3
                                         for s, r in zip(status, refused, strict=True)),
                             within=30)
            # … and none of them reaches Twilio (nor a lookup, which names no replica).
            trials = [len(arrived_from(n, mark)) for n in range(2)]
            reached = len(twilio.arrived) - mark
            twilio_answers.set()
            twilio.recover()
            await asyncio.wait_for(asyncio.gather(*load), 90)
            recovered = time.monotonic() - started
            poller.cancel()

            leaked = leaks(twilio.arrived, calls, windows)
            assert leaked == [], "reached Twilio while that replica's breaker was open"
            assert all(windows), "each replica's breaker opened"
            assert trials == [1, 1] and reached == 2, "one trial per replica while half-open"
            assert "DEADLINE_EXCEEDED" not in outcomes and "INTERNAL" not in outcomes
            assert len(answers) == KEYS and all(len(sids) == 1 for sids in answers.values())
            assert len(twilio.sent) == KEYS, "every key made exactly one text"
            assert len({m.sid for m in twilio.sent}) == KEYS
            report("Twilio outage", keys=KEYS, calls=sum(outcomes.values()), ok=outcomes["OK"],
                   fast_failures=outcomes["PROVIDER_CIRCUIT_OPEN"],
                   provider_unavailable=outcomes["PROVIDER_UNAVAILABLE"],
                   in_use=outcomes["IDEMPOTENCY_KEY_IN_USE"], twilio_requests=twilio.requests,
                   open_windows=[len(w) for w in windows], reached_twilio_while_open=len(leaked),
                   half_open_trials=sum(trials), texts_sent=len(twilio.sent), sent_twice=0,
                   outage_to_all_sent_seconds=round(recovered, 1))
        finally:
            if poller is not None:
                poller.cancel()
            for process in (*replicas, leads):
                process.kill()
