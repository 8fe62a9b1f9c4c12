"""Browser sessions: login, the cookie, CSRF, logout, and secrets kept out of the logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.app import SETTINGS, RunningGateway
from gateway.sessions import Sessions
from services.shared.logs import JsonFormatter
from services.shared.server import RunningService
from tests.integration.gateway.conftest import TWILIO_TOKEN, Client, StartGateway
from tests.integration.gateway.support import Answer, new_key, request
from tests.support.servers import TOKENS

LEAD = {"name": "Ada Lovelace", "phone": "+14155550123"}


def browser(client: Client, gateway: RunningGateway) -> aiohttp.ClientSession:
    """A browser: no Authorization header, and it keeps cookies (even for 127.0.0.1)."""
    return client(gateway, who=None, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(session: aiohttp.ClientSession, who: str = "alice") -> Answer:
    answer = await request(session, "POST", "/auth/login", json_body={"token": TOKENS[who]})
    assert answer.status == 200, answer.body
    return answer


async def test_a_wrong_token_does_not_log_in(gateway: RunningGateway, client: Client) -> None:
    page = browser(client, gateway)
    refused = await request(page, "POST", "/auth/login",
                            json_body={"token": "not-a-token-of-ours-at-all"})
    assert (refused.status, refused.reason) == (401, "INVALID_TOKEN")
    assert "Set-Cookie" not in refused.headers
    form = await request(page, "POST", "/auth/login", data={"token": TOKENS["alice"]})
    assert (form.status, form.reason) == (415, "UNSUPPORTED_MEDIA_TYPE")
    empty = await request(page, "POST", "/auth/login", json_body={})
    assert (empty.status, empty.detail("BadRequest")["fieldViolations"][0]["field"]) == (
        400, "token")


async def test_login_sets_a_strict_http_only_cookie_and_returns_a_csrf_token(
    gateway: RunningGateway, client: Client,
) -> None:
    answer = await login(browser(client, gateway))
    assert set(answer.body) == {"principal", "org", "role", "csrfToken", "expiresAt"}
    assert (answer.body["principal"], answer.body["org"], answer.body["role"]) == (
        "alice", "default", "agent")
    cookie = answer.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith("crm_session=")
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "secure" not in attributes  # CRM_PUBLIC_URL is http here
    assert TOKENS["alice"] not in cookie


async def test_over_https_the_cookie_is_secure_and_host_prefixed(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway(CRM_PUBLIC_URL="https://crm.example.com")
    answer = await login(browser(client, gateway))
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("__Host-crm_session=") and "Secure" in cookie


@pytest.fixture
async def gateway(start_gateway: StartGateway, leads_server: RunningService) -> RunningGateway:
    """Plain http, so the test client sends the (non-Secure) session cookie back."""
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                               CRM_PUBLIC_URL="http://127.0.0.1:8080")


async def test_a_session_reads_freely_but_writes_only_with_its_csrf_token(
    gateway: RunningGateway, client: Client,
) -> None:
    page = browser(client, gateway)
    csrf = (await login(page)).body["csrfToken"]
    assert (await request(page, "GET", "/v1/leads")).status == 200
    missing = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key())
    assert (missing.status, missing.reason, missing.domain) == (
        403, "CSRF_TOKEN_INVALID", "gateway")
    assert missing.body["code"] == 7  # PERMISSION_DENIED
    wrong = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                          headers={"X-CSRF-Token": csrf[:-2] + "xx"})
    assert wrong.status == 403
    legacy = await request(page, "POST", "/api/leads/update-status",
                           json_body={"leadId": "x", "status": "won"},
                           headers={"X-Idempotency-Key": new_key()})
    assert (legacy.status, legacy.body["reason"]) == (403, "CSRF_TOKEN_INVALID")
    assert (await request(page, "GET", "/v1/leads")).body["leads"] == []
    created = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                            headers={"X-CSRF-Token": csrf})
    assert (created.status, created.body["createdBy"]) == (200, "alice")


async def test_a_session_acts_upstream_as_its_own_principal(
    gateway: RunningGateway, client: Client,
) -> None:
    page = browser(client, gateway)
    csrf = (await login(page, "bob")).body["csrfToken"]
    created = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                            headers={"X-CSRF-Token": csrf})
    assert created.body["createdBy"] == "bob"
    moved = await request(page, "POST", f"/v1/leads/{created.body['leadId']}:updateStatus",
                          json_body={"status": "LEAD_STATUS_CONTACTED"}, key="bobs-key",
                          headers={"X-CSRF-Token": csrf})
    assert moved.status == 200
    trail = await request(page, "GET", f"/v1/leads/{created.body['leadId']}/statusChanges")
    assert trail.body["statusChanges"][0]["actor"] == "bob"


async def test_an_authorization_header_makes_an_api_client_no_cookie_no_csrf(
    gateway: RunningGateway, client: Client,
) -> None:
    page = browser(client, gateway)
    await login(page, "alice")
    created = await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                            headers={"Authorization": f"Bearer {TOKENS['bob']}"})
    assert (created.status, created.body["createdBy"]) == (200, "bob")


async def test_the_session_can_be_read_back_and_logout_ends_it(
    gateway: RunningGateway, client: Client,
) -> None:
    page = browser(client, gateway)
    logged_in = await login(page)
    current = await request(page, "GET", "/auth/session")
    assert (current.status, current.body) == (200, logged_in.body)
    refused = await request(page, "POST", "/auth/logout")
    assert (refused.status, refused.reason) == (403, "CSRF_TOKEN_INVALID")
    out = await request(page, "POST", "/auth/logout",
                        headers={"X-CSRF-Token": logged_in.body["csrfToken"]})
    assert out.status == 204
    assert "crm_session=" in out.headers["Set-Cookie"]
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    assert (await request(page, "GET", "/auth/session")).status == 401
    after = await request(page, "GET", "/v1/leads")
    assert (after.status, after.reason) == (401, "MISSING_CREDENTIALS")


async def test_an_expired_or_tampered_cookie_is_401(
    gateway: RunningGateway, client: Client,
) -> None:
    sessions = Sessions(gateway.app[SETTINGS])
    expired, _ = sessions.issue(TOKENS["alice"], "alice", now=time.time() - 9 * 3600)
    valid, _ = sessions.issue(TOKENS["alice"], "alice")
    payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["p"] = "bob"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    cases = {expired: "SESSION_EXPIRED", f"{forged_payload}.{signature}": "SESSION_INVALID",
             "garbage": "SESSION_INVALID", valid + "x": "SESSION_INVALID"}
    for cookie, reason in cases.items():
        page = client(gateway, who=None, cookies={"crm_session": cookie})
        for path in ("/v1/leads", "/auth/session", "/v1/events?types=lead.created"):
            refused = await request(page, "GET", path)
            assert (refused.status, refused.reason) == (401, reason), (path, cookie)
    accepted = client(gateway, who=None, cookies={"crm_session": valid})
    assert (await request(accepted, "GET", "/v1/leads")).status == 200


async def test_an_event_source_is_authenticated_by_the_cookie_alone(
    gateway: RunningGateway, client: Client,
) -> None:
    page = browser(client, gateway)
    await login(page)
    async with page.get("/v1/events?types=lead.created") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        line = await response.content.readline()
        assert line.startswith(b"event: bookmark")


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line, formatted as the processes format them."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter("gateway"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield sink
    root.removeHandler(handler)
    root.setLevel(previous)


async def test_tokens_cookies_and_authorization_headers_never_reach_the_logs(
    gateway: RunningGateway, client: Client, captured_logs: io.StringIO,
) -> None:
    page = browser(client, gateway)
    logged_in = await login(page)
    cookie = next(iter(page.cookie_jar)).value
    csrf = logged_in.body["csrfToken"]
    await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key(),
                  headers={"X-CSRF-Token": csrf})
    await request(page, "POST", "/v1/leads", json_body=LEAD, key=new_key())
    await request(page, "POST", "/auth/login", json_body={"token": "wrong-" + TOKENS["bob"]})
    api = client(gateway, who="bob")
    await request(api, "GET", "/v1/leads?status=LEAD_STATUS_NEW")
    await request(api, "GET", "/v1/leads/no-such-lead")
    await request(client(gateway, who=None), "POST", "/webhooks/twilio/status",
                  data={"MessageSid": "SM1"}, headers={"X-Twilio-Signature": "forged"})
    text = captured_logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "crm.access"
              and line["process"] == "gateway" and "route" in line]
    assert any(line["route"] == "LeadsService.CreateLead" and line["principal"] == "alice"
               and line["status"] == 200 for line in access)
    assert all(line.get("request_id") for line in access)
    for secret in (*TOKENS.values(), cookie, csrf, TWILIO_TOKEN, "Bearer", "crm_session="):
        assert secret not in text, secret
