"""Isolation between orgs over every HTTP route of the gateway, on both databases.

The same two orgs as tests/integration/test_isolation.py (whose `world` this
reuses: `default` holds a lead, an appointment, a message and a template), with
the gateway in front. `acme` reaches none of it through any route: /v1, the
original /api, Server-Sent Events, a session's cookie, Twilio's webhooks. Routes
that serve no org's data say so in the table, and are checked to leak none.
A route of the gateway without an entry fails
`test_every_route_of_the_gateway_has_an_isolation_check`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from twilio.request_validator import RequestValidator

from gateway.app import RunningGateway, create_app, start
from gateway.config import Settings
from tests.integration.test_isolation import A_NUMBER, B_NUMBER, PHONE, World, open_world
from tests.support import leaks
from tests.support.servers import TOKENS, TOKENS_ENV

TWILIO_TOKEN = "twilio-auth-token-for-isolation-0123456789"
leaks.watch({TWILIO_TOKEN: "TWILIO_AUTH_TOKEN"})
PUBLIC_URL = "https://crm.example.com"
A, B = "alice", "carol@acme"
ENV = {"CRM_API_TOKENS": TOKENS_ENV, "CRM_PUBLIC_URL": PUBLIC_URL,
       "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "CRM_SSE_HEARTBEAT_SECONDS": "1",
       "CRM_GATEWAY_DEADLINE_SECONDS": "10"}


@dataclass
class Web:
    world: World
    gateway: RunningGateway
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    async def call(self, method: str, path: str, who: str | None = B, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {TOKENS[who]}"
        if method == "POST":
            sent.setdefault("Idempotency-Key", uuid.uuid4().hex)
        async with self.session.request(method, self.base + path, json=body,
                                        headers=sent) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text


@pytest.fixture
async def web(new_database: Callable[[str], str], tmp_path: Path,
              channel_for: Callable[..., grpc.aio.Channel]) -> AsyncIterator[Web]:
    async with open_world(new_database, tmp_path, channel_for) as world:
        settings = Settings.from_env({
            **ENV, **{f"CRM_{name.upper()}_TARGET": server.target
                      for name, server in world.servers.items()}})
        gateway = await start(settings, host="127.0.0.1", port=0)
        try:
            async with aiohttp.ClientSession() as session:
                yield Web(world, gateway, session)
        finally:
            await gateway.stop()


async def not_found_as_if_missing(w: Web, method: str, path: str, their_id: str,
                                  body: Callable[[str], Any] | None = None) -> None:
    """The route on another org's object answers as it does for a missing one."""
    missing = str(uuid.uuid4())
    theirs = await w.call(method, path.format(their_id), body=body(their_id) if body else None)
    absent = await w.call(method, path.format(missing), body=body(missing) if body else None)
    assert theirs[0] == absent[0] == 404, (theirs, absent)
    assert json.dumps(theirs[1]) == json.dumps(absent[1]).replace(missing, their_id)


def leaks_nothing_of(w: Web, found: Any) -> None:
    """None of `default`'s objects is named in what `acme` was answered."""
    text = found if isinstance(found, str) else json.dumps(found)
    world = w.world
    for mine in (world.lead.lead_id, world.appointment.appointment_id,
                 world.message.message_id, world.template.template_id):
        assert mine not in text


# -- /v1 ---------------------------------------------------------------------------------


async def create_lead(w: Web) -> None:
    status, made = await w.call("POST", "/v1/leads", body={"name": "Bea", "phone": PHONE})
    assert status == 200
    status, listed = await w.call("GET", f"/v1/leads?phone={PHONE.replace('+', '%2B')}")
    assert [lead["leadId"] for lead in listed["leads"]] == [made["leadId"]]


async def get_lead(w: Web) -> None:
    await not_found_as_if_missing(w, "GET", "/v1/leads/{}", w.world.lead.lead_id)


async def list_leads(w: Web) -> None:
    status, listed = await w.call("GET", "/v1/leads?pageSize=200")
    assert status == 200
    leaks_nothing_of(w, listed)


async def update_lead_status(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/leads/{}:updateStatus", w.world.lead.lead_id,
                                  lambda _: {"status": "LEAD_STATUS_LOST"})


async def batch_update_lead_status(w: Web) -> None:
    missing = str(uuid.uuid4())
    theirs = await w.call("POST", "/v1/leads:batchUpdateStatus", body={
        "leadIds": [w.world.lead.lead_id], "status": "LEAD_STATUS_LOST"})
    absent = await w.call("POST", "/v1/leads:batchUpdateStatus", body={
        "leadIds": [missing], "status": "LEAD_STATUS_LOST"})
    assert theirs[0] == absent[0] != 200
    assert json.dumps(theirs[1]) == json.dumps(absent[1]).replace(missing, w.world.lead.lead_id)


async def list_status_changes(w: Web) -> None:
    await not_found_as_if_missing(w, "GET", "/v1/leads/{}/statusChanges", w.world.lead.lead_id)


async def create_appointment(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/appointments", w.world.lead.lead_id,
                                  lambda lead: {"leadId": lead, "agentId": "agent-1",
                                                "startTime": "2030-01-07T09:00:00Z",
                                                "endTime": "2030-01-07T10:00:00Z"})


async def get_appointment(w: Web) -> None:
    await not_found_as_if_missing(w, "GET", "/v1/appointments/{}",
                                  w.world.appointment.appointment_id)


async def list_appointments(w: Web) -> None:
    for query in ("", f"?leadId={w.world.lead.lead_id}", "?agentId=agent-1"):
        status, listed = await w.call("GET", f"/v1/appointments{query}")
        assert status == 200
        leaks_nothing_of(w, listed)


async def confirm_appointment(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/appointments/{}:confirm",
                                  w.world.appointment.appointment_id, lambda _: {})


async def cancel_appointment(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/appointments/{}:cancel",
                                  w.world.appointment.appointment_id, lambda _: {"reason": "x"})


async def complete_appointment(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/appointments/{}:complete",
                                  w.world.appointment.appointment_id, lambda _: {})


async def list_appointment_changes(w: Web) -> None:
    await not_found_as_if_missing(w, "GET", "/v1/appointments/{}/changes",
                                  w.world.appointment.appointment_id)


async def send_sms(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/messages", w.world.lead.lead_id,
                                  lambda lead: {"leadId": lead, "body": "Hi"})


async def get_message(w: Web) -> None:
    await not_found_as_if_missing(w, "GET", "/v1/messages/{}", w.world.message.message_id)


async def list_messages(w: Web) -> None:
    status, listed = await w.call("GET", f"/v1/leads/{w.world.lead.lead_id}/messages")
    assert status == 200
    leaks_nothing_of(w, listed)


async def get_provider_status(w: Web) -> None:
    """No org's data: the one provider's state."""
    mine, yours = await w.call("GET", "/v1/messaging/provider"), await w.call(
        "GET", "/v1/messaging/provider", who=A)
    assert mine == yours


async def list_message_templates(w: Web) -> None:
    status, listed = await w.call("GET", "/v1/messageTemplates")
    assert status == 200
    leaks_nothing_of(w, listed)


async def save_message_template(w: Web) -> None:
    """A template id of another org is NOT_FOUND: saving under it changes nothing."""
    status, answer = await w.call("POST", "/v1/messageTemplates", body={
        "templateId": w.world.template.template_id, "name": "Mine", "body": "Hi"})
    missing = str(uuid.uuid4())
    status_missing, answer_missing = await w.call("POST", "/v1/messageTemplates", body={
        "templateId": missing, "name": "Mine", "body": "Hi"})
    assert status == status_missing == 404
    assert json.dumps(answer) == json.dumps(answer_missing).replace(
        missing, w.world.template.template_id)


async def delete_message_template(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/v1/messageTemplates/{}:delete",
                                  w.world.template.template_id, lambda _: {})


async def events(w: Web) -> None:
    """B's Server-Sent Events while A and then B change something: B's only."""
    headers = {"Authorization": f"Bearer {TOKENS[B]}", "Accept": "text/event-stream"}
    seen: list[str] = []
    async with w.session.get(w.base + "/v1/events", headers=headers) as stream:
        assert stream.status == 200
        async with asyncio.timeout(30):  # a bound on the wait, not a measure of speed
            live = False
            mine = ""
            async for raw in stream.content:
                line = raw.decode().strip()
                if line == "event: bookmark" and not live:
                    live = True
                    await w.call("POST", f"/v1/leads/{w.world.lead.lead_id}:updateStatus",
                                 who=A, body={"status": "LEAD_STATUS_QUALIFIED"})
                    _, made = await w.call("POST", "/v1/leads",
                                           body={"name": "Bea", "phone": PHONE})
                    mine = made["leadId"]
                if line.startswith("data:") and live:
                    seen.append(line)
                    if mine and mine in line and '"type": "bookmark"' not in line:
                        break
    assert seen and mine
    leaks_nothing_of(w, "\n".join(seen))


# -- the original /api -------------------------------------------------------------------


async def legacy_confirm(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/api/bookings/confirm",
                                  w.world.appointment.appointment_id,
                                  lambda i: {"appointmentId": i})


async def legacy_send_sms(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/api/leads/send-sms", w.world.lead.lead_id,
                                  lambda i: {"leadId": i, "message": "Hi"})


async def legacy_sms_history(w: Web) -> None:
    status, found = await w.call("GET", f"/api/leads/{w.world.lead.lead_id}/sms-history")
    assert status == 200
    leaks_nothing_of(w, found)


async def legacy_update_status(w: Web) -> None:
    await not_found_as_if_missing(w, "POST", "/api/leads/update-status", w.world.lead.lead_id,
                                  lambda i: {"leadId": i, "status": "lost"})


# -- sessions, webhooks, what serves no org's data -------------------------------------------


async def _login(w: Web, who: str) -> str:
    async with w.session.post(w.base + "/auth/login", json={"token": TOKENS[who]}) as answer:
        assert answer.status == 200
        cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    return cookie


async def auth_login(w: Web) -> None:
    """A session is its principal's, in its org: through its cookie, `default`'s lead
    is NOT_FOUND as through its token."""
    cookie = await _login(w, B)
    missing = str(uuid.uuid4())
    theirs = await w.call("GET", f"/v1/leads/{w.world.lead.lead_id}", who=None,
                          headers={"Cookie": cookie})
    absent = await w.call("GET", f"/v1/leads/{missing}", who=None, headers={"Cookie": cookie})
    assert theirs[0] == absent[0] == 404
    assert json.dumps(theirs[1]) == json.dumps(absent[1]).replace(missing, w.world.lead.lead_id)


async def auth_session(w: Web) -> None:
    cookie = await _login(w, B)
    status, found = await w.call("GET", "/auth/session", who=None, headers={"Cookie": cookie})
    assert status == 200
    leaks_nothing_of(w, found)


async def auth_logout(w: Web) -> None:
    cookie = await _login(w, B)
    async with w.session.post(w.base + "/auth/logout", headers={"Cookie": cookie}) as answer:
        assert answer.status < 500
        leaks_nothing_of(w, await answer.text())


def _signed(path: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(
        PUBLIC_URL + path, form)}


async def twilio_status(w: Web) -> None:
    """A callback naming `default`'s message in `acme` finds nothing; the message stays."""
    path = f"/webhooks/twilio/status?message_id={w.world.message.message_id}&org=acme"
    form = {"MessageSid": f"SM{uuid.uuid4().hex}", "MessageStatus": "failed"}
    async with w.session.post(w.base + path, data=form, headers=_signed(path, form)) as answer:
        assert answer.status == 404, await answer.text()
    status, message = await w.call("GET", f"/v1/messages/{w.world.message.message_id}", who=A)
    assert status == 200 and message["status"] == "MESSAGE_STATUS_DELIVERED", message


async def twilio_inbound(w: Web) -> None:
    """A STOP to `acme`'s number opts the sender out in `acme` only."""
    path = "/webhooks/twilio/inbound"
    form = {"From": PHONE, "To": B_NUMBER, "Body": "STOP", "MessageSid": f"SM{uuid.uuid4().hex}"}
    async with w.session.post(w.base + path, data=form, headers=_signed(path, form)) as answer:
        assert answer.status == 200, await answer.text()
    status, _ = await w.call("POST", "/v1/messages", who=A,
                             body={"leadId": w.world.lead.lead_id, "body": "Still here"})
    assert status == 200  # `default`'s consent is untouched
    status, made = await w.call("POST", "/v1/leads", body={"name": "Bea", "phone": PHONE})
    status, _ = await w.call("POST", "/v1/messages", body={"leadId": made["leadId"], "body": "x"})
    assert status == 409  # opted out in acme
    assert A_NUMBER != B_NUMBER


def serves_no_org_data(path: str) -> Callable[[Web], Awaitable[None]]:
    async def check(w: Web) -> None:
        status, found = await w.call("GET", path)
        assert status == 200
        leaks_nothing_of(w, found)
    return check


CHECKS: dict[str, Callable[[Web], Awaitable[None]]] = {
    "POST /v1/leads": create_lead,
    "GET /v1/leads/{v0}": get_lead,
    "GET /v1/leads": list_leads,
    "POST /v1/leads/{v0}:updateStatus": update_lead_status,
    "POST /v1/leads:batchUpdateStatus": batch_update_lead_status,
    "GET /v1/leads/{v0}/statusChanges": list_status_changes,
    "POST /v1/appointments": create_appointment,
    "GET /v1/appointments/{v0}": get_appointment,
    "GET /v1/appointments": list_appointments,
    "POST /v1/appointments/{v0}:confirm": confirm_appointment,
    "POST /v1/appointments/{v0}:cancel": cancel_appointment,
    "POST /v1/appointments/{v0}:complete": complete_appointment,
    "GET /v1/appointments/{v0}/changes": list_appointment_changes,
    "POST /v1/messages": send_sms,
    "GET /v1/messages/{v0}": get_message,
    "GET /v1/leads/{v0}/messages": list_messages,
    "GET /v1/messaging/provider": get_provider_status,
    "GET /v1/messageTemplates": list_message_templates,
    "POST /v1/messageTemplates": save_message_template,
    "POST /v1/messageTemplates/{v0}:delete": delete_message_template,
    "GET /v1/events": events,
    "POST /api/bookings/confirm": legacy_confirm,
    "POST /api/leads/send-sms": legacy_send_sms,
    "GET /api/leads/{leadId}/sms-history": legacy_sms_history,
    "POST /api/leads/update-status": legacy_update_status,
    "POST /auth/login": auth_login,
    "GET /auth/session": auth_session,
    "POST /auth/logout": auth_logout,
    "POST /webhooks/twilio/status": twilio_status,
    "POST /webhooks/twilio/inbound": twilio_inbound,
    "GET /openapi.json": serves_no_org_data("/openapi.json"),
    "GET /healthz": serves_no_org_data("/healthz"),
    "GET /": serves_no_org_data("/"),
    "GET /sw.js": serves_no_org_data("/sw.js"),
    "GET /manifest.webmanifest": serves_no_org_data("/manifest.webmanifest"),
    "GET /static/{path}": serves_no_org_data("/static/app.js"),
}


def gateway_routes() -> set[str]:
    app = create_app(Settings.from_env(ENV))
    return {f"{route.method} {route.resource.canonical}" for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None}


def test_every_route_of_the_gateway_has_an_isolation_check() -> None:
    assert sorted(gateway_routes() - set(CHECKS)) == []
    assert sorted(set(CHECKS) - gateway_routes()) == []


@pytest.mark.parametrize("part", ["/v1/leads", "/v1/appointments", "/v1/messag", "/v1/events",
                                  "/api/", "other"])
async def test_another_orgs_objects_are_invisible_to_every_route(web: Web, part: str) -> None:
    parts = ["/v1/leads", "/v1/appointments", "/v1/messag", "/v1/events", "/api/"]
    failures = []
    for route, check in CHECKS.items():
        path = route.split(" ", 1)[1]
        mine = next((p for p in parts if path.startswith(p)), "other")
        if mine == part:
            try:
                await check(web)
            except (AssertionError, KeyError, TimeoutError) as failure:
                failures.append(f"{route}: {failure!r}")
    assert not failures, "\n".join(failures)
