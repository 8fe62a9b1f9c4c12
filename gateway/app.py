"""The gateway's aiohttp application: its routes, middlewares and life cycle.

    /v1/…                    every annotated RPC (gateway.transcoding)
    GET /v1/events           Server-Sent Events (gateway.events)
    /api/…                   the original API (gateway.legacy)
    /auth/…                  browser sessions (gateway.sessions)
    /webhooks/twilio/…       Twilio's webhooks (gateway.webhooks)
    GET /openapi.json        the OpenAPI document (gateway.openapi)
    GET /, /static/…         the web console, from CRM_GATEWAY_STATIC_DIR (and its
                             service worker and manifest, /sw.js, /manifest.webmanifest)
    GET /healthz             the gateway is up

Prometheus metrics are not on this port: `GET /metrics` is served on
CRM_METRICS_PORT (off unless set), bound to CRM_BIND_HOST, as the services do.
Connections are guarded by gateway.connections (idle and header deadlines, and
requests aiohttp cannot parse).

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
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from google.rpc import code_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import errors, metrics, openapi
from gateway.bodies import json_object, read_body
from gateway.config import Settings
from gateway.connections import Site
from gateway.events import EventStreams
from gateway.legacy import LegacyApi
from gateway.sessions import CALLER, Sessions
from gateway.transcoding import Transcoder
from gateway.upstream import REQUEST_ID, Upstreams
from gateway.webhooks import TwilioWebhooks
from services.shared import context, ids
from services.shared.errors import DomainError
from services.shared.jwts import claimed_principal
from services.shared.limits import FailureLimits

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
# The console's text files, served with their charset.
TEXT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
              ".svg": "image/svg+xml", ".json": "application/json", ".txt": "text/plain"}

SETTINGS = web.AppKey("settings", Settings)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
EVENTS = web.AppKey("events", EventStreams)


def request_id(sent: str | None) -> str:
    """The client's X-Request-Id if it is sane, else a new one."""
    if sent is not None and _REQUEST_ID.match(sent):
        return sent
    return ids.uuid4().hex


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
            "org": identity.org if (identity := getattr(caller, "identity", None)) else "",
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
        except DomainError as error:
            return errors.response(errors.from_domain_error(error))
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return errors.response(errors.from_http_exception(error, max_body))
        except Exception:
            log.exception("unexpected failure serving %s", request.path)
            return errors.response(errors.refusal(errors.make_status(
                code_pb2.INTERNAL, "INTERNAL", "internal error")))

    return answer


LOGIN_ROUTE = "auth.login"
# Routes that read no credentials: an Authorization header sent to them tries nothing.
PUBLIC_ROUTES = frozenset({"healthz", "openapi", "console.index", "console.static",
                           "console.worker", "console.manifest"})


def failed_authentications(limits: FailureLimits) -> Middleware:
    """Failed logins and bearer authentications, limited per client address and
    per principal.

    A request that tries credentials (POST /auth/login, or any request with an
    Authorization header) is refused 429 TOO_MANY_FAILED_AUTHENTICATIONS, with
    Retry-After, while its address, or the principal its credential claims to be,
    has had CRM_AUTH_FAILURES_MAX failures (401 answers, from the gateway or
    upstream) within the window. A JWT claims a principal (its `sub`, read
    unchecked) even when it is refused, so guessing at one principal from many
    addresses is limited too; a static token claims nobody until it is accepted.
    Session cookies are signed and guessing them is hopeless, so they are not
    limited here.
    """

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route_name(request)
        trying = ("Authorization" in request.headers and route not in PUBLIC_ROUTES) or (
            request.method == "POST" and route == LOGIN_ROUTE)
        if not trying:
            return await handler(request)
        keys = [f"address:{request.remote or ''}"]
        if (claimed := await _claimed_principal(request, route)) is not None:
            keys.append(f"principal:{claimed}")
        try:
            limits.check(*keys)
        except DomainError as error:
            log.warning("refused an authentication attempt: too many failures",
                        extra={"peer": request.remote or "", "path": request.path})
            return errors.response(errors.from_domain_error(error))
        response = await handler(request)
        if response.status == 401:
            limits.failed(*keys)
        return response

    return limit


async def _claimed_principal(request: web.Request, route: str | None) -> str | None:
    """The principal the request's credential claims to be: a JWT's `sub`, from the
    Authorization header or the login's body (read here; aiohttp keeps it for the
    handler). A body this cannot read is left for the handler to refuse."""
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    if not token and route == LOGIN_ROUTE and request.content_type == "application/json":
        try:
            given = json_object(await read_body(request)).get("token")
        except errors.GatewayError:
            return None
        token = given.strip() if isinstance(given, str) else ""
    return claimed_principal(token) if token else None


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
    """The web console's files (written by others); 404 while they are absent.

    The service worker and the web app manifest are served from the root
    (`/sw.js`, `/manifest.webmanifest`): a worker's scope is the folder it is
    served from, and the console's is `/`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index, name="console.index"),
            web.get("/sw.js", self.worker, name="console.worker"),
            web.get("/manifest.webmanifest", self.manifest, name="console.manifest"),
            web.get("/static/{path:.+}", self.static, name="console.static"),
        ]

    def _file(self, relative: str, content_type: str | None = None) -> web.FileResponse:
        path = self._resolve(relative)
        if path is None:
            raise errors.GatewayError(code_pb2.NOT_FOUND, "FILE_NOT_FOUND", "no such file")
        headers = {"Cache-Control": "no-cache"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        elif (kind := TEXT_TYPES.get(path.suffix)) is not None:
            headers["Content-Type"] = f"{kind}; charset=utf-8"
        return web.FileResponse(path, headers=headers)

    def _resolve(self, relative: str) -> Path | None:
        """The file under the root a request names, or None: no control characters,
        nothing hidden, nothing outside the root, names the file system accepts."""
        if any(ord(c) < 32 or ord(c) == 127 for c in relative):
            return None
        try:
            path = (self.root / relative).resolve()
            if not path.is_relative_to(self.root) or not path.is_file():
                return None
        except (OSError, ValueError):  # a name too long, …
            return None
        if any(part.startswith(".") for part in path.relative_to(self.root).parts):
            return None
        return path

    async def index(self, request: web.Request) -> web.FileResponse:
        return self._file("index.html")

    async def worker(self, request: web.Request) -> web.FileResponse:
        return self._file("sw.js", "text/javascript; charset=utf-8")

    async def manifest(self, request: web.Request) -> web.FileResponse:
        return self._file("manifest.webmanifest", "application/manifest+json")

    async def static(self, request: web.Request) -> web.FileResponse:
        return self._file(request.match_info["path"])


def create_app(settings: Settings) -> web.Application:
    upstreams = Upstreams(settings)
    sessions = Sessions(settings)
    events = EventStreams(settings, upstreams, sessions)
    transcoder = Transcoder(upstreams, sessions)
    document = json.dumps(openapi.document(transcoder.bindings, settings.public_url,
                                           sms_max_segments=settings.sms_max_segments))

    failures = FailureLimits(limit=settings.auth_failures_max,
                             window=settings.auth_failures_window)
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[observe, failed_authentications(failures),
                                       refusals(settings.max_body_bytes)])
    app[SETTINGS] = settings
    app[UPSTREAMS] = upstreams
    app[EVENTS] = events

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

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
        *Console(settings.static_dir).routes(),
    ])

    async def open_channels(app: web.Application) -> None:
        upstreams.open()

    async def end_streams(app: web.Application) -> None:
        await events.close()

    async def close_channels(app: web.Application) -> None:
        await upstreams.close(grace=1.0)
        await sessions.close()

    app.on_startup.append(open_channels)
    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close_channels)
    app.on_response_prepare.append(_add_headers)
    return app


def metrics_app() -> web.Application:
    """`GET /metrics` alone, for CRM_METRICS_PORT."""
    async def exposition(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/metrics", exposition, allow_head=False)])
    return app


@dataclass
class RunningGateway:
    runner: web.AppRunner
    host: str
    port: int
    metrics: web.AppRunner | None = None
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        """End event streams, let requests in flight finish, close the channels."""
        await self.runner.cleanup()
        if self.metrics is not None:
            await self.metrics.cleanup()


async def start(settings: Settings, *, host: str | None = None, port: int = 8080
                ) -> RunningGateway:
    """Serve the gateway; `port=0` picks a free port (see `RunningGateway.port`)."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    bind = host or settings.bind_host
    site = Site(runner, bind, port, headers=SECURITY_HEADERS,
                idle_seconds=settings.idle_seconds)
    await site.start()
    bound = int(runner.addresses[0][1])
    running = RunningGateway(runner, bind, bound)
    if settings.metrics_port is not None:
        running.metrics = web.AppRunner(metrics_app(), access_log=None)
        await running.metrics.setup()
        await web.TCPSite(running.metrics, settings.bind_host, settings.metrics_port).start()
        running.metrics_port = int(running.metrics.addresses[0][1])
        log.info("metrics on :%s", running.metrics_port,
                 extra={"metrics_port": running.metrics_port})
    log.info("gateway serving on %s:%s", bind, bound,
             extra={"port": bound, "public_url": settings.public_url,
                    "targets": settings.targets})
    return running
