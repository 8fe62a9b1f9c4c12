"""Drill 2 across a real network: 100 ms of delay each way and 2 % packet loss
between the gateway and the services, while two people work in the web console
in real Chromium, each holding its event stream, and the link flaps twice.

Every service and the gateway run on hosts of their own (tests.support.netlab);
the gateway reaches the services through a delaying relay on its host, and
iptables drops 2 % of the packets between its host and theirs, either way. The
relay resets every connection twice in the middle of it all (a link that
flaps), so the gateway's upstream streams break and are taken up again.

Every press has exactly one effect (its idempotency key, however often the
console or the gateway sent it), and every browser's stream delivers every
event of every service exactly once, in log order, from where it went live.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2, bookings_pb2_grpc
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from playwright.async_api import Browser, async_playwright, expect

from services.shared.clients import open_channel
from tests.drills.conftest import report, service_on
from tests.e2e.test_console import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Console,
    System,
    api,
    new_appointment,
    new_lead,
    open_console,
    require_chromium,
    status_changes,
    unique_name,
)
from tests.support.netlab import Lab
from tests.support.postgres_cluster import PrivateCluster
from tests.support.relay import RelayProcess
from tests.support.servers import TOKENS, environment, wait_until

pytestmark = pytest.mark.browser

DELAY = 0.1  # seconds, each way
LOSS = 0.02
WAIT = 30_000  # ms: a press may be retried a few times through all this
# Records every Server-Sent Event the page receives, as the page receives it.
SSE_RECORDER = """
window.__sse = [];
const add = EventSource.prototype.addEventListener;
EventSource.prototype.addEventListener = function (type, listener, options) {
  if (type === "error") return add.call(this, type, listener, options);
  return add.call(this, type, (message) => {
    window.__sse.push({type, id: message.lastEventId, data: message.data});
    return listener(message);
  }, options);
};
"""
STUBS = {"leads": leads_pb2_grpc.LeadsServiceStub,
         "bookings": bookings_pb2_grpc.BookingsServiceStub,
         "messaging": messaging_pb2_grpc.MessagingServiceStub}
REQUESTS = {"leads": leads_pb2.SubscribeRequest, "bookings": bookings_pb2.SubscribeRequest,
            "messaging": messaging_pb2.SubscribeRequest}
PRESS_RPCS = ("UpdateLeadStatus", "ConfirmAppointment", "SendSms")
OWNERS = {"lead": "leads", "appointment": "bookings", "message": "messaging",
          "recipient": "messaging", "provider": "messaging"}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def test_presses_have_one_effect_and_streams_resume_exactly_over_a_slow_lossy_link(
    lab: Lab, lab_postgres: PrivateCluster, tmp_path: Path, browser: Browser,
) -> None:
    env = environment(lab_postgres.url(), tmp_path, CRM_HEARTBEAT_SECONDS="1")
    hosts = {name: lab.host(name) for name in ("leads", "bookings", "messaging", "gateway")}
    leads = service_on(hosts["leads"], "leads", env)
    await asyncio.to_thread(leads.start)
    others = [service_on(hosts[name], name, {**env, "CRM_LEADS_TARGET": leads.target})
              for name in ("bookings", "messaging")]
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in others))
    services = {"leads": leads, "bookings": others[0], "messaging": others[1]}
    relay = RelayProcess.spawn(DELAY, [p.target for p in services.values()],
                               prefix=hosts["gateway"].prefix)
    gateway = service_on(hosts["gateway"], "gateway", {
        **env, **{f"CRM_{name.upper()}_TARGET": relay.listening[p.target]
                  for name, p in services.items()},
        "CRM_SSE_HEARTBEAT_SECONDS": "1", "CRM_GATEWAY_DEADLINE_SECONDS": "10"},
        module="gateway")
    await asyncio.to_thread(gateway.start)
    for name in services:
        lab.lose(hosts["gateway"], hosts[name], LOSS)
    system = System(leads, others[0], others[1], gateway, tmp_path)
    consoles: list[Console] = []
    try:
        work = {who: await _work_for(system.url) for who in ("alice", "bob")}
        for who in work:
            console = await open_console(browser, system)
            await console.context.add_init_script(SSE_RECORDER)
            await console.log_in(who)
            consoles.append(console)

        pressed: list[str] = []
        flaps = 0

        async def flap() -> None:
            """The link flaps twice, each time while a press is on its way: its answer is
            likely held in the relay (100 ms each way), so the call is cut off too."""
            nonlocal flaps
            for after in (3, 8):
                await wait_until(lambda after=after: len(pressed) >= after, within=60,
                                 interval=0.005)
                await asyncio.sleep(0.15)  # placing the fault, not measuring anything
                relay.cut()
                flaps += 1

        started = time.monotonic()
        flapping = asyncio.create_task(flap())
        presses = await asyncio.gather(*(
            _press_everything(console, work[who], pressed)
            for console, who in zip(consoles, work, strict=True)))
        await flapping
        pressed_for = time.monotonic() - started

        # One effect per press, whatever was retried on the way.
        for who, plan in work.items():
            for lead in plan["leads"]:
                changes = await status_changes(system.url, lead["leadId"])
                assert [c["toStatus"] for c in changes] == [
                    "LEAD_STATUS_CONTACTED", "LEAD_STATUS_QUALIFIED"], who
                assert len({c["idempotencyKey"] for c in changes}) == 2
            appointment = await api(system.url, "GET",
                                    f"/v1/appointments/{plan['appointment']['appointmentId']}")
            assert appointment["status"] == "APPOINTMENT_STATUS_CONFIRMED"
            history = await api(system.url, "GET",
                                f"/v1/leads/{plan['leads'][0]['leadId']}/messages")
            assert len(history["messages"]) == 1

        # Every stream: every event of every service, once, in log order.
        delivered = Counter[str]()
        for console in consoles:
            seen = await _stream_matches_the_logs(console, services)
            delivered.update(seen)
        upstream_resubscribed = gateway.log().count("subscribing again")
        calls = sum(_served(process.log(), PRESS_RPCS) for process in services.values())
        for console in consoles:
            # Chromium honours Cross-Origin-Opener-Policy only from a trustworthy origin
            # (https, or loopback); the lab's gateway is plain http on its own address.
            console.problems = [p for p in console.problems
                                if "Cross-Origin-Opener-Policy header has been ignored" not in p]
            console.assert_clean()
        report("100 ms delay, 2 % loss, link flaps: gateway to services", browsers=2,
               presses=sum(presses), calls=calls, effects=sum(presses), duplicated=0, lost=0,
               link_flaps=flaps,
               upstream_streams_resubscribed=upstream_resubscribed,
               events_delivered_per_browser=dict(delivered),
               missing=0, repeated=0, pressing_seconds=round(pressed_for, 1))
    finally:
        for console in consoles:
            await console.context.close()
        relay.stop()
        for process in (gateway, *others, leads):
            if process.process is not None:
                process.kill()


async def _work_for(base: str) -> dict[str, Any]:
    """Two leads to move on and an appointment to confirm, for one person."""
    first = await new_lead(base, unique_name("Drill Lead"))
    second = await new_lead(base, unique_name("Drill Lead"))
    agent = f"agent-{first['leadId'][:8]}"
    appointment = await new_appointment(base, first["leadId"], agent,
                                        "2031-02-03T10:00:00Z", "2031-02-03T10:30:00Z")
    return {"leads": [first, second], "appointment": appointment}


async def _press_everything(console: Console, plan: dict[str, Any],
                            pressed: list[str]) -> int:
    """Each press through the console's buttons, waiting for its answer; returns how many."""
    page = console.page
    presses = 0
    for lead in plan["leads"]:
        await console.open_lead(lead)
        for status, label in (("LEAD_STATUS_CONTACTED", "Contacted"),
                              ("LEAD_STATUS_QUALIFIED", "Qualified")):
            await page.click(f'#status-actions button[data-status="{status}"]')
            pressed.append(status)
            presses += 1
            await expect(page.locator("#status-press")).to_contain_text(f"Moved to {label}",
                                                                        timeout=WAIT)
    first = plan["leads"][0]
    await console.open_lead(first)
    appointment_id = plan["appointment"]["appointmentId"]
    await page.click(f'button[data-key="confirm:{appointment_id}"]')
    pressed.append("confirm")
    presses += 1
    await expect(page.locator(f'#appointments [data-appointment-id="{appointment_id}"] .badge')
                 ).to_have_text("Confirmed", timeout=WAIT)
    await page.fill("#sms-body", "See you on Monday at 10.")
    await page.click("#sms-send")
    pressed.append("sms")
    presses += 1
    await expect(page.locator("#sms-press")).to_contain_text("Sent", timeout=WAIT)
    await expect(page.locator("#queue-panel")).to_be_hidden(timeout=WAIT)
    return presses


async def _stream_matches_the_logs(console: Console, services: dict[str, Any]) -> Counter[str]:
    """Compare what the browser received with each service's log, read directly."""
    received: list[dict[str, str]] = await console.page.evaluate("window.__sse")
    bookmarks = [r for r in received if r["type"] == "bookmark" and r["id"]]
    assert bookmarks, "the stream went live"
    origin = json.loads(base64.urlsafe_b64decode(bookmarks[0]["id"] + "==="))
    assert set(origin) == set(STUBS), f"live with every service: {origin}"
    counts = Counter[str]()
    for service, process in services.items():
        expected = await _log_after(service, process.target, origin[service])

        async def caught_up(service: str = service, expected: list[str] = expected) -> bool:
            return _cursors(await console.page.evaluate("window.__sse"), service)[-1:] \
                == expected[-1:]

        await wait_until(caught_up, within=30, interval=0.2)
        seen = _cursors(await console.page.evaluate("window.__sse"), service)
        assert seen == expected, f"{service}: every event once, in log order"
        counts[service] = len(seen)
    return counts


def _served(log: str, rpcs: tuple[str, ...]) -> int:
    """How many calls of `rpcs` a service's access log shows, whatever their answer."""
    served = 0
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        served += entry.get("logger") == "crm.access" and entry.get("rpc") in rpcs
    return served


def _cursors(received: list[dict[str, str]], service: str) -> list[str]:
    cursors = []
    for record in received:
        kind = record["type"]
        if kind in ("bookmark", "reset") or OWNERS.get(kind.split(".", 1)[0]) != service:
            continue
        cursors.append(json.loads(record["data"])["cursor"])
    return cursors


async def _log_after(service: str, target: str, cursor: str) -> list[str]:
    """The cursors of every event after `cursor`, up to the head, read from the service."""
    channel = open_channel(target, token=TOKENS["alice"])
    try:
        stream = STUBS[service](channel).Subscribe(REQUESTS[service](after_cursor=cursor))
        first = await stream.read()
        head = first.bookmark.head_cursor
        cursors: list[str] = []
        position = first.cursor
        while position != head:
            event = await asyncio.wait_for(stream.read(), 10)
            assert event is not grpc.aio.EOF
            position = event.cursor
            if event.type != "bookmark":
                cursors.append(event.cursor)
        stream.cancel()
        return cursors
    finally:
        await channel.close()
