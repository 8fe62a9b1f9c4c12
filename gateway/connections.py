"""The gateway's HTTP connections: how long they may idle, and what a request
aiohttp cannot parse is answered with.

    CRM_GATEWAY_IDLE_SECONDS (15)   a connection must send a whole request head
                                    within this many seconds of opening, or of
                                    its last response; an idle keep-alive
                                    connection is closed after it too

aiohttp's keep-alive timer does both: it starts when a connection opens and
again after each response, bytes of a request head do not reset it, and it
only closes a connection that is waiting for a request (never one whose
request is being served, such as an event stream). So a client that never
finishes its headers holds a socket for at most this long.

A request aiohttp cannot parse (a bad request line, a header too long, …)
never reaches the application, its middlewares or its `on_response_prepare`
signal: `Connection.handle_error` answers it here, as a google.rpc.Status with
the security headers every other response carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from google.rpc import code_pb2

from gateway import errors

log = logging.getLogger("crm.gateway")


class Connection(RequestHandler):  # type: ignore[misc]
    """aiohttp's request handler, answering unparsable requests as the gateway does."""

    def __init__(self, manager: web.Server, *, headers: Mapping[str, str], **options: Any
                 ) -> None:
        super().__init__(manager, **options)
        self._security_headers = dict(headers)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status == 500:
            # Not a parse error: an unexpected failure, which aiohttp logs and answers.
            response = super().handle_error(request, status, exc, message)
        else:
            log.warning("a request that could not be parsed was refused (%s)", status,
                        extra={"status": status, "peer": request.remote or ""})
            if request.writer.output_size > 0:
                raise ConnectionError("a response was already sent on this connection")
            refused = errors.refusal(errors.make_status(
                code_pb2.INVALID_ARGUMENT, "MALFORMED_REQUEST",
                "the request is not valid HTTP/1.1 that this gateway accepts",
                metadata={"http_status": str(status)}))
            response = errors.response(errors.Refusal(refused.status, status, refused.headers))
        for name, value in self._security_headers.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        response.force_close()
        return response


BACKLOG = 1024


class Site(web.BaseSite):
    """A TCP site whose connections are `Connection`s."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 headers: Mapping[str, str], idle_seconds: float) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._headers = dict(headers)
        self._idle_seconds = idle_seconds

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _connection(self, server: web.Server, loop: asyncio.AbstractEventLoop
                    ) -> Callable[[], Connection]:
        def make() -> Connection:
            return Connection(server, loop=loop, headers=self._headers,
                              keepalive_timeout=self._idle_seconds, access_log=None)

        return make

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # Browsers reconnect together after a restart: a longer accept queue than
        # asyncio's 100 keeps their SYNs from being dropped (and retried seconds later).
        self._server = await loop.create_server(
            self._connection(server, loop), self._host, self._port, reuse_address=True,
            backlog=BACKLOG)
