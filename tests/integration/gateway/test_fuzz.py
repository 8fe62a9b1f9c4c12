"""The gateway's parsers, fuzzed (hypothesis): JSON bodies, Twilio's form bodies,
headers, the composite event id and page tokens. Whatever arrives, the answer is
never a 5xx and nothing unexpected is logged.

The leads service is real (its page tokens and validation are part of what is
driven); bookings and messaging are played by a fake that answers every call, so
that no 5xx is theirs. The examples are sent from a thread with a plain HTTP/1.1
client while the gateway serves on the test's event loop. Bounded: a few hundred
examples in all, seconds.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import string
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2
from crm.common.v1 import common_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from gateway.app import RunningGateway
from gateway.contracts import SERVICES
from services.shared.server import RunningService
from tests.integration.gateway.conftest import PUBLIC_URL, TWILIO_TOKEN, StartGateway
from tests.integration.gateway.support import FakeUpstream
from tests.support import forgery
from tests.support.servers import TOKENS

EXAMPLES = 120
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Header values a client can send: latin-1 text without line breaks.
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255,
                                             blacklist_characters="\x7f"), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["name", "phone", "email", "status", "expectedVersion", "expected_version", "leadIds",
          "leadId", "appointmentId", "message", "body", "agentId", "startTime", "endTime",
          "token", "reason", "pageSize"]
json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values,
                               max_size=6)
POSTS = ["/v1/leads", "/v1/leads/lead-1:updateStatus", "/v1/leads:batchUpdateStatus",
         "/v1/appointments", "/v1/appointments/a-1:confirm", "/v1/messages",
         "/api/leads/update-status", "/api/leads/send-sms", "/api/bookings/confirm",
         "/auth/login"]


def answering_everything(fake: FakeUpstream) -> None:
    """The fake answers every unary RPC of bookings and messaging with an empty reply."""
    for service in ("bookings", "messaging"):
        for method in SERVICES[service].methods:
            if method.server_streaming:
                continue
            reply = GetMessageClass(method.output_type)

            async def answer(request: Message, context: grpc.aio.ServicerContext,
                             reply: Any = reply) -> Message:
                return reply()  # type: ignore[no-any-return]

            fake.script[service, method.name] = answer
    fake.streams["bookings"] = bookmark_then_quiet


async def bookmark_then_quiet(request: Any, context: grpc.aio.ServicerContext
                              ) -> AsyncIterator[Message]:
    yield bookings_pb2.Event(cursor="c0", type="bookmark",
                             bookmark=common_pb2.Bookmark(head_cursor="c0"))
    await asyncio.sleep(60)


class Sender:
    """Plain HTTP/1.1 requests to the gateway, from the fuzzing thread."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.port = gateway.port
        self.statuses: list[tuple[int, str, str]] = []

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            status = response.status
            # An event stream that started is not read to its end.
            if not response.getheader("Content-Type", "").startswith("text/event-stream"):
                response.read()
        finally:
            connection.close()
        self.statuses.append((status, method, path))
        assert status < 500, (status, method, path, body, headers)
        return status


@pytest.fixture
async def target(start_gateway: StartGateway, leads_server: RunningService,
                 fake: FakeUpstream) -> RunningGateway:
    answering_everything(fake)
    return await start_gateway(CRM_LEADS_TARGET=leads_server.target,
                               CRM_BOOKINGS_TARGET=fake.target,
                               CRM_MESSAGING_TARGET=fake.target,
                               # Fuzzed credentials fail: they must not lock the fuzzer out.
                               CRM_AUTH_FAILURES_MAX="1000000",
                               CRM_SSE_HEARTBEAT_SECONDS="0.2")


def unexpected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info]


async def fuzz(caplog: pytest.LogCaptureFixture, run: Callable[[], None]) -> None:
    caplog.set_level(logging.INFO)
    await asyncio.to_thread(run)
    assert unexpected(caplog) == []


BEARER = {"Authorization": f"Bearer {TOKENS['alice']}"}


async def test_json_bodies(target: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender(target)

    @FUZZ
    @given(path=st.sampled_from(POSTS),
           body=json_objects.map(lambda v: json.dumps(v).encode())
           | json_values.map(lambda v: json.dumps(v).encode())
           | st.binary(max_size=200)
           | st.integers(1, 3000).map(lambda n: b'{"name": ' + b"[" * n + b"]" * n + b"}")
           | st.text(alphabet="[]{}\",:0123456789.eE-+ ²٣\\u", max_size=200).map(str.encode))
    def run(path: str, body: bytes) -> None:
        sender.send("POST", path, body, {**BEARER, "Content-Type": "application/json",
                                         "Idempotency-Key": "fuzz-" + body.hex()[:64]})

    await fuzz(caplog, run)
    assert {status for status, _, _ in sender.statuses} & {200, 400}


async def test_twilio_form_bodies(target: RunningGateway,
                                  caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender(target)
    validator = RequestValidator(TWILIO_TOKEN)
    form_fields = st.dictionaries(
        st.sampled_from(["MessageSid", "MessageStatus", "ErrorCode", "ErrorMessage", "From",
                         "To", "Body"]) | st.text(max_size=8),
        st.text(max_size=40), max_size=6)

    @FUZZ
    @given(path=st.sampled_from(["/webhooks/twilio/status", "/webhooks/twilio/inbound",
                                 "/webhooks/twilio/status?message_id=m-1"]),
           form=form_fields, sign=st.booleans(),
           charset=st.sampled_from(["", "; charset=utf-8", "; charset=latin-1",
                                    "; charset=utf-16", "; charset=nope"]),
           raw=st.none() | st.binary(max_size=100))
    def run(path: str, form: dict[str, str], sign: bool, charset: str,
            raw: bytes | None) -> None:
        body = raw if raw is not None else urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded" + charset}
        if sign:
            headers["X-Twilio-Signature"] = validator.compute_signature(PUBLIC_URL + path, form)
        sender.send("POST", path, body, headers)

    await fuzz(caplog, run)
    assert {status for status, _, _ in sender.statuses} & {200, 204}


async def test_headers(target: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender(target)
    names = st.sampled_from(["Authorization", "Idempotency-Key", "X-Idempotency-Key",
                             "X-Request-Id", "Cookie", "X-CSRF-Token", "Last-Event-ID",
                             "Content-Type", "Accept"])

    @FUZZ
    @given(headers=st.dictionaries(names, header_text, max_size=5),
           route=st.sampled_from([("GET", "/v1/leads"), ("POST", "/v1/leads"),
                                  ("GET", "/auth/session"), ("POST", "/auth/logout"),
                                  ("POST", "/api/leads/update-status"), ("GET", "/healthz"),
                                  ("GET", "/v1/events?types=appointment.created")]))
    def run(headers: dict[str, str], route: tuple[str, str]) -> None:
        method, path = route
        body = b'{"name": "Ada", "phone": "+14155550123"}' if method == "POST" else None
        sender.send(method, path, body, headers)

    await fuzz(caplog, run)


async def test_composite_event_ids(target: RunningGateway,
                                   caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender(target)
    services = st.sampled_from(["leads", "bookings", "messaging"]) | st.text(max_size=5)
    ids = (st.sampled_from([2, 100, 999, 1200, 1500]).map(
               lambda n: base64.urlsafe_b64encode(b"[" * n + b"]" * n).decode().rstrip("="))
           | st.dictionaries(services, json_values, max_size=3)
           .map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("="))
           | st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode())
           | st.text(alphabet=string.ascii_letters + string.digits + "-_=+/ ", max_size=300))

    @FUZZ
    @given(raw=ids, in_query=st.booleans())
    def run(raw: str, in_query: bool) -> None:
        path = "/v1/events?types=appointment.created"
        if in_query:
            sender.send("GET", f"{path}&last_event_id={quote(raw)}", None, BEARER)
        else:
            sender.send("GET", path, None, {**BEARER, "Last-Event-ID": raw})

    await fuzz(caplog, run)


async def test_page_tokens(target: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender(target)
    # Unsigned tokens with the scope digest anyone can compute, for GET /v1/leads.
    leads_scope = forgery.scope({"list": "leads", "status": None, "phone": ""})
    sort_keys = st.lists(st.integers() | st.text(max_size=30) | st.sampled_from(
        ["2026-01-01T00:00:00+00:00", "٣", "²"]), max_size=3)
    tokens = (st.text(max_size=200)
              | st.sampled_from([2, 999, 1500, 3000]).map(lambda n: base64.urlsafe_b64encode(
                  b'{"a": ' + b"[" * n + b"]" * n + b"}").decode())
              | st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode())
              | (json_values | sort_keys).map(lambda v: base64.urlsafe_b64encode(
                  json.dumps({"a": v, "q": leads_scope}).encode()).decode().rstrip("=")))

    @FUZZ
    @given(token=tokens, path=st.sampled_from(["/v1/leads", "/v1/leads/lead-1/statusChanges",
                                               "/v1/appointments"]),
           size=st.sampled_from(["", "&pageSize=1", f"&pageSize={quote('٣')}",
                                 "&pageSize=-1"]))
    def run(token: str, path: str, size: str) -> None:
        sender.send("GET", f"{path}?pageToken={quote(token)}{size}", None, BEARER)

    await fuzz(caplog, run)
    assert {status for status, _, _ in sender.statuses} >= {400}
