"""The gateway's aiohttp application: its routes, middlewares and life cycle.

    /v1/…                    every annotated RPC (gateway.transcoding)
    GET /v1/events           Server-Sent Events (gateway.events)
    /api/…                   the original API (gateway.legacy)
    /auth/…                  browser sessions (gateway.sessions)
    /webhooks/twilio/…       Twilio's webhooks (gateway.webhooks)
    GET /openapi.json        the OpenAPI document (gateway.openapi)
    GET /, /static/…         the web console, from CRM_GATEWAY_STATIC_DIR
    GET /healthz, /metrics   the gateway is up; Prometheus metrics

Every response carries the security headers below and `X-Request-Id`; API
responses are `Cache-Control: no-store`. One access log line per request (never
its headers, cookies or query), with the request id on every line logged while
serving it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from google.rpc import code_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import errors, metrics, openapi
from gateway.config import Settings
from gateway.events import EventStreams
from gateway.legacy import LegacyApi
from gateway.sessions import CALLER, Sessions
from gateway.transcoding import Transcoder
from gateway.upstream import REQUEST_ID, Upstreams
from gateway.webhooks import TwilioWebhooks
from services.shared import context

log = logging.getLogger("crm.gateway")
access = logging.getLogger("crm.access")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_REQUEST_ID = re.compile(r"^[!-~]{1,128}$")

SETTINGS = web.AppKey("settings", Settings)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
EVENTS = web.AppKey("events", EventStreams)


def request_id(sent: str | None) -> str:
    """The client's X-Request-Id if it is sane, else a new one."""
    if sent is not None and _REQUEST_ID.match(sent):
        return sent
    return uuid.uuid4().hex


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    return route.name or (route.resource.canonical if route.resource is not None
                          else "unmatched")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, access log line, metrics."""
    request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id"))
    route = _route_name(request) if request.match_info.http_exception is None else "unmatched"
    entered = context.enter(context.Call("gateway", f"/gateway/{route}", request[REQUEST_ID]))
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except BaseException:
        status = 499  # the client went away (handler cancelled)
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(route, request.method).observe(elapsed)
        caller = request.get(CALLER)
        access.info("%s %s %s", request.method, request.path, status, extra={
            "route": route, "status": status, "ms": round(elapsed * 1000, 2),
            "principal": getattr(caller, "principal", "") or "",
        })
        context.leave(entered)


def refusals(max_body: int) -> Middleware:
    """Every refusal, whoever made it, answered as a google.rpc.Status (gateway.errors)."""

    @web.middleware
    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.Refused as refused:
            return errors.response(refused.refusal)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return errors.response(errors.from_http_exception(error, max_body))
        except Exception:
            log.exception("unexpected failure serving %s", request.path)
            return errors.response(errors.refusal(errors.make_status(
                code_pb2.INTERNAL, "INTERNAL", "internal error")))

    return answer


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    settings = request.app[SETTINGS]
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if settings.secure_cookies:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    response.headers.setdefault("Cache-Control", "no-store")
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


class Console:
    """The web console's files (written by others); 404 while they are absent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index, name="console.index"),
            web.get("/static/{path:.+}", self.static, name="console.static"),
        ]

    def _file(self, relative: str) -> web.FileResponse:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file() or any(
            part.startswith(".") for part in path.relative_to(self.root).parts
        ):
            raise errors.GatewayError(code_pb2.NOT_FOUND, "FILE_NOT_FOUND",
                                      f"no such file: {relative}")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def index(self, request: web.Request) -> web.FileResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.FileResponse:
        return self._file(request.match_info["path"])


def create_app(settings: Settings) -> web.Application:
    upstreams = Upstreams(settings)
    sessions = Sessions(settings)
    events = EventStreams(settings, upstreams, sessions)
    transcoder = Transcoder(upstreams, sessions)
    document = json.dumps(openapi.document(transcoder.bindings, settings.public_url))

    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[observe, refusals(settings.max_body_bytes)])
    app[SETTINGS] = settings
    app[UPSTREAMS] = upstreams
    app[EVENTS] = events

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def exposition(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(text=document, content_type="application/json")

    app.add_routes([
        *transcoder.routes(),
        *events.routes(),
        *LegacyApi(settings, upstreams, sessions).routes(),
        *sessions.routes(),
        *TwilioWebhooks(settings, upstreams).routes(),
        web.get("/openapi.json", openapi_json, name="openapi", allow_head=False),
        web.get("/healthz", healthz, name="healthz"),
        web.get("/metrics", exposition, name="metrics", allow_head=False),
        *Console(settings.static_dir).routes(),
    ])

    async def open_channels(app: web.Application) -> None:
        upstreams.open()

    async def end_streams(app: web.Application) -> None:
        await events.close()

    async def close_channels(app: web.Application) -> None:
        await upstreams.close(grace=1.0)

    app.on_startup.append(open_channels)
    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close_channels)
    app.on_response_prepare.append(_add_headers)
    return app


@dataclass
class RunningGateway:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        """End event streams, let requests in flight finish, close the channels."""
        await self.runner.cleanup()


async def start(settings: Settings, *, host: str | None = None, port: int = 8080
                ) -> RunningGateway:
    """Serve the gateway; `port=0` picks a free port (see `RunningGateway.port`)."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    bind = host or settings.bind_host
    site = web.TCPSite(runner, bind, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("gateway serving on %s:%s", bind, bound,
             extra={"port": bound, "public_url": settings.public_url,
                    "targets": settings.targets})
    return RunningGateway(runner, bind, bound)
