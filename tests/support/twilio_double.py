"""A local stand-in for Twilio's Messages REST API (2010-04-01), for tests.

It speaks Twilio's wire format (form-encoded requests, HTTP Basic auth with
AccountSid:AuthToken, Twilio's message resource, page envelope and error JSON)
closely enough that the real `twilio` library works against it unchanged, and
it fails on command, so tests can prove that an SMS provider outage degrades
one button and never sends a text twice.

    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as double:
        client = Client(SID, TOKEN)
        client.api.base_url = double.base_url
        client.messages.create(to=LEAD, from_=SENDER, body="See you at 3pm")
        assert len(double.sent_to(LEAD)) == 1

        # the async client, the same way
        client = Client(SID, TOKEN, http_client=AsyncTwilioHttpClient())
        client.api.base_url = double.base_url
        await client.messages.create_async(to=LEAD, from_=SENDER, body="…")
        await client.http_client.close()

(The sync client blocks: from a test on the double's own event loop, call it
through `asyncio.to_thread`.)

Pointing the library elsewhere: every REST URL of the `api` domain (Messages
among them, and the next-page links of its lists) is built from that domain's
`base_url`, "https://api.twilio.com"; setting `client.api.base_url` moves them
all, for the sync and the async client alike. This is what
`TWILIO_API_BASE_URL` sets. Leave the client's `edge` and `region` (and
TWILIO_EDGE / TWILIO_REGION) unset: with either, the library rewrites the host
of every URL into `api.<edge>.<region>.twilio.com` form.

Failures on command, from Python or, for a client in another process, from
`POST /_control/<name>` with a JSON body of the same arguments:

    fail(503, times=2)           the next 2 requests answer 503 (500, 429 …)
    fail(429, retry_after=3)     … 429 with `Retry-After: 3`
    slow(2.5, times=None)        every request answers 2.5 s late, until recover()
    drop()                       the next request: connection closed, no answer
    lose_answer(after=1.0)       the next request is carried out, but its answer is
                                 lost (connection closed 1 s later)
    reject("+15005550001", code=21610)   that recipient, always: 400 + Twilio's error
    outage() / recover()         every request 503 / back to normal, faults cleared
    reset()                      forget everything: faults, rejections, records

Scripted faults apply in the order given, each to its next `times` requests
(`times=None`: until recover()). Over HTTP, an omitted `times` is 1 and
`null` means until recovered. `GET /_control/state` answers what was received
and sent.

What it saw: `received` (every API request: method, path, form, the status it
got, when it arrived), `requests` (their count), `arrived` (every API request
as it arrives, before any scripted delay or hold: when, and its form),
`sent` and `sent_to(number)` (the messages it accepted). Webhooks the other
way, signed as Twilio signs them: `deliver(sid, status=…)` posts a status
callback, `send_inbound(url, …)` an incoming text.

As a process: `python -m tests.support.twilio_double --port 0 --account-sid AC…
--auth-token …` prints its base URL on the first line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from services.messaging.segments import measure

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0d0b1e" * 5 + "00"
DEFAULT_AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
MAX_BODY_LENGTH = 1600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Twilio's refusals of a message, by error code. `{to}` and `{from_}` are filled in.
REFUSALS: dict[int, str] = {
    21211: "The 'To' number {to} is not a valid phone number.",
    21212: "The 'From' number {from_} is not a valid phone number, shortcode, "
    "or alphanumeric sender ID.",
    21266: "'To' and 'From' number cannot be the same: {to}",
    21408: "Permission to send an SMS has not been enabled for the region "
    "indicated by the 'To' number: {to}",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {to}, is not currently reachable using the "
    "'From' phone number: {from_} via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}

# Why a message was not delivered, for the `error_message` of the resource.
DELIVERY_ERRORS: dict[int, str] = {
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}

STATUSES = frozenset(
    {"accepted", "scheduled", "queued", "sending", "sent", "delivered", "undelivered",
     "failed", "canceled", "read", "receiving", "received"}
)
_SENT_STATUSES = frozenset({"sent", "delivered", "undelivered", "read"})
_FAILURE_STATUSES = frozenset(s.value for s in HTTPStatus if 400 <= s.value <= 599)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rfc2822(moment: datetime | None) -> str | None:
    """Twilio's date format: `Thu, 30 Jul 2015 20:12:31 +0000`."""
    return None if moment is None else format_datetime(moment)


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """A refusal in Twilio's JSON error shape."""
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


@dataclass
class Message:
    """One message the double knows: sent through it, or received by it."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    status: str
    direction: Literal["outbound-api", "inbound"]
    status_callback: str | None = None
    messaging_service_sid: str | None = None
    num_media: int = 0
    date_created: datetime = field(default_factory=_now)
    date_updated: datetime = field(default_factory=_now)
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    @property
    def num_segments(self) -> int:
        return max(measure(self.body).segments, 1)

    def resource(self) -> dict[str, Any]:
        """The message as Twilio's API shows it."""
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": _rfc2822(self.date_created),
            "date_sent": _rfc2822(self.date_sent),
            "date_updated": _rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(self.num_media),
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": self.uri.removesuffix(".json") + "/Media.json"},
            "to": self.to,
            "uri": self.uri,
        }


@dataclass(frozen=True)
class ReceivedRequest:
    """One API request as the double saw it, and the status it answered
    (None: the connection was dropped without an answer)."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    status: int | None
    # Wall-clock seconds (time.time()) when it arrived, before any delay or hold.
    arrived_at: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Arrival:
    """An API request as it arrives, before it is answered (a held or slowed request
    is here long before it is in `received`)."""

    at: float  # wall-clock seconds, time.time(): comparable with other processes' clocks
    method: str
    path: str
    form: dict[str, str]


@dataclass(frozen=True)
class WebhookAnswer:
    """What the system under test answered to a webhook."""

    status: int
    body: str


@dataclass
class _Fault:
    kind: Literal["fail", "slow", "drop", "lose", "hold"]
    times: int | None  # None: until recovered
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0
    # A held request waits for this, then is answered normally.
    release: asyncio.Event | None = None


_LOSE_ANSWER = web.RequestKey("lose_answer", _Fault)


class TwilioDouble:
    """Twilio's Messages API on 127.0.0.1, with failures on command."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.received: list[ReceivedRequest] = []
        # API requests that arrived, counted as they arrive (before any delay).
        self.arrivals = 0
        self.arrived: list[Arrival] = []
        self.messages: dict[str, Message] = {}
        self._faults: list[_Fault] = []
        self._rejections: dict[str, tuple[int, int]] = {}  # to → (status, code)
        self._outage = False
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._front_door])
        messages = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
        app.router.add_post(f"{messages}.json", self._create)
        app.router.add_get(f"{messages}.json", self._list)
        app.router.add_get(f"{messages}/{{sid}}.json", self._fetch)
        app.router.add_route("*", f"/{API_VERSION}/{{tail:.*}}", self._not_found)
        app.router.add_get("/_control/state", self._control_state)
        app.router.add_post("/_control/{command}", self._control)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._closing.set()  # slow answers in flight stop waiting
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """What `client.api.base_url` (and TWILIO_API_BASE_URL) should be."""
        if self._runner is None:
            raise RuntimeError("the Twilio double is not started")
        return f"http://{self.host}:{self.port}"

    # -- failures on command --------------------------------------------------

    def fail(self, status: int = 503, *, times: int | None = 1,
             retry_after: float | None = None) -> None:
        """The next `times` requests answer `status` (a 429 says Retry-After: 1
        unless told otherwise)."""
        if status not in _FAILURE_STATUSES:
            raise ValueError(f"a failure is a known 4xx or 5xx status, not {status}")
        if status == HTTPStatus.TOO_MANY_REQUESTS and retry_after is None:
            retry_after = 1
        self._faults.append(_Fault("fail", _times(times), status=status, retry_after=retry_after))

    def slow(self, seconds: float, *, times: int | None = 1) -> None:
        """The next `times` requests are answered, normally, `seconds` late."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._faults.append(_Fault("slow", _times(times), seconds=seconds))

    def hold(self, *, times: int | None = 1) -> asyncio.Event:
        """The next `times` requests wait, then are answered normally, once the event
        returned is set: a test decides when Twilio answers. (`arrivals` counts them
        as they arrive.) Stopping the double releases them."""
        release = asyncio.Event()
        self._faults.append(_Fault("hold", _times(times), release=release))
        return release

    def drop(self, *, times: int | None = 1) -> None:
        """The next `times` requests get their connection closed, no answer."""
        self._faults.append(_Fault("drop", _times(times)))

    def lose_answer(self, *, after: float = 0.0, times: int | None = 1) -> None:
        """The next `times` requests are carried out (a message is created), but
        their answer never arrives: the connection closes `after` seconds later.
        What a client sees when Twilio accepted a message and the network failed."""
        if after < 0:
            raise ValueError("a delay cannot be negative")
        self._faults.append(_Fault("lose", _times(times), seconds=after))

    def reject(self, to: str, *, code: int = 21211, status: int = 400) -> None:
        """Every message to `to` is refused with Twilio's error `code`."""
        if not 400 <= status <= 499:
            raise ValueError(f"a permanent refusal is a 4xx status, not {status}")
        self._rejections[to] = (status, code)

    def outage(self) -> None:
        """Every request answers 503 until recover()."""
        self._outage = True

    def recover(self) -> None:
        """End an outage and forget the scripted faults (rejections stay)."""
        self._outage = False
        self._faults.clear()

    def reset(self) -> None:
        """Back to a fresh double: no faults, no rejections, nothing recorded."""
        self.recover()
        self._rejections.clear()
        self.received.clear()
        self.arrived.clear()
        self.messages.clear()

    # -- what it saw ----------------------------------------------------------

    @property
    def requests(self) -> int:
        """How many API requests reached the double (control calls excluded)."""
        return len(self.received)

    @property
    def sent(self) -> list[Message]:
        """The messages it accepted for sending, oldest first."""
        return [m for m in self.messages.values() if m.direction == "outbound-api"]

    def sent_to(self, number: str) -> list[Message]:
        return [m for m in self.sent if m.to == number]

    # -- webhooks to the system under test ------------------------------------

    async def deliver(self, sid: str, status: str = "delivered", error_code: int | None = None,
                      *, forged: bool = False) -> WebhookAnswer | None:
        """Move a message to `status` and post Twilio's status callback to its
        StatusCallback, if it has one. `forged` signs with the wrong token."""
        if status not in STATUSES:
            raise ValueError(f"{status!r} is not a Twilio message status")
        message = self.messages[sid]
        message.status = status
        message.date_updated = _now()
        if status in _SENT_STATUSES and message.date_sent is None:
            message.date_sent = message.date_updated
        message.error_code = error_code
        message.error_message = (
            None if error_code is None else DELIVERY_ERRORS.get(error_code, "Unknown error")
        )
        if message.status_callback is None:
            return None
        params = {
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "AccountSid": self.account_sid,
            "From": message.from_ or "",
            "To": message.to,
            "ApiVersion": API_VERSION,
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return await self._post_webhook(message.status_callback, params, forged=forged)

    async def send_inbound(self, url: str, from_: str, to: str, body: str,
                           *, forged: bool = False) -> WebhookAnswer:
        """A lead texts `body` (STOP, START …): post Twilio's incoming-message
        webhook to `url`."""
        message = Message(
            sid=_new_sid(), account_sid=self.account_sid, to=to, from_=from_, body=body,
            status="received", direction="inbound",
        )
        message.date_sent = message.date_created
        self.messages[message.sid] = message
        params = {
            "MessageSid": message.sid,
            "SmsMessageSid": message.sid,
            "SmsSid": message.sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(message.num_segments),
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
        }
        return await self._post_webhook(url, params, forged=forged)

    async def _post_webhook(self, url: str, params: dict[str, str],
                            *, forged: bool) -> WebhookAnswer:
        if self._session is None:
            raise RuntimeError("the Twilio double is not started")
        token = "forged" + self.auth_token if forged else self.auth_token
        headers = {
            "X-Twilio-Signature": RequestValidator(token).compute_signature(url, params),
            "User-Agent": "TwilioProxy/1.1",
        }
        async with self._session.post(url, data=params, headers=headers) as answer:
            return WebhookAnswer(answer.status, await answer.text())

    # -- the API --------------------------------------------------------------

    @web.middleware
    async def _front_door(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply the failures on command, then record what was asked and answered."""
        if request.path.startswith("/_control/"):
            return await handler(request)
        arrived_at = time.time()
        self.arrivals += 1
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.arrived.append(Arrival(arrived_at, request.method, request.path, form))
        response = await self._misbehave(request)
        try:
            if response is None:
                response = await handler(request)
        except web.HTTPException as refused:  # the router's 405 and the like
            self._record(request, form, refused.status, arrived_at)
            raise
        lost = request.get(_LOSE_ANSWER)
        if lost is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), lost.seconds)
            if request.transport is not None:
                request.transport.abort()
        dropped = request.transport is None or request.transport.is_closing()
        self._record(request, form, None if dropped else response.status, arrived_at)
        return response

    def _record(self, request: web.Request, form: dict[str, str], status: int | None,
                arrived_at: float) -> None:
        self.received.append(ReceivedRequest(
            method=request.method, path=request.path, query=dict(request.query), form=form,
            status=status, arrived_at=arrived_at,
        ))

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        """The scripted answer to this request, or None to answer normally."""
        if self._outage:
            return _failure(HTTPStatus.SERVICE_UNAVAILABLE)
        fault = self._next_fault()
        if fault is None:
            return None
        if fault.kind == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            return None
        if fault.kind == "hold":
            assert fault.release is not None
            closing = asyncio.ensure_future(self._closing.wait())
            released = asyncio.ensure_future(fault.release.wait())
            try:
                await asyncio.wait({closing, released}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                released.cancel()
            return None
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=HTTPStatus.INTERNAL_SERVER_ERROR)  # never written
        if fault.kind == "lose":
            request[_LOSE_ANSWER] = fault
            return None
        return _failure(fault.status, fault.retry_after)

    def _next_fault(self) -> _Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self._faults.pop(0)
        return fault

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """401 unless the Basic credentials are this account's; 404 for another
        account's URL."""
        if _basic_credentials(request) != (self.account_sid, self.auth_token):
            return twilio_error(401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return _not_found_error(request.path)
        return None

    async def _create(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        to, from_ = fields.get("To", "").strip(), fields.get("From", "").strip()
        service_sid = fields.get("MessagingServiceSid", "").strip() or None
        media = form.getall("MediaUrl", [])
        refusal = self._refusal(to, from_, service_sid, fields.get("Body", ""), bool(media))
        if refusal is not None:
            status, code = refusal
            text = REFUSALS.get(code, "Message refused (error {code})")
            return twilio_error(status, code, text.format(to=to, from_=from_, code=code))
        message = Message(
            sid=_new_sid(), account_sid=self.account_sid, to=to, from_=from_ or None,
            body=fields.get("Body", ""), status="queued", direction="outbound-api",
            status_callback=fields.get("StatusCallback") or None,
            messaging_service_sid=service_sid, num_media=len(media),
        )
        self.messages[message.sid] = message
        return web.json_response(message.resource(), status=HTTPStatus.CREATED)

    def _refusal(self, to: str, from_: str, service_sid: str | None, body: str,
                 has_media: bool) -> tuple[int, int] | None:
        """The HTTP status and Twilio error code that refuse this message, if any."""
        code = None
        if not to:
            code = 21604
        elif not from_ and service_sid is None:
            code = 21603
        elif not body and not has_media:
            code = 21602
        elif len(body) > MAX_BODY_LENGTH:
            code = 21617
        elif not _E164.match(to):
            code = 21211
        elif from_ and not (_E164.match(from_) or _SHORT_CODE.match(from_)
                            or _ALPHANUMERIC_SENDER.match(from_)):
            code = 21212
        elif from_ == to:
            code = 21266
        return (400, code) if code is not None else self._rejections.get(to)

    async def _fetch(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        message = self.messages.get(request.match_info["sid"])
        if message is None:
            return _not_found_error(request.path)
        return web.json_response(message.resource())

    async def _list(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        query = request.query
        try:
            size = min(max(int(query.get("PageSize", DEFAULT_PAGE_SIZE)), 1), MAX_PAGE_SIZE)
            page = max(int(query.get("Page", 0)), 0)
            found = [m for m in self.messages.values() if _matches(m, query)]
        except ValueError as exc:
            return twilio_error(400, 20001, f"Invalid parameter: {exc}")
        found.reverse()  # newest first, as Twilio lists them
        start = page * size
        items = found[start : start + size]
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def page_uri(number: int, token: str | None = None) -> str:
            params = {**filters, "PageSize": size, "Page": number}
            if token is not None:
                params["PageToken"] = token
            return f"{request.path}?{urlencode(params)}"

        has_next = start + size < len(found)
        return web.json_response({
            "messages": [m.resource() for m in items],
            "page": page,
            "page_size": size,
            "start": start,
            "end": start + max(len(items) - 1, 0),
            "uri": page_uri(page, query.get("PageToken")),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1, f"PA{items[-1].sid}") if has_next else None,
            "previous_page_uri": page_uri(page - 1, f"PB{items[0].sid}")
            if page > 0 and items else None,
        })

    async def _not_found(self, request: web.Request) -> web.Response:
        return _not_found_error(request.path)

    # -- control, for tests whose client runs in another process -------------

    async def _control(self, request: web.Request) -> web.Response:
        command = request.match_info["command"]
        try:
            args: dict[str, Any] = await request.json() if request.can_read_body else {}
            answer = await self._run_control(command, args)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": f"{command}: {exc!r}"}, status=400)
        return web.json_response({"ok": True, **answer})

    async def _run_control(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        times = args.get("times", 1)
        simple: dict[str, Callable[[], None]] = {
            "fail": lambda: self.fail(int(args.get("status", 503)), times=times,
                                      retry_after=args.get("retry_after")),
            "slow": lambda: self.slow(float(args["seconds"]), times=times),
            "drop": lambda: self.drop(times=times),
            "lose_answer": lambda: self.lose_answer(after=float(args.get("after", 0.0)),
                                                    times=times),
            "reject": lambda: self.reject(args["to"], code=int(args.get("code", 21211)),
                                          status=int(args.get("status", 400))),
            "outage": self.outage,
            "recover": self.recover,
            "reset": self.reset,
        }
        if command in simple:
            simple[command]()
            return {}
        if command == "deliver":
            answer = await self.deliver(args["sid"], args.get("status", "delivered"),
                                        args.get("error_code"), forged=args.get("forged", False))
            return {"answer": None if answer is None else asdict(answer)}
        if command == "inbound":
            answer = await self.send_inbound(args["url"], args["from"], args["to"], args["body"],
                                             forged=args.get("forged", False))
            return {"answer": asdict(answer), "sid": next(reversed(self.messages))}
        raise KeyError("no such control command")

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response({
            "requests": self.requests,
            "received": [{**asdict(r), "succeeded": r.succeeded} for r in self.received],
            "sent": [m.resource() for m in self.sent],
            "outage": self._outage,
        })


def _times(times: int | None) -> int | None:
    if times is not None and times < 1:
        raise ValueError("times is at least 1, or None for until recovered")
    return times


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic …` header, if well formed."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def _new_sid() -> str:
    return "SM" + uuid.uuid4().hex


def _failure(status: int, retry_after: float | None = None) -> web.Response:
    """Twilio's answer when Twilio itself is failing: code 20000 + status."""
    response = twilio_error(status, 20000 + status, HTTPStatus(status).phrase)
    if retry_after is not None:
        response.headers["Retry-After"] = f"{retry_after:g}"
    return response


def _not_found_error(path: str) -> web.Response:
    return twilio_error(404, 20404, f"The requested resource {path} was not found")


def _matches(message: Message, query: Any) -> bool:
    """Twilio's list filters: To, From, and DateSent (a day, or `DateSent<` /
    `DateSent>` for on-or-before / on-or-after)."""
    if "To" in query and message.to != query["To"]:
        return False
    if "From" in query and message.from_ != query["From"]:
        return False
    for key, keep in (("DateSent", _same_day), ("DateSent<", _on_or_before),
                      ("DateSent>", _on_or_after)):
        if key in query and (message.date_sent is None
                             or not keep(message.date_sent, query[key])):
            return False
    return True


def _parse_moment(raw: str) -> datetime | date:
    if len(raw) == 10:
        return date.fromisoformat(raw)
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def _same_day(sent: datetime, raw: str) -> bool:
    bound = _parse_moment(raw)
    return sent.date() == (bound.date() if isinstance(bound, datetime) else bound)


def _on_or_before(sent: datetime, raw: str) -> bool:
    bound = _parse_moment(raw)
    return sent <= bound if isinstance(bound, datetime) else sent.date() <= bound


def _on_or_after(sent: datetime, raw: str) -> bool:
    bound = _parse_moment(raw)
    return sent >= bound if isinstance(bound, datetime) else sent.date() >= bound


# -- as a process ---------------------------------------------------------------


async def serve(double: TwilioDouble) -> None:
    """Run until SIGTERM or SIGINT; print the base URL once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with double:
        print(double.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.twilio_double",
                                     description="A local Twilio Messages API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    args = parser.parse_args(argv)
    double = TwilioDouble(account_sid=args.account_sid, auth_token=args.auth_token,
                          host=args.host, port=args.port)
    asyncio.run(serve(double))


if __name__ == "__main__":
    main()
