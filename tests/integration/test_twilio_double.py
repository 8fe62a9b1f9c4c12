"""The Twilio double, driven by the real `twilio` library (its sync and its
async client): if the library cannot tell it from Twilio, neither can the
messaging service."""

from __future__ import annotations

import asyncio
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.rest.api.v2010.account.message import MessageInstance

from tests.support.twilio_double import TwilioDouble

ROOT = Path(__file__).resolve().parents[2]
SID = "AC" + "7e57" * 8
TOKEN = "5ec2e7" * 5 + "ab"
SENDER = "+15005550006"
LEAD = "+15551230001"
OTHER_LEAD = "+15551230002"
SM_SID = re.compile(r"^SM[0-9a-f]{32}$")

# twilio 9's async client still passes aiohttp the `auth=BasicAuth(...)` that
# aiohttp 3.14 deprecates: the library's noise, not ours.
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:twilio\..*")


class Twilio:
    """One real twilio `Client`, sync or async, pointed at the double the way
    the messaging service points it at TWILIO_API_BASE_URL."""

    def __init__(self, base_url: str, *, asynchronous: bool, account_sid: str = SID,
                 auth_token: str = TOKEN) -> None:
        self.asynchronous = asynchronous
        http_client = AsyncTwilioHttpClient() if asynchronous else None
        self.client = Client(account_sid, auth_token, http_client=http_client)
        self.client.api.base_url = base_url

    async def create(self, **kwargs: Any) -> MessageInstance:
        kwargs = {"from_": SENDER, "to": LEAD, "body": "See you at 3pm", **kwargs}
        if self.asynchronous:
            return await self.client.messages.create_async(**kwargs)
        # The sync client blocks; the double lives on this event loop.
        return await asyncio.to_thread(self.client.messages.create, **kwargs)

    async def fetch(self, sid: str) -> MessageInstance:
        if self.asynchronous:
            return await self.client.messages(sid).fetch_async()
        return await asyncio.to_thread(self.client.messages(sid).fetch)

    async def list(self, **kwargs: Any) -> list[MessageInstance]:
        if self.asynchronous:
            found: list[MessageInstance] = await self.client.messages.list_async(**kwargs)
            return found
        return await asyncio.to_thread(self.client.messages.list, **kwargs)

    async def close(self) -> None:
        if self.asynchronous:
            await self.client.http_client.close()


@pytest.fixture
async def double() -> AsyncIterator[TwilioDouble]:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as running:
        yield running


@pytest.fixture(params=["sync", "async"])
async def twilio(request: pytest.FixtureRequest, double: TwilioDouble) -> AsyncIterator[Twilio]:
    client = Twilio(double.base_url, asynchronous=request.param == "async")
    yield client
    await client.close()


@dataclass(frozen=True)
class Hook:
    url: str
    form: dict[str, str]
    signature: str


@dataclass
class Receiver:
    """The system under test's webhook endpoint, reduced to a recorder."""

    base_url: str = ""
    hooks: list[Hook] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()

    async def record(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        found.hooks.append(Hook(str(request.url), form, signature))
        return web.Response(text="<Response/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{path:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


def signed_by_twilio(hook: Hook, auth_token: str = TOKEN) -> bool:
    return bool(RequestValidator(auth_token).validate(hook.url, hook.form, hook.signature))


async def control(double_url: str, command: str, **args: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{double_url}/_control/{command}", json=args) as answer,
    ):
        assert answer.status == 200, await answer.text()
        found: dict[str, Any] = await answer.json()
        return found


# -- sending ------------------------------------------------------------------


async def test_a_created_message_is_queued_under_an_sm_sid_and_recorded_once(
    twilio: Twilio, double: TwilioDouble
) -> None:
    message = await twilio.create(body="See you at 3pm", status_callback="http://x/status")

    assert SM_SID.match(message.sid or "")
    assert message.status == "queued"
    assert (message.to, message.from_, message.body) == (LEAD, SENDER, "See you at 3pm")
    assert (message.account_sid, message.direction) == (SID, "outbound-api")
    assert message.num_segments == "1"
    assert isinstance(message.date_created, datetime)
    assert message.date_sent is None
    assert message.error_code is None
    assert message.price is None
    assert message.uri == f"/2010-04-01/Accounts/{SID}/Messages/{message.sid}.json"
    assert [m.sid for m in double.sent] == [message.sid]
    assert [m.body for m in double.sent_to(LEAD)] == ["See you at 3pm"]
    assert double.sent_to(OTHER_LEAD) == []
    assert double.requests == 1
    assert double.received[0].form["StatusCallback"] == "http://x/status"
    assert double.received[0].succeeded


async def test_a_message_counts_its_segments_as_carriers_do(twilio: Twilio) -> None:
    assert (await twilio.create(body="a" * 161)).num_segments == "2"
    assert (await twilio.create(body="€" * 81)).num_segments == "2"


async def test_a_messaging_service_can_send_without_a_from_number(
    twilio: Twilio, double: TwilioDouble
) -> None:
    service = "MG" + "0" * 32
    message = await twilio.create(from_=None, messaging_service_sid=service)
    assert message.messaging_service_sid == service
    assert message.from_ is None
    assert len(double.sent) == 1


async def test_wrong_credentials_are_refused_with_401_and_code_20003(
    twilio: Twilio, double: TwilioDouble
) -> None:
    intruder = Twilio(double.base_url, asynchronous=twilio.asynchronous, auth_token="wrong")
    try:
        with pytest.raises(TwilioRestException) as refused:
            await intruder.create()
    finally:
        await intruder.close()
    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert "Authenticate" in refused.value.msg
    assert double.sent == []
    assert not double.received[0].succeeded


@pytest.mark.parametrize(("code", "words"), [(21211, "not a valid phone number"),
                                              (21610, "unsubscribed recipient")])
async def test_a_rejected_recipient_is_a_permanent_twilio_error(
    twilio: Twilio, double: TwilioDouble, code: int, words: str
) -> None:
    double.reject(LEAD, code=code)

    with pytest.raises(TwilioRestException) as refused:
        await twilio.create(to=LEAD)

    assert (refused.value.status, refused.value.code) == (400, code)
    assert words in refused.value.msg
    assert double.sent == []
    await twilio.create(to=OTHER_LEAD)  # only that recipient is refused
    assert len(double.sent) == 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"body": ""}, 21602),
        ({"to": "555-0100"}, 21211),
        ({"from_": None}, 21603),
        ({"body": "a" * 1601}, 21617),
    ],
)
async def test_a_malformed_message_is_refused_as_twilio_refuses_it(
    twilio: Twilio, double: TwilioDouble, fields: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        await twilio.create(**fields)
    assert (refused.value.status, refused.value.code) == (400, code)
    assert double.sent == []


# -- failures on command ------------------------------------------------------


async def test_a_503_surfaces_once_then_the_next_request_succeeds(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.fail(503)

    with pytest.raises(TwilioRestException) as failed:
        await twilio.create()
    await twilio.create()

    assert (failed.value.status, failed.value.code) == (503, 20503)
    assert [r.status for r in double.received] == [503, 201]
    assert len(double.sent) == 1


async def test_a_429_surfaces_with_a_retry_after_header(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.fail(429, times=2, retry_after=3)

    with pytest.raises(TwilioRestException) as limited:
        await twilio.create()
    assert (limited.value.status, limited.value.code) == (429, 20429)

    # The library keeps no headers on its exception; ask over plain HTTP.
    url = f"{double.base_url}/2010-04-01/Accounts/{SID}/Messages.json"
    headers = {"Authorization": aiohttp.encode_basic_auth(SID, TOKEN)}
    form = {"To": LEAD, "From": SENDER, "Body": "hi"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(url, data=form) as answer,
    ):
        assert answer.status == 429
        assert answer.headers["Retry-After"] == "3"
        assert (await answer.json())["code"] == 20429


async def test_scripted_failures_apply_in_the_order_given(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.fail(500)
    double.fail(429)
    double.fail(503, times=2)

    for expected in (500, 429, 503, 503):
        with pytest.raises(TwilioRestException) as failed:
            await twilio.create()
        assert failed.value.status == expected
    await twilio.create()

    assert [r.status for r in double.received] == [500, 429, 503, 503, 201]


async def test_a_slow_answer_takes_at_least_the_delay(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.slow(0.6)

    started = time.monotonic()
    message = await twilio.create()
    elapsed = time.monotonic() - started

    assert elapsed >= 0.5
    assert message.status == "queued"
    assert len(double.sent) == 1


async def test_a_dropped_connection_surfaces_as_a_connection_error(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.drop()

    with pytest.raises((requests.ConnectionError, aiohttp.ClientConnectionError)):
        await twilio.create()
    await twilio.create()

    assert [r.status for r in double.received] == [None, 201]
    assert len(double.sent) == 1


async def test_an_outage_refuses_every_request_until_recovery(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.outage()
    for _ in range(3):
        with pytest.raises(TwilioRestException) as failed:
            await twilio.create()
        assert failed.value.status == 503

    double.recover()
    await twilio.create()

    assert double.requests == 4
    assert len(double.sent) == 1


async def test_a_failure_without_a_count_lasts_until_recovery(
    twilio: Twilio, double: TwilioDouble
) -> None:
    double.fail(500, times=None)
    for _ in range(3):
        with pytest.raises(TwilioRestException):
            await twilio.create()
    double.recover()
    await twilio.create()
    assert [r.succeeded for r in double.received] == [False, False, False, True]


# -- reading back -------------------------------------------------------------


async def test_a_message_can_be_fetched_and_an_unknown_sid_is_20404(twilio: Twilio) -> None:
    created = await twilio.create()

    fetched = await twilio.fetch(created.sid or "")
    assert (fetched.sid, fetched.to, fetched.status) == (created.sid, LEAD, "queued")

    with pytest.raises(TwilioRestException) as missing:
        await twilio.fetch("SM" + "0" * 32)
    assert (missing.value.status, missing.value.code) == (404, 20404)


async def test_listing_by_recipient_finds_only_their_messages_across_pages(
    twilio: Twilio, double: TwilioDouble
) -> None:
    for n in range(3):
        await twilio.create(to=LEAD, body=f"reminder {n}")
    await twilio.create(to=OTHER_LEAD, body="someone else")

    listed = await twilio.list(to=LEAD, page_size=2)

    assert [m.body for m in listed] == ["reminder 2", "reminder 1", "reminder 0"]
    assert [m.body for m in await twilio.list(to=OTHER_LEAD)] == ["someone else"]
    assert double.requests == 4 + 2 + 1  # two pages for the first list


async def test_listing_by_date_sent_finds_only_messages_that_left(
    twilio: Twilio, double: TwilioDouble
) -> None:
    gone = await twilio.create(body="gone")
    await twilio.create(body="still queued")
    await double.deliver(gone.sid or "", status="sent")

    today = datetime.now(UTC).date()
    listed = await twilio.list(date_sent=datetime.combine(today, datetime.min.time()))
    assert [m.body for m in listed] == ["gone"]


# -- webhooks -----------------------------------------------------------------


async def test_deliver_posts_a_status_callback_the_request_validator_accepts(
    twilio: Twilio, double: TwilioDouble, receiver: Receiver
) -> None:
    message = await twilio.create(status_callback=receiver.url("/webhooks/twilio/status"))

    answer = await double.deliver(message.sid or "", status="delivered")

    assert answer is not None
    assert answer.status == 200
    [hook] = receiver.hooks
    assert signed_by_twilio(hook)
    assert hook.form == {
        "MessageSid": message.sid,
        "MessageStatus": "delivered",
        "SmsSid": message.sid,
        "SmsStatus": "delivered",
        "AccountSid": SID,
        "From": SENDER,
        "To": LEAD,
        "ApiVersion": "2010-04-01",
    }
    fetched = await twilio.fetch(message.sid or "")
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None


async def test_an_undelivered_callback_carries_its_error_code(
    twilio: Twilio, double: TwilioDouble, receiver: Receiver
) -> None:
    message = await twilio.create(status_callback=receiver.url("/status"))

    await double.deliver(message.sid or "", status="undelivered", error_code=30003)

    [hook] = receiver.hooks
    assert signed_by_twilio(hook)
    assert (hook.form["MessageStatus"], hook.form["ErrorCode"]) == ("undelivered", "30003")
    fetched = await twilio.fetch(message.sid or "")
    assert (fetched.error_code, fetched.error_message) == (
        30003, "Unreachable destination handset")


async def test_a_forged_callback_fails_validation(
    double: TwilioDouble, twilio: Twilio, receiver: Receiver
) -> None:
    message = await twilio.create(status_callback=receiver.url("/status"))
    await double.deliver(message.sid or "", forged=True)
    [hook] = receiver.hooks
    assert hook.signature
    assert not signed_by_twilio(hook)


async def test_a_message_without_a_status_callback_just_changes_status(
    double: TwilioDouble, twilio: Twilio
) -> None:
    message = await twilio.create()
    assert await double.deliver(message.sid or "", status="failed", error_code=30008) is None
    assert double.sent[0].status == "failed"


async def test_an_inbound_text_arrives_as_a_signed_webhook(
    double: TwilioDouble, receiver: Receiver
) -> None:
    answer = await double.send_inbound(receiver.url("/webhooks/twilio/inbound"),
                                       from_=LEAD, to=SENDER, body="STOP")

    assert answer.status == 200
    [hook] = receiver.hooks
    assert signed_by_twilio(hook)
    assert (hook.form["From"], hook.form["To"], hook.form["Body"]) == (LEAD, SENDER, "STOP")
    assert (hook.form["AccountSid"], hook.form["NumMedia"]) == (SID, "0")
    assert SM_SID.match(hook.form["MessageSid"])
    assert double.sent == []  # an incoming text is not one the system sent


# -- control over HTTP --------------------------------------------------------


async def test_the_control_endpoint_switches_failures_on_and_off(
    twilio: Twilio, double: TwilioDouble
) -> None:
    await control(double.base_url, "fail", status=503, times=None)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as failed:
            await twilio.create()
        assert failed.value.status == 503
    await control(double.base_url, "recover")
    await twilio.create()

    await control(double.base_url, "reject", to=OTHER_LEAD, code=21610)
    with pytest.raises(TwilioRestException) as refused:
        await twilio.create(to=OTHER_LEAD)
    assert refused.value.code == 21610

    await control(double.base_url, "outage")
    with pytest.raises(TwilioRestException):
        await twilio.create()
    await control(double.base_url, "recover")

    await control(double.base_url, "drop")
    with pytest.raises((requests.ConnectionError, aiohttp.ClientConnectionError)):
        await twilio.create()

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{double.base_url}/_control/state") as answer,
    ):
        state = await answer.json()
    assert state["requests"] == double.requests == 6
    assert [m["to"] for m in state["sent"]] == [LEAD]
    assert [r["status"] for r in state["received"]] == [503, 503, 201, 400, 503, None]


async def test_the_control_endpoint_refuses_an_unknown_command(double: TwilioDouble) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{double.base_url}/_control/explode", json={}) as answer,
    ):
        assert answer.status == 400


async def test_the_control_endpoint_delivers_and_sends_inbound_texts(
    twilio: Twilio, double: TwilioDouble, receiver: Receiver
) -> None:
    message = await twilio.create(status_callback=receiver.url("/status"))

    delivered = await control(double.base_url, "deliver", sid=message.sid, status="delivered")
    inbound = await control(double.base_url, "inbound", url=receiver.url("/inbound"),
                            **{"from": LEAD, "to": SENDER, "body": "START"})

    assert delivered["answer"]["status"] == inbound["answer"]["status"] == 200
    assert [h.form.get("MessageStatus") or h.form["Body"] for h in receiver.hooks] == [
        "delivered", "START"]
    assert all(signed_by_twilio(h) for h in receiver.hooks)


# -- as a separate process ----------------------------------------------------


@pytest.fixture
def double_process() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.twilio_double", "--port", "0",
         "--account-sid", SID, "--auth-token", TOKEN],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the Twilio double did not print its URL within 20 s"
        yield process.stdout.readline().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_double_runs_as_its_own_process(double_process: str) -> None:
    client = Client(SID, TOKEN)
    client.api.base_url = double_process

    requests.post(f"{double_process}/_control/fail", json={"status": 503}, timeout=5)
    with pytest.raises(TwilioRestException) as failed:
        client.messages.create(to=LEAD, from_=SENDER, body="hello")
    assert failed.value.status == 503
    message = client.messages.create(to=LEAD, from_=SENDER, body="hello")

    state = requests.get(f"{double_process}/_control/state", timeout=5).json()
    assert [m["sid"] for m in state["sent"]] == [message.sid]
    assert state["requests"] == 2
