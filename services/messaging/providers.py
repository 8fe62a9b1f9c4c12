"""SMS providers: Twilio through the `twilio` library, and a console stand-in.

Every failure is sorted into one of three kinds, because each asks for a
different answer:

    ProviderRejected                  a permanent refusal of this message (21211 an
                                      invalid number, 21610 an unsubscribed
                                      recipient…): never retried, not held against
                                      the breaker, the message is failed
    ProviderUnavailable(maybe_sent=False)  Twilio answered 429 or 503, or no
                                      connection could be made: not sent, retry
    ProviderUnavailable(maybe_sent=True)   the request may have reached Twilio but
                                      no answer came back (timeout, dropped
                                      connection, a 500/502/504): look it up with
                                      `find` before sending again

`find` looks for a message this service already handed over: Twilio's newest
messages to the number, from our number, created since the intent, with the
same body, and not already known under another of our messages.

A request given up on must never reach Twilio later. After an ordinary close
the kernel keeps retransmitting what Twilio has not acknowledged, so across a
network partition a request abandoned on timeout could land after its message
was looked up, not found and sent again: the text twice. Sockets to Twilio
therefore close with a reset (SO_LINGER 0), which discards what is unsent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import aiohttp

from services.messaging.domain import PROVIDER_STATUSES, MessageStatus
from services.shared import ids

log = logging.getLogger(__name__)
T = TypeVar("T")

# Twilio's clock and ours may disagree a little.
CLOCK_SKEW = timedelta(minutes=2)
# How many of the recipient's newest messages `find` looks through.
LOOKUP_DEPTH = 50
_NOT_SENT_STATUSES = {429, 503}


@dataclass(frozen=True)
class Receipt:
    provider_message_id: str
    status: MessageStatus


class ProviderRejected(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProviderUnavailable(Exception):
    def __init__(self, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


def is_transient(error: BaseException) -> bool:
    return isinstance(error, ProviderUnavailable)


class SmsProvider(Protocol):
    name: str
    from_number: str

    async def send(self, *, to: str, body: str, status_callback: str | None,
                   from_number: str | None = None) -> Receipt: ...

    async def find(
        self, *, to: str, body: str, since: datetime, known: Collection[str],
        from_number: str | None = None,
    ) -> Receipt | None: ...

    async def close(self) -> None: ...


class ConsoleProvider:
    """Logs each message and reports it delivered, so the system runs offline."""

    name = "console"

    def __init__(self, from_number: str = "") -> None:
        self.from_number = from_number

    async def send(self, *, to: str, body: str, status_callback: str | None,
                   from_number: str | None = None) -> Receipt:
        sid = f"CONSOLE{ids.uuid4().hex}"
        log.info("SMS to %s: %s", to, body, extra={"provider_message_id": sid})
        return Receipt(sid, MessageStatus.DELIVERED)

    async def find(
        self, *, to: str, body: str, since: datetime, known: Collection[str],
        from_number: str | None = None,
    ) -> Receipt | None:
        # Sending to the console cannot fail half-way, so nothing is ever in doubt.
        return None

    async def close(self) -> None:
        return None


class TwilioProvider:
    """Twilio's Messages API through the `twilio` library's asyncio client."""

    name = "twilio"

    def __init__(
        self, *, account_sid: str, auth_token: str, from_number: str, api_base_url: str,
        timeout: float,
    ) -> None:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        self.from_number = from_number
        self._timeout = timeout
        self._http = AsyncTwilioHttpClient(pool_connections=False)
        self._http.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=abortive_socket))
        self._client = Client(account_sid, auth_token, http_client=self._http)
        # Every Messages URL is built from the api domain's base URL.
        self._client.api.base_url = api_base_url.rstrip("/")

    async def send(self, *, to: str, body: str, status_callback: str | None,
                   from_number: str | None = None) -> Receipt:
        """Text `to` from `from_number` (its org's number), else the one configured."""
        options: dict[str, str] = {"to": to, "from_": from_number or self.from_number,
                                   "body": body}
        if status_callback:
            options["status_callback"] = status_callback
        message = await self._call(self._client.messages.create_async(**options))
        return Receipt(message.sid, _status(message.status))

    async def find(
        self, *, to: str, body: str, since: datetime, known: Collection[str],
        from_number: str | None = None,
    ) -> Receipt | None:
        recent = await self._call(
            self._client.messages.list_async(to=to, from_=from_number or self.from_number,
                                             limit=LOOKUP_DEPTH)
        )
        earliest = since - CLOCK_SKEW
        matches = [
            m for m in recent
            if m.body == body and m.sid not in known
            and (m.date_created is None or m.date_created >= earliest)
        ]
        if not matches:
            return None
        oldest = min(matches, key=lambda m: m.date_created or since)
        return Receipt(oldest.sid, _status(oldest.status))

    async def close(self) -> None:
        await self._http.close()

    async def _call(self, request: Awaitable[T]) -> T:
        from twilio.base.exceptions import TwilioException, TwilioRestException

        try:
            async with asyncio.timeout(self._timeout):
                return await request
        except TwilioRestException as error:
            raise _classify(int(error.status or 0), int(error.code or 0), str(error.msg)) from error
        except TwilioException as error:
            # A list page that failed carries the HTTP response, not an error code.
            response = error.args[1] if len(error.args) > 1 else None
            status = int(getattr(response, "status_code", 0) or 0)
            raise _classify(status, status, str(error.args[0])) from error
        except aiohttp.ClientConnectorError as error:
            raise ProviderUnavailable(f"cannot connect to Twilio: {error}",
                                      maybe_sent=False) from error
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise ProviderUnavailable(f"no answer from Twilio: {error!r}",
                                      maybe_sent=True) from error


def abortive_socket(address: tuple[int, int, int, str, tuple[object, ...]]) -> socket.socket:
    """A socket whose close resets the connection, discarding what is not yet delivered."""
    family, kind, proto, _, _ = address
    made = socket.socket(family=family, type=kind, proto=proto)
    made.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return made


def _classify(status: int, code: int, message: str) -> Exception:
    """Twilio's answer, as one of the three kinds of failure."""
    if status in _NOT_SENT_STATUSES:
        return ProviderUnavailable(f"Twilio answered {status}", maybe_sent=False)
    if status >= 500 or status == 0:
        return ProviderUnavailable(f"Twilio answered {status or 'nothing usable'}",
                                   maybe_sent=True)
    return ProviderRejected(code or status, message)


def _status(raw: object) -> MessageStatus:
    value = getattr(raw, "value", raw)
    return PROVIDER_STATUSES.get(str(value), MessageStatus.QUEUED)

