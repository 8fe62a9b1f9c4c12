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

from tests.support.servers import TOKENS, ServiceProcess, environment, wait_until
from tests.support.twilio_double import TwilioDouble

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
READ_QUEUE = """() => new Promise((resolve, reject) => {
  const opening = indexedDB.open("closed-loop");
  // No database yet: create none (the console would find it without its store).
  opening.onupgradeneeded = () => opening.transaction.abort();
  opening.onerror = () =>
    opening.error?.name === "AbortError" ? resolve([]) : reject(opening.error);
  opening.onsuccess = () => {
    const db = opening.result;
    if (!db.objectStoreNames.contains("presses")) { db.close(); resolve([]); return; }
    const get = db.transaction("presses").objectStore("presses").get("queue");
    get.onsuccess = () => { db.close(); resolve(get.result ?? []); };
    get.onerror = () => { db.close(); reject(get.error); };
  };
})"""
WAIT = 10_000  # ms: the longest any expectation waits
TWILIO_SID, TWILIO_TOKEN, TWILIO_FROM = "AC" + "c" * 32, "twilio-token-for-tests", "+15005550006"
# The browser may log its own line for every API refusal a test provokes and for
# requests cut off while offline; those are answers, not faults of the page.
API_PATHS = ("/auth/", "/v1/")
# axe-core from npm (tests/e2e/a11y, installed by `make test`): evaluated in the
# page through the DevTools protocol, which the console's CSP does not govern.
AXE = Path(__file__).resolve().parent / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
  }));
}"""
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


async def new_lead(base: str, name: str, status: str = "LEAD_STATUS_NEW") -> dict[str, Any]:
    lead = await api(base, "POST", "/v1/leads", {"name": name, "phone": phone()})
    if status != "LEAD_STATUS_NEW":
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
    await asyncio.gather(*(new_lead(base, name, f"LEAD_STATUS_{status}")
                           for name, status in team))


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
        await expect(self.page.locator("#principal")).to_have_text(
            who.split("@", maxsplit=1)[0].split("/", maxsplit=1)[0])
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
        """The presses in the browser's queue, as every tab reads it (IndexedDB)."""
        return await self.page.evaluate(READ_QUEUE)  # type: ignore[no-any-return]

    async def new_tab(self, path: str = "/") -> Page:
        """Another tab of the same browser: same session, same storage."""
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

    async def axe(self, screen: str, page: Page | None = None) -> None:
        """axe-core finds no accessibility violation on what `page` shows now."""
        page = page or self.page
        if not AXE.exists():
            pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci in tests/e2e/a11y)")
        if not await page.evaluate("typeof window.axe === 'object'"):
            await page.evaluate(AXE.read_text())
        violations = await page.evaluate(AXE_RUN)
        assert violations == [], f"axe on the {screen} screen: {json.dumps(violations, indent=1)}"


async def open_console(browser: Browser, system: System, **options: Any) -> Console:
    context = await browser.new_context(viewport=VIEWPORT, base_url=system.url, **options)
    await context.add_init_script(CSP_WATCH)
    page = await context.new_page()
    console = Console(context, page)
    console.watch_page(page)
    return console


async def console_on_lead(browser: Browser, system: System, lead: dict[str, Any]) -> Console:
    """A console signed in as alice, on `lead`'s page."""
    console = await open_console(browser, system)
    await console.log_in()
    await console.open_lead(lead)
    return console


# -- the tests --------------------------------------------------------------------------------


async def test_a_user_logs_in_sees_the_leads_and_creates_one(
    browser: Browser, system: System, artifacts: Path
) -> None:
    await seed_a_pipeline(system.url)
    known = await new_lead(system.url, unique_name("Katherine Johnson"), "LEAD_STATUS_QUALIFIED")
    console = await open_console(browser, system)
    page = console.page
    await page.goto("/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#login-token", "not-a-token")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("INVALID_TOKEN")
    await expect(page.locator("#login-error")).to_contain_text("That token was not accepted")
    await console.axe("sign-in")

    await console.log_in()
    await expect(console.row(known).locator(".badge")).to_have_text("Qualified")

    hostile = f'<img src=x onerror="document.title=1"> {uuid.uuid4().hex[:6]}'
    await page.click("#new-lead summary")
    await page.fill("#lead-form [name=name]", hostile)
    # A number no other lead has (phone() draws from 0100-0199): a known one
    # would rightly get the duplicate-number warning instead.
    await page.fill("#lead-form [name=phone]", "415 555 0034")
    await page.fill("#lead-form [name=email]", "grace@example.com")
    await page.click("#lead-form button[type=submit]")
    # Made and selected; its name shows as typed, never as markup.
    await expect(page.locator("#lead-head h2")).to_have_text(hostile, timeout=WAIT)
    await expect(page.locator(".lead-row.selected .lead-name")).to_have_text(hostile)
    assert await page.locator("#app img").count() == 0
    assert await page.title() != "1"
    await expect(page.locator("#lead-head .badge")).to_have_text("New")
    await expect(page.locator("#lead-head")).to_contain_text("+1 415-555-0034")
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
    await console.axe("lead")
    await console.screenshot(artifacts, "leads-list")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    console.assert_clean()
    await console.context.close()


async def test_a_viewer_reads_everything_and_sees_no_button_that_would_be_refused(
    browser: Browser, system: System, artifacts: Path,
) -> None:
    lead = await new_lead(system.url, unique_name("Dorothy Vaughan"), "LEAD_STATUS_QUALIFIED")
    await new_appointment(system.url, lead["leadId"], f"agent-{uuid.uuid4().hex[:6]}",
                          "2030-04-14T15:00:00Z", "2030-04-14T15:30:00Z")
    await api(system.url, "POST", "/v1/messages", {"leadId": lead["leadId"], "body": "Hello"})
    console = await open_console(browser, system)
    page = console.page
    await page.goto("/")
    await page.fill("#login-token", TOKENS["gateway"])
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text(
        "A service's token cannot sign in to the console")
    await console.log_in("vera/viewer")
    await expect(page.locator("#identity")).to_have_text("in default · viewer, read-only")
    await console.open_lead(lead)
    await expect(page.locator("#appointments li")).to_have_count(1, timeout=WAIT)
    await expect(page.locator("#messages li")).to_have_count(1, timeout=WAIT)
    await expect(page.locator("#stepper")).to_be_visible()
    writes = ["Create lead", "Apply", "Mark lost", "Confirm", "Complete", "Cancel…",
              "Book appointment", "Send text", "Send now", "Manage templates…"]
    shown = await page.locator("#app button:visible").all_inner_texts()
    assert [text for text in shown if text.strip() in writes] == []
    for hidden in ("#new-lead", "#status-actions", "#appointment-form", "#sms-form",
                   ".appointment-actions", ".row-check", "#check-all"):
        await expect(page.locator(hidden).first).to_be_hidden()
    await console.axe("viewer")
    await console.screenshot(artifacts, "viewer")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()

    await console.log_in("carol@acme")
    await expect(page.locator("#identity")).to_have_text("in acme")
    await expect(page.locator("#new-lead")).to_be_visible()
    console.assert_clean()
    await console.context.close()


async def test_a_confirmation_in_one_window_shows_at_once_in_another(
    browser: Browser, system: System, artifacts: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Ada Lovelace"), "LEAD_STATUS_CONTACTED")
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
    await expect(theirs.page.locator("#appointments")).to_contain_text(
        re.compile(r"Confirmed by alice · \w+"))
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
    await mine.page.click('#status-actions button[data-status="LEAD_STATUS_QUALIFIED"]')
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
    console = await console_on_lead(browser, system, lead)
    page = console.page

    await console.context.set_offline(True)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    await page.click('#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
    # Shown at once, marked as not yet sent, and kept in the browser (IndexedDB).
    await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send")
    await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "queued")
    await expect(page.locator("#lead-head .badge")).to_contain_text("Contacted")
    await expect(page.locator("#status-press")).to_contain_text("Waiting for the connection")
    queued = await console.queued()
    assert [(q["path"], q["body"]["status"]) for q in queued] == [
        (f"/v1/leads/{lead['leadId']}:updateStatus", "LEAD_STATUS_CONTACTED")]
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
        ("LEAD_STATUS_CONTACTED", queued[0]["key"])]

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
                  {"status": "LEAD_STATUS_CONTACTED"})
        await api(system.url, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                  {"status": "LEAD_STATUS_QUALIFIED"})
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
    console = await console_on_lead(browser, system, lead)
    page = console.page
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
    await page.click('#status-actions button[data-status="LEAD_STATUS_QUALIFIED"]')

    await expect(page.locator("#lead-head .badge")).to_have_attribute(
        "data-pending", "false", timeout=WAIT)
    await expect(page.locator("#lead-head .badge")).to_have_text("Qualified")
    await expect(page.locator("#status-press")).to_contain_text("Moved to Qualified")
    key = sent[0][0]
    assert key and sent == [(key, 200, None), (key, 200, "true")]
    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [
        ("LEAD_STATUS_QUALIFIED", key)]
    console.assert_clean()
    await console.context.close()


async def test_a_queued_press_survives_a_reload_and_is_sent_once(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Margaret Hamilton"), "LEAD_STATUS_QUALIFIED")
    console = await console_on_lead(browser, system, lead)
    page = console.page

    async def unreachable(route: Route) -> None:
        await route.abort("connectionrefused")

    await page.route("**/v1/leads/*:updateStatus", unreachable)
    await page.click('#status-actions button[data-status="LEAD_STATUS_LOST"]')
    await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send",
                                                            timeout=WAIT)
    key = (await console.queued())[0]["key"]

    await page.reload()
    await console.live()
    await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send")
    await expect(page.locator("#lead-head .badge")).to_contain_text("Lost")
    await page.unroute("**/v1/leads/*:updateStatus")

    await expect(page.locator("#queue-panel")).to_be_hidden(timeout=15_000)
    await expect(page.locator("#lead-head .badge")).to_have_text("Lost")
    await expect(page.locator("#status-actions")).to_contain_text("Lost is final")
    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [
        ("LEAD_STATUS_QUALIFIED", changes[0]["idempotencyKey"]), ("LEAD_STATUS_LOST", key)]
    console.assert_clean()
    await console.context.close()


async def test_tabs_of_one_browser_share_the_queue_and_send_each_press_once(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Lynn Conway"), "LEAD_STATUS_PROPOSAL_SENT")
    console = await open_console(browser, system)
    await console.log_in()
    await console.open_lead(lead)
    other = await console.new_tab(f"/#lead={lead['leadId']}")
    posts: list[str] = []
    for page in (console.page, other):
        page.on("request", lambda request: posts.append(request.url)
                if request.url.endswith(":updateStatus") else None)

    await console.context.set_offline(True)
    await console.page.click('#status-actions button[data-status="LEAD_STATUS_NEGOTIATING"]')
    # The other tab sees the press waiting, and its effect, from the shared queue.
    await expect(other.locator("#queue-title")).to_have_text("1 change waiting to send")
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
    assert [c["toStatus"] for c in changes] == ["LEAD_STATUS_PROPOSAL_SENT",
                                                "LEAD_STATUS_NEGOTIATING"]
    console.assert_clean()
    await console.context.close()


async def test_a_press_an_earlier_console_left_in_local_storage_is_sent_once(
    browser: Browser, system: System
) -> None:
    """Earlier versions kept the queue in localStorage: after the update it is sent, once."""
    lead = await new_lead(system.url, unique_name("Karen Spärck Jones"))
    console = await console_on_lead(browser, system, lead)
    page = console.page
    key = str(uuid.uuid4())
    path = f"/v1/leads/{lead['leadId']}:updateStatus"
    press = {
        "id": str(uuid.uuid4()), "key": key, "control": f"lead:{lead['leadId']}",
        "label": f"Move {lead['name']} to Contacted",
        "intent": {"kind": "lead.status", "leadId": lead["leadId"],
                   "status": "LEAD_STATUS_CONTACTED"},
        "method": "POST", "path": path, "body": {"status": "LEAD_STATUS_CONTACTED"},
        "signature": "old", "principal": "alice", "pressedAt": "2026-12-01T09:00:00Z",
        "attempts": 1, "held": True, "problem": None,
    }
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url)
            if request.url.endswith(":updateStatus") else None)
    await page.evaluate("(press) => localStorage.setItem('closed-loop:presses:v1', "
                        "JSON.stringify([press]))", press)

    await page.reload()
    await console.live()
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted", timeout=WAIT)
    await expect(page.locator("#queue-panel")).to_be_hidden(timeout=WAIT)
    assert await page.evaluate("localStorage.getItem('closed-loop:presses:v1')") is None
    assert await console.queued() == []
    assert len(posts) == 1
    changes = await status_changes(system.url, lead["leadId"])
    assert [(c["toStatus"], c["idempotencyKey"]) for c in changes
            if c["toStatus"] != "LEAD_STATUS_NEW"] == [("LEAD_STATUS_CONTACTED", key)]
    console.assert_clean()
    await console.context.close()


async def test_the_bulk_change_reports_unchanged_leads_and_names_every_refused_one(
    browser: Browser, system: System, artifacts: Path
) -> None:
    fresh = await new_lead(system.url, unique_name("Mary Jackson"))
    contacted = await new_lead(system.url, unique_name("Dorothy Vaughan"), "LEAD_STATUS_CONTACTED")
    won = await new_lead(system.url, unique_name("Annie Easley"), "LEAD_STATUS_WON")
    console = await console_on_lead(browser, system, fresh)
    page = console.page

    for lead in (fresh, contacted):
        await console.row(lead).locator(".row-check").check()
    await page.select_option("#bulk-status", "LEAD_STATUS_CONTACTED")
    await expect(page.locator("#bulk-count")).to_contain_text("1 will move · 1 unchanged")
    await page.click("#bulk-apply")
    result = page.locator("[data-control=bulk]")
    await expect(result).to_contain_text("Moved 1 lead to Contacted", timeout=WAIT)
    await expect(result).to_contain_text(f"unchanged (already Contacted): {contacted['name']}")
    await expect(console.row(fresh).locator(".badge")).to_have_text("Contacted")

    # All or nothing: a lead that cannot move would stop the whole batch, so the
    # screen names it, says why, and keeps Apply off until it is unselected.
    for lead in (fresh, contacted, won):
        await console.row(lead).locator(".row-check").check()
    await page.select_option("#bulk-status", "LEAD_STATUS_QUALIFIED")
    await expect(page.locator("#bulk-count")).to_contain_text("2 will move · 1 cannot move there")
    await expect(page.locator("#bulk-blocked li")).to_have_count(1)
    await expect(page.locator("#bulk-blocked")).to_contain_text(
        f"{won['name']} is Won, which is final")
    await expect(page.locator("#bulk-apply")).to_be_disabled()
    await console.screenshot(artifacts, "bulk-blocked")
    await console.axe("bulk change")
    await console.row(won).locator(".row-check").uncheck()
    await expect(page.locator("#bulk-apply")).to_be_enabled()
    await page.click("#bulk-apply")
    await expect(result).to_contain_text("Moved 2 leads to Qualified", timeout=WAIT)
    for lead in (fresh, contacted):
        await expect(console.row(lead).locator(".badge")).to_have_text("Qualified")
    assert [c["toStatus"] for c in await status_changes(system.url, won["leadId"])] == [
        "LEAD_STATUS_WON"]
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
    console = await console_on_lead(browser, system, second)
    page = console.page

    await page.click(f'button[data-key="confirm:{clashing["appointmentId"]}"]')
    item = page.locator(f'[data-appointment-id="{clashing["appointmentId"]}"]')
    await expect(item.locator(".alert")).to_contain_text("SLOT_TAKEN", timeout=WAIT)
    await expect(item.locator(".alert")).to_contain_text(
        "The agent already has a confirmed appointment at that time.")
    await expect(item.locator(".conflict")).to_contain_text(f"{first['name']} · {agent}")
    await expect(item.locator(".badge")).to_have_text("Pending")
    await console.axe("a refusal")

    await page.click(f'button[data-key="cancel:{clashing["appointmentId"]}"]')
    await console.axe("cancel dialog")
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
    console = await console_on_lead(browser, system, lead)
    page = console.page
    counter = page.locator("#sms-counter")

    # The room shown is the room the limit allows (one segment here), never more.
    for body, text, segments in [
        ("a" * 160, "160 / 160 · 1 segment · GSM-7", "1"),
        ("a" * 161, "161 / 160 · 2 segments · GSM-7", "2"),
        ("€" * 80, "160 / 160 · 1 segment · GSM-7", "1"),  # extension characters count two
        ("ж" * 70, "70 / 70 · 1 segment · UCS-2", "1"),
        ("a" * 69 + "ж", "70 / 70 · 1 segment · UCS-2", "1"),
        ("ж" * 71, "71 / 70 · 2 segments · UCS-2", "2"),
    ]:
        await page.fill("#sms-body", body)
        await expect(counter.locator(".counter-text")).to_have_text(text)
        await expect(counter).to_have_attribute("data-segments", segments)
        # A text over the limit cannot be sent: the server would only refuse it.
        if segments == "1":
            await expect(page.locator("#sms-send")).to_be_enabled()
        else:
            await expect(page.locator("#sms-send")).to_be_disabled()
    await expect(counter).to_have_attribute("data-over", "true")
    await expect(counter).to_contain_text("too long: at most 1 segment")
    await page.locator("#sms-body").press("Control+Enter")  # the keyboard shortcut neither
    await expect(page.locator("#sms-press")).to_be_empty()
    assert (await api(system.url, "GET", f"/v1/leads/{lead['leadId']}/messages")).get(
        "messages", []) == []
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
    console = await console_on_lead(browser, system, lead)
    page = console.page
    await expect(page.locator("#provider")).to_have_attribute("data-state", "CLOSED")
    keys: list[str | None] = []
    page.on("request", lambda r: keys.append(r.headers.get("idempotency-key"))
            if urlsplit(r.url).path == "/v1/messages" and r.method == "POST" else None)

    # Two texts pressed one after the other; the first trips the breaker, the
    # second meets it open. The first is held on its way until both are pressed.
    first_pressed = asyncio.Event()

    async def hold_the_first(route: Route) -> None:
        await first_pressed.wait()
        await route.continue_()

    await page.route("**/v1/messages", hold_the_first)
    texts = ["Your quote is ready: 3 seats, 12 months.", "PS: the offer holds until Friday."]
    for text in texts:
        await page.fill("#sms-body", text)
        await page.click("#sms-send")
    first_pressed.set()
    refusal = page.locator("#sms-press .alert")
    await expect(refusal).to_contain_text("texting is paused", timeout=WAIT)
    await expect(refusal.locator(".reason")).to_have_text("PROVIDER_CIRCUIT_OPEN")
    await page.unroute("**/v1/messages")
    await expect(page.locator("#provider")).to_have_attribute("data-state", "OPEN",
                                                              timeout=WAIT)
    await expect(page.locator("#provider")).to_contain_text(
        re.compile(r"paused until \d\d:\d\d:\d\d"))
    await expect(page.locator("#sms-send")).to_have_text("Texting paused")
    await expect(page.locator("#sms-send")).to_be_disabled()
    await expect(page.locator("#sms-paused")).to_contain_text("Everything else works")
    assert twilio.requests == 1  # one try, then the breaker answers for the provider
    assert len(keys) == 2 and keys[0] != keys[1]
    await page.set_viewport_size({"width": 1440, "height": 1200})
    await console.screenshot(artifacts, "provider-open")

    # One button degraded, not the system: the pipeline still moves.
    await page.click('#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted", timeout=WAIT)
    await expect(page.locator("#status-press")).to_contain_text("Moved to Contacted")

    await send_the_held_texts(console, system, twilio, lead, texts=texts, keys=keys)


async def send_the_held_texts(console: Console, system: System, twilio: TwilioDouble,
                              lead: dict[str, Any], *, texts: list[str],
                              keys: list[str | None]) -> None:
    page = console.page
    # A reload forgets nothing: each held text is in the history, not sent, with
    # a Send now that waits for texting to resume.
    await page.reload()
    await console.live()
    held = page.locator('#messages .message[data-waiting="true"]')
    await expect(held).to_have_count(2, timeout=WAIT)
    await expect(held.first).to_contain_text("Not sent yet")
    await expect(held.first.locator("button")).to_have_text("Send now")
    await expect(held.first.locator("button")).to_be_disabled()
    await console.axe("texting-paused")

    # Once texting works again: one of them retyped goes out with its first key,
    # and one press sends the other, with its own.
    twilio.recover()
    banner = page.locator("#stranded-panel")
    await expect(banner).to_contain_text("2 texts were not sent", timeout=15_000)
    await page.fill("#sms-body", texts[0])
    await page.click("#sms-send")
    await expect(banner).to_contain_text("1 text was not sent", timeout=WAIT)
    await page.click("#stranded-send")
    await expect(page.locator("#sms-press")).to_contain_text("Sent", timeout=WAIT)
    await expect(held).to_have_count(0, timeout=WAIT)
    await expect(banner).to_be_hidden()
    await expect(page.locator("#provider")).to_have_attribute("data-state", "CLOSED",
                                                              timeout=WAIT)
    # The press queue sends one press at a time: the held text's press goes out
    # after the retyped one's answer, so its "Sent" comes a moment later.
    history: dict[str, Any] = {}

    async def both_sent() -> bool:
        history.update(await api(system.url, "GET", f"/v1/leads/{lead['leadId']}/messages"))
        return all(m["providerMessageId"] for m in history["messages"])

    await wait_until(both_sent, within=WAIT / 1000)
    assert sorted(m["body"] for m in history["messages"]) == sorted(texts)
    assert len(twilio.sent_to(lead["phone"])) == 2
    assert sorted(keys[2:]) == sorted(keys[:2])  # the same two presses, sent once more
    await expect(page.locator("#messages .message")).to_have_count(2)
    console.assert_clean()
    await console.context.close()


# -- presses that do not mislead ------------------------------------------------------------


async def test_a_double_click_moves_a_lead_and_confirms_an_appointment_once_without_an_error(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Evelyn Boyd"))
    appointment = await new_appointment(system.url, lead["leadId"], f"agent-{uuid.uuid4().hex[:6]}",
                                        "2030-06-01T10:00:00Z", "2030-06-01T10:30:00Z")
    console = await console_on_lead(browser, system, lead)
    page = console.page
    keys: list[str | None] = []
    page.on("request", lambda r: keys.append(r.headers.get("idempotency-key"))
            if r.method == "POST" and urlsplit(r.url).path.startswith("/v1/") else None)

    await page.dblclick('#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted", timeout=WAIT)
    await expect(page.locator("#status-press")).to_contain_text("Moved to Contacted")
    await page.dblclick(f'button[data-key="confirm:{appointment["appointmentId"]}"]')
    item = page.locator(f'[data-appointment-id="{appointment["appointmentId"]}"]')
    await expect(item.locator(".badge")).to_have_text("Confirmed", timeout=WAIT)
    await expect(page.locator("#app .alert-error")).to_have_count(0)
    # Not Contacted twice, and the second click did not land on Qualified either.
    changes = await status_changes(system.url, lead["leadId"])
    assert [c["toStatus"] for c in changes] == ["LEAD_STATUS_CONTACTED"]
    # The badge may turn by the realtime event before Playwright hands this test the
    # confirm's request event: wait for it, then count.
    await wait_until(lambda: len(keys) >= 2, within=10, interval=0.05)
    assert len(keys) == 2 and keys[0] != keys[1]
    console.assert_clean()
    await console.context.close()


async def test_presses_faster_than_the_screen_are_one_press_with_one_key(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Annie Easley"))
    console = await console_on_lead(browser, system, lead)
    page = console.page
    keys: list[str | None] = []
    page.on("request", lambda r: keys.append(r.headers.get("idempotency-key"))
            if r.url.endswith(":updateStatus") else None)
    # Three clicks in one task (a bouncing touch screen, a held Enter): the
    # screen cannot redraw between them.
    await page.locator('#status-actions button[data-status="LEAD_STATUS_QUALIFIED"]').evaluate(
        "(button) => { button.click(); button.click(); button.click(); }")
    await expect(page.locator("#lead-head .badge")).to_have_text("Qualified", timeout=WAIT)
    await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "false")
    await expect(page.locator("#app .alert-error")).to_have_count(0)
    assert len(set(keys)) == 1
    assert [c["toStatus"] for c in await status_changes(system.url, lead["leadId"])] == [
        "LEAD_STATUS_QUALIFIED"]
    console.assert_clean()
    await console.context.close()


async def test_a_refusal_that_says_it_already_happened_reads_as_done(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Gladys West"))
    console = await console_on_lead(browser, system, lead)
    page = console.page
    # Someone else makes the same move while this press is on its way.
    async def someone_else_first(route: Route) -> None:
        await api(system.url, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                  {"status": "LEAD_STATUS_CONTACTED"})
        await route.continue_()

    await page.route("**/v1/leads/*:updateStatus", someone_else_first)
    await page.click('#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
    await expect(page.locator("#status-press")).to_contain_text("it had already been done",
                                                               timeout=WAIT)
    await expect(page.locator("#status-press .alert")).to_have_count(0)
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted")
    console.assert_clean()
    await console.context.close()


# -- the workflow: confirm → text → move on ------------------------------------------------


async def add_a_template(console: Console, name: str, body: str) -> None:
    """A template of the team's own, made in the console's dialog."""
    page = console.page
    await page.click("#templates-open")
    dialog = page.locator("#templates-dialog")
    await expect(dialog).to_be_visible()
    await dialog.locator("[name=name]").fill(name)
    await dialog.locator("[name=body]").fill("Hi {frist_name}")
    await dialog.locator("button[type=submit]").click()
    await expect(dialog.locator('.field-error[data-for="body"]')).to_contain_text(
        "Unknown placeholder {frist_name}")
    await dialog.locator("[name=body]").fill(body)
    await expect(page.locator("#template-preview")).to_contain_text("Ada Lovelace would get")
    await dialog.locator("button[type=submit]").click()
    await expect(dialog.locator(".template-item", has_text=name)).to_be_visible(timeout=WAIT)
    await console.axe("templates dialog")
    await page.click("#templates-close")


async def test_the_guided_follow_up_confirms_texts_and_moves_the_lead_each_once(
    browser: Browser, system: System, artifacts: Path
) -> None:
    first_name = f"Ada{uuid.uuid4().hex[:4]}"
    lead = await new_lead(system.url, f"{first_name} Lovelace")
    appointment = await new_appointment(system.url, lead["leadId"], f"agent-{uuid.uuid4().hex[:6]}",
                                        "2030-03-01T15:00:00Z", "2030-03-01T15:30:00Z")
    console = await console_on_lead(browser, system, lead)
    page = console.page
    posts: list[tuple[str, str | None]] = []
    page.on("request", lambda r: posts.append((urlsplit(r.url).path, r.headers.get(
        "idempotency-key"))) if r.method == "POST" and r.url.find("/v1/") > 0 else None)

    await add_a_template(console, f"Confirmed {uuid.uuid4().hex[:4]}",
                         "See you {appointment_time}, {first_name}!")

    # Confirm: the follow-up opens on the card, its text made from the template.
    await page.click(f'button[data-key="confirm:{appointment["appointmentId"]}"]')
    flow = page.locator("#flow")
    await expect(flow.locator(".flow-current")).to_contain_text("Text the lead", timeout=WAIT)
    await expect(page.locator("#flow-template")).to_have_value(re.compile(".+"))
    text = page.locator("#flow-text")
    await expect(text).to_have_value(re.compile(rf"^See you \w.* at \d\d:\d\d, {first_name}!$"))
    await expect(page.locator("#appointments")).to_contain_text("Confirmed by alice")
    await console.axe("follow-up")
    await text.fill(f"See you on Friday at 15:00, {first_name}!")

    # Interrupted: the text cannot leave, then the page is reloaded. It resumes
    # with the same key and goes out once.
    await page.route("**/v1/messages", lambda route: route.abort("connectionrefused"))
    await page.click(f'button[data-key="flow-send:{appointment["appointmentId"]}"]')
    await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send",
                                                            timeout=WAIT)
    await page.reload()
    await console.live()
    await expect(flow.locator(".flow-current")).to_contain_text("Text the lead")
    await page.unroute("**/v1/messages")
    await expect(flow.locator(".flow-current")).to_contain_text("Move the lead on",
                                                                timeout=15_000)
    await page.select_option("#flow-status", "LEAD_STATUS_QUALIFIED")
    await page.set_viewport_size({"width": 1440, "height": 1100})
    await console.screenshot(artifacts, "follow-up")
    await page.click(f'button[data-key="flow-move:{appointment["appointmentId"]}"]')
    await expect(flow.locator(".flow-summary")).to_have_text(
        "✓ Confirmed · texted · moved to Qualified.", timeout=WAIT)
    await expect(page.locator("#lead-head .badge")).to_have_text("Qualified")

    # Each step once, each with its own key; the interrupted one kept its key.
    messages = (await api(system.url, "GET", f"/v1/leads/{lead['leadId']}/messages"))["messages"]
    assert [m["body"] for m in messages] == [f"See you on Friday at 15:00, {first_name}!"]
    assert [c["toStatus"] for c in await status_changes(system.url, lead["leadId"])] == [
        "LEAD_STATUS_QUALIFIED"]
    confirmed = await api(system.url, "GET", f"/v1/appointments/{appointment['appointmentId']}")
    assert (confirmed["status"], confirmed["confirmedBy"]) == ("APPOINTMENT_STATUS_CONFIRMED",
                                                             "alice")
    by_path: dict[str, set[str | None]] = {}
    for path, key in posts:
        by_path.setdefault(path.rsplit(":", 1)[-1].rsplit("/", 1)[-1], set()).add(key)
    assert len(by_path["messages"]) == 1  # every attempt at the text: one key
    step_keys = [by_path["confirm"], by_path["messages"], by_path["updateStatus"]]
    assert all(len(keys) == 1 for keys in step_keys)
    assert len(set().union(*step_keys)) == 3
    await page.click(f'button[data-key="flow-close:{appointment["appointmentId"]}"]')
    await expect(flow).to_be_hidden()
    console.assert_clean()
    await console.context.close()


# -- data a user expects -------------------------------------------------------------------


async def test_a_second_lead_with_a_known_number_is_a_warning_naming_the_first(
    browser: Browser, system: System
) -> None:
    number = f"+1 415 555 {random.randint(200, 999):04d}"
    first = await api(system.url, "POST", "/v1/leads",
                      {"name": unique_name("Mary Jackson"), "phone": number})
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await page.click("#new-lead summary")
    name = unique_name("Mary Jackson Jr")
    await page.fill("#lead-form [name=name]", name)
    await page.fill("#lead-form [name=phone]", number.replace("+1 ", "(").replace(" 555", ") 555"))
    await page.click("#lead-form button[type=submit]")
    warning = page.locator("#duplicate-phone")
    await expect(warning).to_contain_text(f"{first['name']} already has this number", timeout=WAIT)
    await expect(page.locator("#lead-form button[type=submit]")).to_have_text("Create anyway")
    await console.axe("duplicate-number warning")
    owners = await api(system.url, "GET", f"/v1/leads?phone={first['phone'].replace('+', '%2B')}")
    assert [lead["leadId"] for lead in owners["leads"]] == [first["leadId"]]

    await page.click("#lead-form button[type=submit]")  # the deliberate second press
    await expect(page.locator("#lead-head h2")).to_have_text(name, timeout=WAIT)
    await expect(warning).to_be_hidden()
    owners = await api(system.url, "GET", f"/v1/leads?phone={first['phone'].replace('+', '%2B')}")
    assert len(owners["leads"]) == 2
    console.assert_clean()
    await console.context.close()


async def test_numbers_show_as_their_country_writes_them_and_search_finds_them_so(
    browser: Browser, system: System
) -> None:
    london = await api(system.url, "POST", "/v1/leads",
                       {"name": unique_name("Ada London"), "phone": "+44 20 7946 0958"})
    console = await open_console(browser, system)
    page = console.page
    await console.log_in()
    await expect(console.row(london).locator(".lead-phone")).to_have_text("+44 20 7946 0958")
    for typed in ("+44 20 7946 0958", "020 7946 0958", "7946 0958"):
        await page.fill("#search", typed)
        await expect(console.row(london)).to_be_visible()
    await page.fill("#search", "+44 20 7946 0959")
    await expect(console.row(london)).to_be_hidden()
    await page.fill("#search", "")
    await console.open_lead(london)
    await expect(page.locator("#lead-head")).to_contain_text("+44 20 7946 0958")
    await expect(page.locator("#sms-to")).to_have_text("to +44 20 7946 0958")
    console.assert_clean()
    await console.context.close()


async def test_an_appointment_in_the_past_is_refused_by_the_page_and_by_the_service(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Katherine Johnson"))
    console = await console_on_lead(browser, system, lead)
    page = console.page
    await page.fill("#appointment-form [name=startTime]", "2020-01-06T10:00")
    await page.click("#appointment-form button[type=submit]")
    await expect(page.locator('#appointment-form .field-error[data-for="startTime"]')).to_have_text(
        "That time has already passed")
    status, _, refused = await call(system.url, "POST", "/v1/appointments", {
        "leadId": lead["leadId"], "agentId": "alice", "startTime": "2020-01-06T10:00:00Z",
        "endTime": "2020-01-06T10:30:00Z"})
    assert status == 400
    fields = [v["field"] for d in refused["details"] for v in d.get("fieldViolations", [])]
    assert fields == ["start_time"]
    console.assert_clean()
    await console.context.close()


# -- offline for real ----------------------------------------------------------------------


async def test_the_console_reloads_offline_and_sends_what_was_queued_once_back_online(
    browser: Browser, system: System, tmp_path: Path, artifacts: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Grace Hopper"))
    # A gateway of its own, stopped while offline: the shell can only come from
    # the service worker's cache, whatever the browser's offline mode covers.
    gateway = await asyncio.to_thread(gateway_process(
        tmp_path, system.leads.target, system.bookings.target, system.messaging.target).start)
    restarted: ServiceProcess | None = None
    try:
        own = System(system.leads, system.bookings, system.messaging, gateway, tmp_path)
        console = await open_console(browser, own)
        page = console.page
        await console.log_in()
        await console.open_lead(lead)
        await page.wait_for_function("() => navigator.serviceWorker.controller !== null",
                                     timeout=WAIT)
        await page.wait_for_function(
            "(id) => (localStorage.getItem('closed-loop:snapshot:v1') || '').includes(id)",
            arg=lead["leadId"], timeout=WAIT)

        await console.context.set_offline(True)
        assert await asyncio.to_thread(gateway.terminate) == 0
        await page.click('#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
        await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send")
        key = (await console.queued())[0]["key"]
        await page.reload()
        await expect(page.locator("#app")).to_be_visible(timeout=WAIT)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
        await expect(page.locator("#queue-title")).to_have_text("1 change waiting to send")
        await expect(page.locator("#lead-head h2")).to_have_text(lead["name"])
        await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "queued")
        await expect(page.locator("#lead-head .badge")).to_contain_text("Contacted")
        await console.screenshot(artifacts, "offline-reload")
        await console.axe("offline reload")

        restarted = ServiceProcess("gateway", gateway.env, module="gateway", port=gateway.port)
        await asyncio.to_thread(restarted.start)
        await console.context.set_offline(False)
        await expect(page.locator("#queue-panel")).to_be_hidden(timeout=15_000)
        await console.live()
        await expect(page.locator("#lead-head .badge")).to_have_attribute("data-pending", "false")
        await expect(page.locator("#lead-head .badge")).to_have_text("Contacted")
        changes = await status_changes(system.url, lead["leadId"])
        assert [(c["toStatus"], c["idempotencyKey"]) for c in changes] == [
            ("LEAD_STATUS_CONTACTED", key)]
        manifest = await page.evaluate("fetch('/manifest.webmanifest').then(r => r.json())")
        assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
        assert {"192x192", "512x512"} <= {icon["sizes"] for icon in manifest["icons"]}
        console.assert_clean()
        await console.context.close()
    finally:
        for process in (restarted, gateway):
            if process is not None and process.process is not None:
                await asyncio.to_thread(process.terminate)


# -- mobile and accessibility --------------------------------------------------------------


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


async def test_at_390_px_nothing_overlaps_and_a_chosen_lead_comes_into_view(
    browser: Browser, system: System, artifacts: Path
) -> None:
    lead = await new_lead(system.url, unique_name("Hedy Lamarr"), "LEAD_STATUS_QUALIFIED")
    context = await browser.new_context(viewport={"width": 390, "height": 844},
                                        base_url=system.url, has_touch=True)
    await context.add_init_script(CSP_WATCH)
    console = Console(context, await context.new_page())
    console.watch_page(console.page)
    page = console.page
    await console.log_in()
    boxes = {name: await page.locator(name).bounding_box()
             for name in ("#principal", "#logout", "#connection", "#provider", "#app-title")}
    assert all(boxes.values()), boxes
    for mine in ("#principal", "#logout"):
        for other in ("#connection", "#provider", "#app-title"):
            assert not _overlap(boxes[mine], boxes[other]), (mine, other, boxes)  # type: ignore[arg-type]
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await console.axe("390 px list")

    await page.fill("#search", lead["name"])
    await console.row(lead).locator(".lead-link").click()
    await expect(page.locator("#lead-head h2")).to_have_text(lead["name"])
    await expect(page.locator("#detail")).to_be_focused()
    top = await page.locator("#lead-head").bounding_box()
    assert top is not None and 0 <= top["y"] < 844 / 2, top
    await console.screenshot(artifacts, "mobile-390")
    await console.axe("390 px lead")
    console.assert_clean()
    await context.close()


async def tab_to(page: Page, selector: str, *, limit: int = 120) -> None:
    """Press Tab until the keyboard focus is on `selector`, as a keyboard user would."""
    for _ in range(limit):
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never took the focus in {limit} presses of Tab")


async def test_the_three_buttons_work_from_the_keyboard_alone(
    browser: Browser, system: System
) -> None:
    lead = await new_lead(system.url, unique_name("Lynn Conway"))
    appointment = await new_appointment(system.url, lead["leadId"], f"agent-{uuid.uuid4().hex[:6]}",
                                        "2030-07-01T10:00:00Z", "2030-07-01T10:30:00Z")
    console = await open_console(browser, system)
    page = console.page
    await page.goto("/")
    await page.locator("#login-token").focus()
    await page.keyboard.type(TOKENS["alice"])
    await page.keyboard.press("Enter")
    await expect(page.locator("#app-title")).to_be_focused(timeout=WAIT)  # not <body>
    await console.live()
    await console.axe("signed in, nothing selected")

    await tab_to(page, "#search")
    await page.keyboard.type(lead["name"])
    await tab_to(page, f'[data-key="open:{lead["leadId"]}"]')
    await page.keyboard.press("Enter")
    await expect(page.locator("#lead-head h2")).to_have_text(lead["name"])

    # 1. Move the lead.
    await tab_to(page, '#status-actions button[data-status="LEAD_STATUS_CONTACTED"]')
    await page.keyboard.press("Enter")
    await expect(page.locator("#lead-head .badge")).to_have_text("Contacted", timeout=WAIT)
    # 2. Confirm the appointment.
    await tab_to(page, f'button[data-key="confirm:{appointment["appointmentId"]}"]')
    await page.keyboard.press("Enter")
    item = page.locator(f'[data-appointment-id="{appointment["appointmentId"]}"]')
    await expect(item.locator(".badge")).to_have_text("Confirmed", timeout=WAIT)
    # 3. Text the lead.
    await tab_to(page, "#sms-body")
    await page.keyboard.type("Thanks for your time today.")
    await tab_to(page, "#sms-send")
    await page.keyboard.press("Enter")
    await expect(page.locator("#sms-press")).to_contain_text("Sent", timeout=WAIT)

    await page.keyboard.press("Shift+Tab")
    await page.locator(".skip-link").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#detail")).to_be_focused()
    assert [c["toStatus"] for c in await status_changes(system.url, lead["leadId"])] == [
        "LEAD_STATUS_CONTACTED"]
    console.assert_clean()
    await console.context.close()
