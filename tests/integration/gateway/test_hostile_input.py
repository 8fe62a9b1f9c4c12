"""Input an attacker sends: every one is a clear 4xx naming what is wrong, never a 5xx,
and no answer shows Python's internals or the address of a service."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from gateway.app import RunningGateway
from tests.integration.gateway.conftest import (
    PUBLIC_URL,
    TWILIO_TOKEN,
    Client,
    StartGateway,
)
from tests.integration.gateway.support import Answer, create_lead, new_key, request

DEEP = "[" * 2000 + "]" * 2000
DEEP_OBJECT = '{"token": ' + DEEP + "}"
# What Python says that people should not read.
INTERNALS = ("does not match format", "%Y", "invalid literal", "int()", "codec",
             "Traceback", "ipv4:", "127.0.0.1", "Failed to connect", "recursion",
             "Exceeds the limit", "embedded null")


def assert_readable(answer: Answer) -> None:
    text = json.dumps(answer.body)
    for phrase in INTERNALS:
        assert phrase not in text, (phrase, text)


@pytest.fixture
def failures(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at ERROR or with a traceback, for the test to find none."""
    caplog.set_level(logging.INFO)
    yield caplog


def unhandled(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.ERROR or record.exc_info]


async def test_an_upstream_that_is_down_is_named_without_its_address(
    start_gateway: StartGateway, client: Client, failures: pytest.LogCaptureFixture,
) -> None:
    gateway = await start_gateway()
    down = await request(client(gateway, who=None), "GET", "/v1/leads")
    assert (down.status, down.reason) == (503, "UPSTREAM_UNAVAILABLE")
    assert down.body["message"] == "the leads service is unavailable; try again shortly"
    assert_readable(down)
    # The transport's own account goes to the log, for operators.
    assert any("leads" in r.getMessage() and r.levelno == logging.WARNING
               for r in failures.records if r.name == "crm.gateway")


@pytest.mark.parametrize("path", [
    "/auth/login", "/v1/leads", "/v1/leads/lead-1:updateStatus", "/api/leads/update-status",
    "/api/bookings/confirm",
])
async def test_json_nested_two_thousand_deep_is_400(
    gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture, path: str,
) -> None:
    answer = await request(client(gateway), "POST", path, data=DEEP_OBJECT.encode(),
                           headers={"Content-Type": "application/json",
                                    "Idempotency-Key": new_key()})
    assert answer.status == 400, answer.body
    assert "INVALID_JSON" in json.dumps(answer.body)
    assert "nested" in json.dumps(answer.body)
    assert unhandled(failures) == []


async def test_a_composite_event_id_nested_fifteen_hundred_deep_is_400(
    gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture,
) -> None:
    # As deep as fits in the longest id the gateway reads (4096 characters).
    nested = "[" * 1500 + "]" * 1500
    deep = base64.urlsafe_b64encode(nested.encode()).rstrip(b"=").decode()
    assert len(deep) <= 4096
    api = client(gateway)
    by_header = await request(api, "GET", "/v1/events", headers={"Last-Event-ID": deep})
    by_query = await request(api, "GET", f"/v1/events?last_event_id={deep}")
    assert (by_header.status, by_header.reason) == (400, "INVALID_LAST_EVENT_ID")
    assert (by_query.status, by_query.reason) == (400, "INVALID_LAST_EVENT_ID")
    assert unhandled(failures) == []


@pytest.mark.parametrize("body", [
    b'{"name": "Ada", "phone": "+14155550123"\xff}', b"\xff\xfe{}", b'{"name": 1e99999}',
    b'{"name": ' + b"9" * 5000 + b"}", b'{"name": NaN}',
])
async def test_a_body_that_is_not_json_says_so_in_words(
    gateway: RunningGateway, client: Client, body: bytes,
) -> None:
    answer = await request(client(gateway), "POST", "/v1/leads", data=body, key=new_key(),
                           headers={"Content-Type": "application/json"})
    assert (answer.status, answer.reason) == (400, "INVALID_JSON"), answer.body
    assert_readable(answer)


async def test_a_time_that_does_not_exist_is_refused_in_words(
    bookings_gateway: RunningGateway, client: Client,
) -> None:
    api = client(bookings_gateway)
    lead = await create_lead(api)
    answer = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
        "leadId": lead["leadId"], "agentId": "agent-1", "startTime": "2026-13-01T00:00:00Z",
        "endTime": "2026-12-01T01:00:00Z"})
    assert (answer.status, answer.reason) == (400, "INVALID_FIELD"), answer.body
    violation = answer.detail("BadRequest")["fieldViolations"][0]
    assert violation["field"] == "startTime"
    assert "RFC 3339" in violation["description"]
    assert_readable(answer)
    listed = await request(api, "GET", "/v1/appointments?windowStart=2026-02-30T00:00:00Z")
    assert listed.status == 400, listed.body
    assert_readable(listed)


@pytest.mark.parametrize("version", ["²", "٣", "3\n", " 3", "+3", "1_000", "abc", "",
                                     99999999999999999999999, -1, 2.5, True, [3]])
async def test_the_legacy_expected_version_is_ascii_digits_in_range(
    gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture,
    version: object,
) -> None:
    api = client(gateway)
    lead = await create_lead(api)
    answer = await request(api, "POST", "/api/leads/update-status", json_body={
        "leadId": lead["leadId"], "status": "contacted", "expectedVersion": version},
        headers={"X-Idempotency-Key": new_key()})
    assert answer.status == 400, answer.body
    assert (answer.body["success"], answer.body["reason"]) == (False, "INVALID_ARGUMENT")
    assert "expectedVersion" in answer.body["error"]
    assert unhandled(failures) == []
    current = await request(api, "GET", f"/v1/leads/{lead['leadId']}")
    assert current.body["status"] == "LEAD_STATUS_NEW"


@pytest.mark.parametrize("version", ["٣", "²", "3 ", "99999999999999999999999"])
async def test_a_v1_integer_is_ascii_digits_in_range(
    gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture, version: str,
) -> None:
    api = client(gateway)
    lead = await create_lead(api)
    answer = await request(api, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                           key=new_key(),
                           json_body={"status": "LEAD_STATUS_CONTACTED",
                                      "expectedVersion": version})
    assert answer.status == 400, answer.body
    violation = answer.detail("BadRequest")["fieldViolations"][0]
    assert violation["field"] == "expectedVersion"
    assert_readable(answer)
    for query in ("?pageSize=٣", "?pageSize=" + "9" * 5000, "?status=٣"):
        listed = await request(api, "GET", "/v1/leads" + query)
        assert listed.status == 400, (query, listed.body)
        assert_readable(listed)
    assert unhandled(failures) == []


async def test_a_path_with_a_nul_byte_or_a_name_too_long_is_404(
    start_gateway: StartGateway, client: Client, failures: pytest.LogCaptureFixture,
) -> None:
    gateway = await start_gateway()
    api = client(gateway, who=None)
    for path in ("/static/a%00", "/static/a%00.js", "/static/" + "a" * 5000, "/static/%01"):
        answer = await request(api, "GET", path)
        assert (answer.status, answer.reason) == (404, "FILE_NOT_FOUND"), (path, answer.body)
        assert_readable(answer)
    assert unhandled(failures) == []


def signed_raw(path: str, body: bytes, content_type: str) -> dict[str, str]:
    """A signature over what a lenient reader would take the form to be."""
    form = dict(pair.split("=", 1) for pair in body.decode("latin-1").split("&") if "=" in pair)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, form)
    return {"X-Twilio-Signature": signature, "Content-Type": content_type}


@pytest.mark.parametrize(("body", "content_type"), [
    (b"Body=\xff\xfe&From=%2B14155550123", "application/x-www-form-urlencoded; charset=utf-8"),
    (b"Body=STOP&From=%2B14155550123", "application/x-www-form-urlencoded; charset=no-such"),
    (b"Body=STOP&From=%2B14155550123", "application/x-www-form-urlencoded; charset=utf-32"),
])
async def test_a_webhook_body_not_valid_in_its_charset_is_400(
    fake_gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture,
    body: bytes, content_type: str,
) -> None:
    path = "/webhooks/twilio/inbound"
    answer = await request(client(fake_gateway, who=None), "POST", path, data=body,
                           headers=signed_raw(path, body, content_type))
    assert (answer.status, answer.reason) == (400, "INVALID_FORM"), answer.body
    assert_readable(answer)
    assert unhandled(failures) == []


@pytest.mark.parametrize("code", ["²", "٣", "1" * 30, "-1"])
async def test_a_webhook_error_code_is_ascii_digits(
    fake_gateway: RunningGateway, client: Client, failures: pytest.LogCaptureFixture, code: str,
) -> None:
    path = "/webhooks/twilio/status"
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "failed", "ErrorCode": code}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, form)
    answer = await request(client(fake_gateway, who=None), "POST", path, data=form,
                           headers={"X-Twilio-Signature": signature})
    assert answer.status == 400, answer.body
    assert answer.detail("BadRequest")["fieldViolations"][0]["field"] == "ErrorCode"
    assert unhandled(failures) == []


async def test_a_request_line_aiohttp_cannot_parse_is_answered_with_the_security_headers(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    for raw in (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
                b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), answer
        lowered = head.lower()
        for name in (b"content-security-policy", b"x-content-type-options: nosniff",
                     b"x-frame-options: deny", b"cache-control: no-store"):
            assert name in lowered, (raw[:40], head)
        assert json.loads(body)["details"][0]["reason"] == "MALFORMED_REQUEST"


async def test_index_html_says_its_charset(
    start_gateway: StartGateway, client: Client, tmp_path: Path,
) -> None:
    root = tmp_path
    (root / "index.html").write_text("<!doctype html><title>CRM — ünïcödé</title>")
    (root / "app.js").write_text("export const name = 'ünïcödé';")
    gateway = await start_gateway()
    api = client(gateway, who=None)
    index = await request(api, "GET", "/")
    script = await request(api, "GET", "/static/app.js")
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
