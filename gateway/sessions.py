"""Who is calling: API clients by their Authorization header, browsers by a session cookie.

`EventSource` cannot send an Authorization header, and a long-lived token must
stay out of URLs and logs, so a browser logs in once:

    POST /auth/login {"token": "…"}   → 200 {"principal", "csrfToken", "expiresAt"}
                                         + Set-Cookie: crm_session=…; HttpOnly; SameSite=Strict;
                                           Path=/ (and Secure, named __Host-crm_session,
                                           when CRM_PUBLIC_URL is https)
    GET  /auth/session                 → 200 {"principal", "csrfToken", "expiresAt"} or 401
    POST /auth/logout                  → 204, the cookie cleared

The cookie holds the principal, an expiry and a random nonce, signed with
HMAC-SHA256 under CRM_SESSION_SECRET (by default derived from CRM_API_TOKENS,
so replicas agree); nothing is stored server side. The CSRF token is an HMAC of
the session's nonce: every cookie-authenticated request that is not GET or HEAD
must send it back in `X-CSRF-Token` (403 PERMISSION_DENIED / CSRF_TOKEN_INVALID
otherwise). A cookie-authenticated call goes upstream with the principal's own
token from CRM_API_TOKENS, so the principal is the actor of every audit record.

A request with an Authorization header is an API client: the header goes
upstream as it is, cookies are ignored and no CSRF token is needed. An expired
or tampered cookie is 401 (SESSION_EXPIRED, SESSION_INVALID). Logout cannot
revoke a copy of the cookie taken earlier; it stops working at its expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from google.rpc import code_pb2

from gateway.bodies import read_json_object
from gateway.config import Settings
from gateway.errors import GatewayError
from services.shared import errors as domain_errors
from services.shared.interceptor import Tokens

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Session:
    principal: str
    expires: int
    nonce: str


@dataclass(frozen=True)
class Caller:
    """Who a request acts as, and the authorization it presents upstream."""

    authorization: str | None
    principal: str = ""
    session: Session | None = None


CALLER = web.RequestKey("caller", Caller)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = Tokens(settings.tokens)
        self.cookie_name = "__Host-crm_session" if settings.secure_cookies else "crm_session"
        self._secret = settings.session_secret

    # -- the cookie --------------------------------------------------------------

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest()

    def issue(self, principal: str, *, now: float | None = None) -> tuple[str, Session]:
        issued = time.time() if now is None else now
        session = Session(principal, int(issued) + self.settings.session_seconds,
                          secrets.token_urlsafe(16))
        payload = _b64(json.dumps(
            {"p": session.principal, "e": session.expires, "n": session.nonce},
            separators=(",", ":"),
        ).encode())
        return f"{payload}.{_b64(self._mac(b'session', payload.encode()))}", session

    def read(self, value: str, *, now: float | None = None) -> Session:
        """The session a cookie holds; 401 if it is tampered with or expired."""
        payload, _, signature = value.partition(".")
        try:
            valid = hmac.compare_digest(_unb64(signature), self._mac(b"session", payload.encode()))
            fields = json.loads(_unb64(payload)) if valid else None
            session = (Session(str(fields["p"]), int(fields["e"]), str(fields["n"]))
                       if fields else None)
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
            session = None
        if session is None:
            raise GatewayError(code_pb2.UNAUTHENTICATED, "SESSION_INVALID",
                               "the session cookie is not valid; log in again")
        if session.expires <= (time.time() if now is None else now):
            raise GatewayError(code_pb2.UNAUTHENTICATED, "SESSION_EXPIRED",
                               "the session has expired; log in again")
        return session

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.nonce.encode()))

    def check_csrf(self, session: Session, sent: str | None) -> None:
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf_token(session).encode()):
            raise GatewayError(
                code_pb2.PERMISSION_DENIED, "CSRF_TOKEN_INVALID",
                f"a request made with the session cookie must send its {CSRF_HEADER} "
                "(from POST /auth/login or GET /auth/session)",
            )

    # -- every request -----------------------------------------------------------

    def caller(self, request: web.Request) -> Caller:
        """Who this request acts as (memoized on the request); 401/403 if it cannot."""
        found: Caller | None = request.get(CALLER)
        if found is not None:
            return found
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            if not all(32 <= ord(c) <= 126 for c in authorization):
                raise GatewayError(code_pb2.UNAUTHENTICATED, "INVALID_AUTHORIZATION",
                                   "the Authorization header is not printable ASCII")
            found = Caller(authorization, self._principal_of(authorization))
        elif (cookie := request.cookies.get(self.cookie_name)) is not None:
            session = self.read(cookie)
            token = self.settings.token_of(session.principal)
            if token is None:
                raise GatewayError(code_pb2.UNAUTHENTICATED, "SESSION_INVALID",
                                   "the session's principal is no longer accepted; log in again")
            if request.method not in SAFE_METHODS:
                self.check_csrf(session, request.headers.get(CSRF_HEADER))
            found = Caller(f"Bearer {token}", session.principal, session)
        else:
            found = Caller(None)
        request[CALLER] = found
        return found

    def _principal_of(self, authorization: str) -> str:
        """For log lines only: the upstream decides whether the token is accepted."""
        try:
            return self.tokens.principal(authorization)
        except domain_errors.Unauthenticated:
            return ""

    # -- the routes ----------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/auth/login", self.login, name="auth.login"),
            web.get("/auth/session", self.current, name="auth.session", allow_head=False),
            web.post("/auth/logout", self.logout, name="auth.logout"),
        ]

    async def login(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            # Cross-site forms cannot send JSON: this keeps login CSRF out too.
            raise GatewayError(code_pb2.INVALID_ARGUMENT, "UNSUPPORTED_MEDIA_TYPE",
                               "send the token as JSON: {\"token\": \"…\"}")
        body = await read_json_object(request)
        token = body.get("token")
        if not isinstance(token, str) or not token.strip():
            raise GatewayError.bad_field("token", "required: a token from CRM_API_TOKENS")
        try:
            principal = self.tokens.principal(f"Bearer {token.strip()}")
        except domain_errors.Unauthenticated:
            raise GatewayError(code_pb2.UNAUTHENTICATED, "INVALID_TOKEN",
                               "the token is not accepted") from None
        value, session = self.issue(principal)
        request[CALLER] = Caller(None, principal, session)  # for the access log
        response = web.json_response(self._describe(session))
        response.set_cookie(
            self.cookie_name, value, max_age=self.settings.session_seconds, path="/",
            secure=self.settings.secure_cookies, httponly=True, samesite="Strict",
        )
        return response

    async def current(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(self.cookie_name)
        if cookie is None:
            raise GatewayError(code_pb2.UNAUTHENTICATED, "NO_SESSION", "not logged in")
        return web.json_response(self._describe(self.read(cookie)))

    async def logout(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(self.cookie_name)
        if cookie is not None:
            try:
                session = self.read(cookie)
            except GatewayError:
                session = None  # expired or invalid: nothing to protect, just clear it
            if session is not None:
                self.check_csrf(session, request.headers.get(CSRF_HEADER))
        response = web.Response(status=204)
        response.del_cookie(self.cookie_name, path="/", secure=self.settings.secure_cookies,
                            httponly=True, samesite="Strict")
        return response

    def _describe(self, session: Session) -> dict[str, str]:
        expires = datetime.fromtimestamp(session.expires, UTC)
        return {
            "principal": session.principal,
            "csrfToken": self.csrf_token(session),
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        }
