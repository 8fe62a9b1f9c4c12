"""The web console in a real Chromium, against the system as a user runs it.

The three services and the gateway run as processes (`python -m services.leads`,
…, `python -m gateway`), each on its own SQLite file; Chromium comes from
/usr/bin/chromium (never downloaded: with CI=true a missing one fails the run,
elsewhere these tests are skipped, saying so). Every page is watched for
JavaScript errors and Content-Security-Policy violations, and screenshots go
to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Route,
    async_playwright,
    expect,
)

from tests.support.servers import TOKENS, ServiceProcess, environment
from tests.support.twilio_double import TwilioDouble

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
WAIT = 10_000  # ms: the longest any expectation waits
TWILIO_SID, TWILIO_TOKEN, TWILIO_FROM = "AC" + "c" * 32, "twilio-token-for-tests", "+15005550006"
# The browser may log its own line for every API refusal a test provokes and for
# requests cut off while offline; those are answers, not faults of the page.
API_PATHS = ("/auth/", "/v1/")
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  const what = event.blockedURI || "inline";
  console.error(`CSP violation: ${event.violatedDirective} blocked ${what}`);
});
"""


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but there is no Chromium at {CHROMIUM}")
    pytest.skip(f"no Chromium at {CHROMIUM} (install the distribution's chromium package)")


# -- the system -------------------------------------------------------------------------


@dataclass
class System:
    leads: ServiceProcess
    bookings: ServiceProcess
    messaging: ServiceProcess
    gateway: ServiceProcess
    data: Path

    @property
    def url(self) -> str:
        return f"http://{self.gateway.target}"


def service_env(data: Path, name: str, **extra: str) -> dict[str, str]:
    return environment(f"sqlite+aiosqlite:///{data / f'{name}.db'}", data, **extra)


def gateway_process(data: Path, leads: str, bookings: str, messaging: str) -> ServiceProcess:
    env = service_env(data, "gateway", CRM_LEADS_TARGET=leads, CRM_BOOKINGS_TARGET=bookings,
                      CRM_MESSAGING_TARGET=messaging, CRM_SSE_HEARTBEAT_SECONDS="1")
    return ServiceProcess("gateway", env, module="gateway")


def stop_all(processes: list[ServiceProcess]) -> list[tuple[str, int]]:
    codes = []
    for process in processes:
        try:
            codes.append((process.name, process.terminate()))
        except Exception:
            process.kill()
            codes.append((process.name, -1))
    return codes


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    require_chromium()
    data = tmp_path_factory.mktemp("console")
    started: list[ServiceProcess] = []
    try:
        leads = ServiceProcess("leads", service_env(data, "leads")).start()
        started.append(leads)
        bookings = ServiceProcess(
            "bookings", service_env(data, "bookings", CRM_LEADS_TARGET=leads.target)).start()
        started.append(bookings)
        messaging = ServiceProcess(
            "messaging", service_env(data, "messaging", CRM_LEADS_TARGET=leads.target)).start()
        started.append(messaging)
        gateway = gateway_process(data, leads.target, bookings.target, messaging.target).start()
        started.append(gateway)
    except BaseException:
        stop_all(started[::-1])
        raise
    yield System(leads, bookings, messaging, gateway, data)
    assert stop_all(started[::-1]) == [(p.name, 0) for p in started[::-1]]


# -- the HTTP API, as another client would call it ---------------------------------------


async def call(base: str, method: str, path: str, body: Any = None, *, key: str | None = None,
               who: str = "bob") -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {TOKENS[who]}"}
    if method != "GET":
        headers["Idempotency-Key"] = key or str(uuid.uuid4())
    async with aiohttp.ClientSession() as session, session.request(
        method, base + path, json=body, headers=headers,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, dict(response.headers), await response.json()


async def api(base: str, method: str, path: str, body: Any = None, **options: Any) -> Any:
    status, _, answer = await call(base, method, path, body, **options)
    assert status == 200, answer
    return answer


def phone() -> str:
    return f"+1 415 555 {random.randint(100, 199):04d}"


async def new_lead(base: str, name: str, status: str = "NEW") -> dict[str, Any]:
    lead = await api(base, "POST", "/v1/leads", {"name": name, "phone": phone()})
    if status != "NEW":
        lead = await api(base, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                         {"status": status})
    return lead  # type: ignore[no-any-return]


async def new_appointment(base: str, lead_id: str, agent: str, start: str, end: str, *,
                          notes: str = "") -> dict[str, Any]:
    return await api(base, "POST", "/v1/appointments",  # type: ignore[no-any-return]
                     {"leadId": lead_id, "agentId": agent, "startTime": start, "endTime": end,
                      "notes": notes})


async def status_changes(base: str, lead_id: str) -> list[dict[str, Any]]:
    answer = await api(base, "GET", f"/v1/leads/{lead_id}/statusChanges")
    return answer["statusChanges"]  # type: ignore[no-any-return]


def unique_name(name: str) -> str:
    return f"{name} {uuid.uuid4().int % 10_000:04d}"


async def seed_a_pipeline(base: str) -> None:
    """Leads all along the pipeline, so the list looks like a working day."""
    team = [("Priya Raman", "NEGOTIATING"), ("Marcus Webb", "PROPOSAL_SENT"),
            ("Sofia Alvarez", "QUALIFIED"), ("Tom Okafor", "CONTACTED"), ("Hannah Schulz", "WON"),
            ("Jun Park", "NEW"), ("Elena Petrova", "LOST"), ("Diego Costa", "CONTACTED")]
    await asyncio.gather(*(new_lead(base, name, status) for name, status in team))


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass
class Console:
    """One signed-in browser window on the console, watched for errors."""

    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)

    def watch(self, message: ConsoleMessage) -> None:
        if message.type not in {"error", "warning"}:
            return
        where = urlsplit(message.location.get("url") or "").path
        if message.text.startswith("Failed to load resource") and (
            where.startswith(API_PATHS)
            # A fetch the browser itself made (the favicon) while the test held it offline.
            or "ERR_INTERNET_DISCONNECTED" in message.text
        ):
            return
        if message.type == "warning" and "Content Security Policy" not in message.text:
            return
        self.problems.append(f"{message.type}: {message.text} ({where})")

    def assert_clean(self) -> None:
        assert self.problems == []

    async def log_in(self, who: str = "alice") -> None:
        await self.page.goto("/")
        await self.page.fill("#login-token", TOKENS[who])
        await self.page.click("#login-submit")
        await expect(self.page.locator("#app")).to_be_visible(timeout=WAIT)
        await expect(self.page.locator("#principal")).to_have_text(who)
        await self.live()

    async def live(self) -> None:
        await expect(self.page.locator("#connection")).to_have_attribute(
            "data-state", "live", timeout=WAIT)

    async def open_lead(self, lead: dict[str, Any]) -> None:
        await self.page.locator(f'.lead-row[data-lead-id="{lead["leadId"]}"] .lead-link').click()
        await expect(self.page.locator("#lead-head h2")).to_have_text(lead["name"])

    def row(self, lead: dict[str, Any]) -> Any:
        return self.page.locator(f'.lead-row[data-lead-id="{lead["leadId"]}"]')

    async def queued(self) -> list[dict[str, Any]]:
        raw = await self.page.evaluate("localStorage.getItem('closed-loop:presses:v1')")
        return json.loads(raw or "[]")  # type: ignore[no-any-return]

    async def new_tab(self, path: str = "/") -> Page:
        """Another tab of the same browser: same session, same localStorage."""
        page = await self.context.new_page()
        self.watch_page(page)
        await page.goto(path)
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "live", timeout=WAIT)
        return page

    def watch_page(self, page: Page) -> None:
        page.on("console", self.watch)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))

    async def screenshot(self, artifacts: Path, name: str, **options: Any) -> None:
        await self.page.screenshot(path=str(artifacts / f"console-{name}.png"), **options)


async def open_console(browser: Browser, system: System, **options: Any) -> Console:
    context = await browser.new_context(viewport=VIEWPORT, base_url=system.url, **options)
    await context.add_init_script(CSP_WATCH)
    page = await context.new_page()
    console = Console(context, page)
    console.watch_page(page)
    return console


# -- the tests --------------------------------------------------------------------------------


async def test_a_user_logs_in_sees_the_leads_and_creates_one(
    browser: Browser, system: System, artifacts: Path
) -> None:
    await seed_a_pipeline(system.url)
    known = await new_lead(system.url, unique_name("Katherine Johnson"), "QUALIFIED")
    console = await open_console(browser, system)
    page = console.page
    await page.goto("/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#login-token", "not-a-token")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("INVALID_TOKEN")

    await console.log_in()
    await expect(console.row(known).locator(".badge")).to_have_text("Qualified")

    hostile = f'<img src=x onerror="document.title=1"> {uuid.uuid4().hex[:6]}'
    await page.click("#new-lead summary")
    await page.fill("#lead-form [name=name]", hostile)
    await page.fill("#lead-form [name=phone]", "415 555 0134")
    await page.fill("#lead-form [name=email]", "grace@example.com")
    await page.click("#lead-form button[type=submit]")
    # Made and selected; its name shows as typed, never as markup.
    await expect(page.locator("#lead-head h2")).to_have_text(hostile, timeout=WAIT)
    await expect(page.locator(".lead-row.selected .lead-name")).to_have_text(hostile)
    assert await page.locator("#app img").count() == 0
    assert await page.title() != "1"
    await expect(page.locator("#lead-head .badge")).to_have_text("New")
    await expect(page.locator("#lead-head")).to_contain_text("+1 415 555 0134")
    await expect(page.locator("[data-control=create-lead]")).to_contain_text("Created")

    # A refusal puts the server's field violation next to its field.
    await page.fill("#lead-form [name=name]", "No Phone Person")
    await page.fill("#lead-form [name=phone]", "12")
    await page.click("#lead-form button[type=submit]")
    await expect(page.locator('#lead-form .field-error[data-for="phone"]')).to_contain_text(
        "not a", timeout=WAIT)
    await expect(page.locator("[data-control=create-lead] .reason")).to_have_text(
        re.compile("INVALID"))
    await page.click("#new-lead summary")

    await console.open_lead(known)
    await console.screenshot(artifacts, "leads-list")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    console.assert_clean()
    await console.context.close()


async def test_a_confirmation_in_one_window_shows_at_once_in_another(
    browser: Browser, system: System, artifacts: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Ada Lovelace"), "CONTACTED")
    appointment = await new_appointment(
        system.url, lead["leadId"], f"agent-{uuid.uuid4().hex[:6]}",
        "2030-03-14T15:00:00Z", "2030-03-14T15:30:00Z", notes="Demo of the Pro plan")
    mine, theirs = await open_console(browser, system), await open_console(browser, system)
    await mine.log_in("alice")
    await theirs.log_in("bob")
    for console in (mine, theirs):
        await console.open_lead(lead)
    await theirs.page.evaluate("window.notReloaded = true")
    their_badge = theirs.page.locator(
        f'#appointments [data-appointment-id="{appointment["appointmentId"]}"] .badge')
    await expect(their_badge).to_have_text("Pending")

    await mine.page.click(f'button[data-key="confirm:{appointment["appointmentId"]}"]')

    await expect(their_badge).to_have_text("Confirmed", timeout=WAIT)
    await expect(theirs.page.locator("#appointments")).to_contain_text("confirmed by alice")
    await expect(theirs.page.locator("#feed")).to_contain_text(
        f"alice confirmed {lead['name']}'s appointment")
    assert await theirs.page.evaluate("window.notReloaded") is True

    # A text and a status move show up the same way.
    await mine.page.fill("#sms-body", "Hi! Looking forward to our demo on Thursday at 3pm.")
    await mine.page.click("#sms-send")
    await expect(theirs.page.locator("#messages .message").first).to_contain_text(
        "Looking forward", timeout=WAIT)
    await expect(theirs.page.locator("#messages .message .status").first).to_have_text(
        "Delivered", timeout=WAIT)
    await mine.page.click('#status-actions button[data-status="QUALIFIED"]')
    await expect(theirs.page.locator("#lead-head .badge")).to_have_text("Qualified", timeout=WAIT)
    await expect(theirs.row(lead).locator(".badge")).to_have_text("Qualified")
    await expect(theirs.page.locator("#audit tr").first).to_contain_text("alice")

    await mine.page.set_viewport_size({"width": 1440, "height": 1500})
    await mine.screenshot(artifacts, "lead-detail")
    for console in (mine, theirs):
        console.assert_clean()
        await console.context.close()


async def test_a_press_made_offline_is_queued_and_takes_effect_once_back_online(
    browser: Browser, system: System, artifacts: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Grace Hopper"))
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(lead)

    await console.context.set_offline(True)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    await page.click('#status-actions button[data-status="CONTACTED"]')
    # Shown at once, marked as not yet sent, and kept in localStorage.
    await expect(page.locator("#queue-title")).to_have_text("1 press waiting to send")
    await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "queued")
    await expect(page.locator("#lead-head .badge")).to_contain_text("Contacted")
    await expect(page.locator("#status-press")).to_contain_text("Waiting for the connection")
    queued = await console.queued()
    assert [(q["path"], q["body"]["status"]) for q in queued] == [
        (f"/v1/leads/{lead['leadId']}:updateStatus", "CONTACTED")]
    # Meanwhile someone else adds a lead: it shows once the page is back.
    other = await new_lead(system.url, unique_name("Alan Turing"))
    await console.screenshot(artifacts, "offline-queue")

    await console.context.set_offline(False)
    await expect(page.locator("#queue-panel")).to_be_hidden(timeout=WAIT)
    await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "false")
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted")
    await console.live()
    await expect(page.locator("#feed")).to_contain_text(f"bob added {other['name']}",
                                                        timeout=WAIT)

    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [
        ("CONTACTED", queued[0]["key"])]

    # The same press sent once more, as a request that did reach the server before
    # the connection dropped would be: the stored answer, and still one change.
    replay = await page.evaluate(
        """async ([path, body, key, csrf]) => {
             const response = await fetch(path, {method: "POST", body: JSON.stringify(body),
               headers: {"Content-Type": "application/json", "Idempotency-Key": key,
                         "X-CSRF-Token": csrf}});
             return [response.status, response.headers.get("Idempotent-Replayed")];
           }""",
        [queued[0]["path"], queued[0]["body"], queued[0]["key"],
         (await page.evaluate("fetch('/auth/session').then(r => r.json())"))["csrfToken"]])
    assert replay == [200, "true"]
    assert len(await status_changes(system.url, lead["leadId"])) == 1
    console.assert_clean()
    await console.context.close()


async def test_the_event_stream_resumes_where_it_stopped_when_the_gateway_comes_back(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Joan Clarke"))
    gateway = await asyncio.to_thread(gateway_process(
        tmp_path, system.leads.target, system.bookings.target, system.messaging.target).start)
    restarted: ServiceProcess | None = None
    try:
        own = System(system.leads, system.bookings, system.messaging, gateway, tmp_path)
        console = await open_console(browser, own)
        page = console.page
        streams: list[Request] = []
        page.on("request", lambda request: streams.append(request)
                if urlsplit(request.url).path == "/v1/events" else None)
        await console.log_in()
        await console.open_lead(lead)

        assert await asyncio.to_thread(gateway.terminate) == 0
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "reconnecting", timeout=WAIT)
        # Changes made while this window cannot hear them (through the other gateway).
        await api(system.url, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                  {"status": "CONTACTED"})
        await api(system.url, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                  {"status": "QUALIFIED"})
        restarted = ServiceProcess("gateway", gateway.env, module="gateway", port=gateway.port)
        await asyncio.to_thread(restarted.start)

        await console.live()
        feed = page.locator("#feed .feed-item")
        await expect(feed.nth(0)).to_contain_text("from Contacted to Qualified", timeout=WAIT)
        await expect(feed.nth(1)).to_contain_text("from New to Contacted")
        await expect(page.locator("#lead-head .badge")).to_have_text("Qualified")
        await expect(page.locator("#audit tr")).to_have_count(2)
        # Reopened right after the last event it had (Last-Event-ID), not from the head.
        # (Attempts refused while the gateway was down carry no headers worth reading.)
        answered = [r for r in streams if await r.response() is not None]
        assert len(answered) >= 2
        for request in answered[1:]:
            headers = await request.all_headers()
            assert "last-event-id" in headers or "last_event_id=" in request.url, headers
        console.assert_clean()
        await console.context.close()
    finally:
        for process in (restarted, gateway):
            if process is not None and process.process is not None:
                await asyncio.to_thread(process.terminate)


async def test_a_press_whose_answer_was_lost_is_sent_again_with_its_key_and_applied_once(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Hedy Lamarr"))
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(lead)
    sent: list[tuple[str | None, int, str | None]] = []

    async def lose_the_first_answer(route: Route) -> None:
        response = await route.fetch()  # the server carries it out …
        key = route.request.headers.get("idempotency-key")
        sent.append((key, response.status, response.headers.get("idempotent-replayed")))
        if len(sent) == 1:
            await route.abort("internetdisconnected")  # … but its answer never arrives
        else:
            await route.fulfill(response=response)

    await page.route("**/v1/leads/*:updateStatus", lose_the_first_answer)
    await page.click('#status-actions button[data-status="QUALIFIED"]')

    await expect(page.locator("#lead-head .badge")).to_have_attribute(
        "data-pending", "false", timeout=WAIT)
    await expect(page.locator("#lead-head .badge")).to_have_text("Qualified")
    await expect(page.locator("#status-press")).to_contain_text("stored answer")
    key = sent[0][0]
    assert key and sent == [(key, 200, None), (key, 200, "true")]
    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [("QUALIFIED", key)]
    console.assert_clean()
    await console.context.close()


async def test_a_queued_press_survives_a_reload_and_is_sent_once(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Margaret Hamilton"), "QUALIFIED")
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(lead)

    async def unreachable(route: Route) -> None:
        await route.abort("connectionrefused")

    await page.route("**/v1/leads/*:updateStatus", unreachable)
    await page.click('#status-actions button[data-status="LOST"]')
    await expect(page.locator("#queue-title")).to_have_text("1 press waiting to send",
                                                            timeout=WAIT)
    key = (await console.queued())[0]["key"]

    await page.reload()
    await console.live()
    await expect(page.locator("#queue-title")).to_have_text("1 press waiting to send")
    await expect(page.locator("#lead-head .badge")).to_contain_text("Lost")
    await page.unroute("**/v1/leads/*:updateStatus")

    await expect(page.locator("#queue-panel")).to_be_hidden(timeout=15_000)
    await expect(page.locator("#lead-head .badge")).to_have_text("Lost")
    await expect(page.locator("#status-actions")).to_contain_text("Lost is final")
    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [
        ("QUALIFIED", changes[0]["idempotencyKey"]), ("LOST", key)]
    console.assert_clean()
    await console.context.close()


async def test_tabs_of_one_browser_share_the_queue_and_send_each_press_once(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Lynn Conway"), "PROPOSAL_SENT")
    console = await open_console(browser, system)
    await console.log_in()
    await console.open_lead(lead)
    other = await console.new_tab(f"/#lead={lead['leadId']}")
    posts: list[str] = []
    for page in (console.page, other):
        page.on("request", lambda request: posts.append(request.url)
                if request.url.endswith(":updateStatus") else None)

    await console.context.set_offline(True)
    await console.page.click('#status-actions button[data-status="NEGOTIATING"]')
    # The other tab sees the press waiting, and its effect, from the shared queue.
    await expect(other.locator("#queue-title")).to_have_text("1 press waiting to send")
    await expect(other.locator("#lead-head .badge")).to_have_attribute("data-pending", "queued")
    await expect(other.locator("#lead-head .badge")).to_contain_text("Negotiating")

    await console.context.set_offline(False)  # both tabs hear `online`; one sends
    for page in (console.page, other):
        await expect(page.locator("#queue-panel")).to_be_hidden(timeout=WAIT)
        await expect(page.locator("#lead-head .badge")).to_have_text("Negotiating")
        await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending",
                                                                          "false")
    assert len(posts) == 1
    changes = await status_changes(system.url, lead["leadId"])
    assert [c["toStatus"] for c in changes] == ["PROPOSAL_SENT", "NEGOTIATING"]
    console.assert_clean()
    await console.context.close()


async def test_the_bulk_change_reports_unchanged_leads_and_names_every_refused_one(
    browser: Browser, system: System, artifacts: Path
) -> None:
    fresh = await new_lead(system.url, unique_name("Mary Jackson"))
    contacted = await new_lead(system.url, unique_name("Dorothy Vaughan"), "CONTACTED")
    won = await new_lead(system.url, unique_name("Annie Easley"), "WON")
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(fresh)

    for lead in (fresh, contacted):
        await console.row(lead).locator(".row-check").check()
    await page.select_option("#bulk-status", "CONTACTED")
    await expect(page.locator("#bulk-count")).to_contain_text("1 will move · 1 unchanged")
    await page.click("#bulk-apply")
    result = page.locator("[data-control=bulk]")
    await expect(result).to_contain_text("Moved 1 lead to Contacted", timeout=WAIT)
    await expect(result).to_contain_text(f"unchanged (already Contacted): {contacted['name']}")
    await expect(console.row(fresh).locator(".badge")).to_have_text("Contacted")

    for lead in (fresh, contacted, won):
        await console.row(lead).locator(".row-check").check()
    await page.select_option("#bulk-status", "QUALIFIED")
    await expect(page.locator("#bulk-count")).to_contain_text("1 cannot move there")
    await page.click("#bulk-apply")
    await expect(result.locator(".alert")).to_contain_text("INVALID_STATUS_TRANSITION",
                                                           timeout=WAIT)
    await expect(result.locator(".offenders li")).to_have_count(1)
    await expect(result.locator(".offenders li")).to_contain_text(won["name"])
    await expect(result.locator(".offenders li")).to_contain_text("cannot move from won")
    # All or nothing: the two that could move did not, and the screen says so.
    await expect(console.row(fresh).locator(".badge")).to_have_text("Contacted")
    await expect(console.row(contacted).locator(".badge")).to_have_text("Contacted")
    assert [c["toStatus"] for c in await status_changes(system.url, fresh["leadId"])] == [
        "CONTACTED"]
    await console.screenshot(artifacts, "bulk-action")
    console.assert_clean()
    await console.context.close()


async def test_confirming_into_a_taken_slot_names_the_appointment_it_collides_with(
    browser: Browser, system: System
) -> None:
    agent = f"agent-{uuid.uuid4().hex[:6]}"
    first = await new_lead(system.url, unique_name("Barbara Liskov"))
    second = await new_lead(system.url, unique_name("Frances Allen"))
    taken = await new_appointment(system.url, first["leadId"], agent,
                                  "2030-05-01T10:00:00Z", "2030-05-01T11:00:00Z")
    await api(system.url, "POST", f"/v1/appointments/{taken['appointmentId']}:confirm", {})
    clashing = await new_appointment(system.url, second["leadId"], agent,
                                     "2030-05-01T10:30:00Z", "2030-05-01T11:30:00Z")
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(second)

    await page.click(f'button[data-key="confirm:{clashing["appointmentId"]}"]')
    item = page.locator(f'[data-appointment-id="{clashing["appointmentId"]}"]')
    await expect(item.locator(".alert")).to_contain_text("SLOT_TAKEN", timeout=WAIT)
    await expect(item.locator(".conflict")).to_contain_text(f"{first['name']} · {agent}")
    await expect(item.locator(".badge")).to_have_text("Pending")

    await page.click(f'button[data-key="cancel:{clashing["appointmentId"]}"]')
    await page.fill("#cancel-form [name=reason]", "Agent double-booked")
    await page.click('#cancel-form button[value="cancel"]')
    await expect(item.locator(".badge")).to_have_text("Cancelled", timeout=WAIT)
    await expect(item).to_contain_text("Agent double-booked")
    console.assert_clean()
    await console.context.close()


async def test_the_segment_counter_counts_as_carriers_do(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Radia Perlman"))
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(lead)
    counter = page.locator("#sms-counter")

    for body, text, segments in [
        ("a" * 160, "160 / 160 · 1 segment · GSM-7", "1"),
        ("a" * 161, "161 / 306 · 2 segments · GSM-7", "2"),
        ("€" * 80, "160 / 160 · 1 segment · GSM-7", "1"),  # extension characters count two
        ("ж" * 70, "70 / 70 · 1 segment · UCS-2", "1"),
        ("a" * 69 + "ж", "70 / 70 · 1 segment · UCS-2", "1"),
        ("ж" * 71, "71 / 134 · 2 segments · UCS-2", "2"),
    ]:
        await page.fill("#sms-body", body)
        await expect(counter.locator(".counter-text")).to_have_text(text)
        await expect(counter).to_have_attribute("data-segments", segments)
    await expect(counter).to_have_attribute("data-over", "true")
    await expect(counter).to_contain_text("over the 1-segment limit")

    # Sent anyway, the server refuses it and says why, next to the message box.
    await page.fill("#sms-body", "a" * 161)
    await page.click("#sms-send")
    await expect(page.locator("#sms-press .reason")).to_have_text("MESSAGE_TOO_LONG",
                                                                  timeout=WAIT)
    await expect(page.locator('#sms-form .field-error[data-for="body"]')).to_contain_text(
        "2 segments")
    await expect(page.locator("#sms-body")).to_have_value("a" * 161)  # given back to edit
    console.assert_clean()
    await console.context.close()


async def test_an_sms_provider_outage_pauses_the_send_button_and_nothing_else(
    browser: Browser, system: System, artifacts: Path, tmp_path: Path
) -> None:
    async with TwilioDouble(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as twilio:
        twilio.outage()
        messaging = ServiceProcess("messaging", service_env(
            tmp_path, "messaging", CRM_LEADS_TARGET=system.leads.target,
            TWILIO_ACCOUNT_SID=TWILIO_SID, TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
            TWILIO_FROM_NUMBER=TWILIO_FROM, TWILIO_API_BASE_URL=twilio.base_url,
            CRM_SMS_BREAKER_FAIL_MAX="1", CRM_SMS_RETRY_MAX_ATTEMPTS="1",
            CRM_SMS_BREAKER_RESET_SECONDS="5"))
        started = [await asyncio.to_thread(messaging.start)]
        try:
            gateway = gateway_process(tmp_path, system.leads.target, system.bookings.target,
                                      messaging.target)
            started.append(await asyncio.to_thread(gateway.start))
            outage = System(system.leads, system.bookings, messaging, gateway, tmp_path)
            await see_the_breaker_open(browser, outage, artifacts, twilio)
        finally:
            codes = await asyncio.to_thread(stop_all, started[::-1])
    assert codes == [("gateway", 0), ("messaging", 0)]


async def see_the_breaker_open(browser: Browser, system: System, artifacts: Path,
                               twilio: TwilioDouble) -> None:
    lead = await new_lead(system.url, unique_name("Katie Bouman"))
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await console.open_lead(lead)
    await expect(page.locator("#provider")).to_have_attribute("data-state", "CLOSED")

    await page.fill("#sms-body", "Your quote is ready: 3 seats, 12 months.")
    await page.click("#sms-send")
    refusal = page.locator("#sms-press .alert")
    await expect(refusal).to_contain_text("PROVIDER_CIRCUIT_OPEN", timeout=WAIT)
    await expect(refusal).to_contain_text(re.compile(r"Retry in \d+ s"))
    await expect(page.locator("#provider")).to_have_attribute("data-state", "OPEN",
                                                              timeout=WAIT)
    await expect(page.locator("#provider")).to_contain_text(
        re.compile(r"open until \d\d:\d\d:\d\d"))
    await expect(page.locator("#sms-send")).to_have_text("Sending paused")
    await expect(page.locator("#sms-send")).to_be_disabled()
    await expect(page.locator("#sms-paused")).to_contain_text("Everything else works")
    assert twilio.requests == 1  # one try, then the breaker answers for the provider
    await page.set_viewport_size({"width": 1440, "height": 1200})
    await console.screenshot(artifacts, "provider-open")

    # One button degraded, not the system: the pipeline still moves.
    await page.click('#status-actions button[data-status="CONTACTED"]')
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted", timeout=WAIT)
    await expect(page.locator("#status-press")).to_contain_text("Moved to Contacted")

    # Once the breaker lets a trial through, the same text goes out with its first
    # key: the service takes over the message it recorded, and one text is sent.
    twilio.recover()
    await expect(page.locator("#sms-send")).to_have_text("Send text", timeout=15_000)
    await expect(page.locator("#sms-body")).to_have_value(
        "Your quote is ready: 3 seats, 12 months.")
    await page.click("#sms-send")
    await expect(page.locator("#sms-press")).to_contain_text("Sent", timeout=WAIT)
    await expect(page.locator("#provider")).to_have_attribute("data-state", "CLOSED",
                                                              timeout=WAIT)
    await expect(page.locator("#messages .message")).to_have_count(1)
    history = await api(system.url, "GET", f"/v1/leads/{lead['leadId']}/messages")
    assert len(history["messages"]) == 1 and history["messages"][0]["providerMessageId"]
    assert len(twilio.sent_to(lead["phone"])) == 1
    console.assert_clean()
    await console.context.close()
