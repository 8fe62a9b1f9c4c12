"""Who is calling: API clients by their Authorization header, browsers by a session cookie.

`EventSource` cannot send an Authorization header, and a long-lived token must
stay out of URLs and logs, so a browser logs in once, with a static token of
CRM_API_TOKENS or a JWT of the identity provider (CRM_JWT_*):

    POST /auth/login {"token": "…"}   → 200 {"principal", "org", "role", "csrfToken",
                                               "expiresAt"}
                                         + Set-Cookie: crm_session=…; HttpOnly; SameSite=Strict;
                                           Path=/ (and Secure, named __Host-crm_session,
                                           when CRM_PUBLIC_URL is https)
    GET  /auth/session                 → 200 the same, or 401
    POST /auth/logout                  → 204, the cookie cleared and the session ended

Service principals (CRM_SERVICE_PRINCIPALS) cannot log in: 403 ROLE_FORBIDS.

The cookie holds the principal, an expiry, a random nonce and a reference to the
credential it logged in with, signed with HMAC-SHA256 under CRM_SESSION_SECRET
(by default derived from CRM_API_TOKENS, so replicas agree). The reference to a
static token is an HMAC of it (never the token); a JWT is kept in the cookie
encrypted (AES-256-GCM under a key derived from the session secret), since the
gateway presents it upstream, and the session ends no later than the JWT expires.

Every request with a cookie presents that credential upstream, so the principal
is the actor of every audit record, and its org and role are the credential's
as they are now; and it is refused 401 if:

    SESSION_INVALID   the cookie is tampered with, or signed under another secret
    SESSION_EXPIRED   it is past its expiry
    SESSION_ENDED     its session was logged out (gateway.ended_sessions): a copy
                      of the cookie taken before stays refused, on every replica
                      sharing the store
    SESSION_REVOKED   its static token was removed from CRM_API_TOKENS or rotated
                      (whatever CRM_SESSION_SECRET is), or its JWT no longer verifies

The CSRF token is an HMAC of the session's nonce: every cookie-authenticated
request that is not GET or HEAD must send it back in `X-CSRF-Token` (403
PERMISSION_DENIED / CSRF_TOKEN_INVALID otherwise).

A request with an Authorization header is an API client: the header goes
upstream as it is, cookies are ignored and no CSRF token is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.rpc import code_pb2

from gateway.bodies import read_json_object
from gateway.config import Settings
from gateway.ended_sessions import EndedSessions, ended_sessions
from gateway.errors import GatewayError
from services.shared import auth
from services.shared import errors as domain_errors
from services.shared.jwts import accepted_tokens

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
# The credential a cookie refers to: a static token by its HMAC, a JWT encrypted.
STATIC, JWT = "t", "j"


@dataclass(frozen=True)
class Session:
    principal: str
    expires: int
    nonce: str
    # "t:<HMAC of the static token>" or "j:<the JWT, encrypted>".
    credential: str = ""


@dataclass(frozen=True)
class Caller:
    """Who a request acts as, and the authorization it presents upstream."""

    authorization: str | None
    principal: str = ""
    session: Session | None = None
    # Its org and role, where the gateway knows them (a session's).
    identity: auth.Caller | None = None


CALLER = web.RequestKey("caller", Caller)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unauthenticated(reason: str, message: str) -> GatewayError:
    return GatewayError(code_pb2.UNAUTHENTICATED, reason, message)


class Sessions:
    def __init__(self, settings: Settings, ended: EndedSessions | None = None) -> None:
        self.settings = settings
        self.tokens = accepted_tokens(settings.tokens, settings.jwt,
                                      settings.service_principals)
        self.cookie_name = "__Host-crm_session" if settings.secure_cookies else "crm_session"
        self._secret = settings.session_secret
        self._by_reference = {self._reference(t): t for t in settings.tokens}
        self._cipher = AESGCM(self._mac(b"jwt", b"aes-256-gcm"))
        self.ended = ended or ended_sessions(settings.database_url)

    # -- the cookie --------------------------------------------------------------

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest()

    def _reference(self, token: str) -> str:
        return f"{STATIC}:{_b64(self._mac(b'token', token.encode())[:18])}"

    def issue(self, credential: str, principal: str, *, now: float | None = None
              ) -> tuple[str, Session]:
        """A new session of `principal`, logged in with `credential` (a token or a JWT)."""
        issued = time.time() if now is None else now
        expires = int(issued) + self.settings.session_seconds
        if credential in self.settings.tokens:
            reference = self._reference(credential)
        else:
            expires = min(expires, int(jwt.decode(credential,
                                                  options={"verify_signature": False})["exp"]))
            iv = os.urandom(12)
            reference = f"{JWT}:{_b64(iv + self._cipher.encrypt(iv, credential.encode(), None))}"
        session = Session(principal, expires, secrets.token_urlsafe(16), reference)
        payload = _b64(json.dumps(
            {"p": session.principal, "e": session.expires, "n": session.nonce,
             "c": session.credential},
            separators=(",", ":"),
        ).encode())
        return f"{payload}.{_b64(self._mac(b'session', payload.encode()))}", session

    def read(self, value: str, *, now: float | None = None) -> Session:
        """The session a cookie holds; 401 if it is tampered with or expired."""
        payload, _, signature = value.partition(".")
        try:
            valid = hmac.compare_digest(_unb64(signature), self._mac(b"session", payload.encode()))
            fields = json.loads(_unb64(payload)) if valid else None
            session = (Session(str(fields["p"]), int(fields["e"]), str(fields["n"]),
                               str(fields["c"])) if fields else None)
        except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
            session = None
        if session is None:
            raise _unauthenticated("SESSION_INVALID", "the session cookie is not valid; "
                                   "log in again")
        if session.expires <= (time.time() if now is None else now):
            raise _unauthenticated("SESSION_EXPIRED", "the session has expired; log in again")
        return session

    def credential(self, session: Session) -> str:
        """The token or JWT the session logged in with; 401 SESSION_REVOKED if it is gone."""
        kind, _, sealed = session.credential.partition(":")
        if kind == JWT:
            try:
                raw = _unb64(sealed)
                return self._cipher.decrypt(raw[:12], raw[12:], None).decode()
            except (binascii.Error, ValueError, InvalidTag):
                raise _unauthenticated("SESSION_INVALID", "the session cookie is not valid; "
                                       "log in again") from None
        token = self._by_reference.get(session.credential)
        if token is None:
            raise _unauthenticated(
                "SESSION_REVOKED", "the token this session logged in with is no longer "
                "accepted (removed or rotated); log in again")
        return token

    async def resolve(self, session: Session) -> tuple[str, auth.Caller]:
        """The credential a live session presents upstream, and who it stands for now."""
        if await self.ended.ended(session.nonce):
            raise _unauthenticated("SESSION_ENDED", "the session was logged out; log in again")
        credential = self.credential(session)
        try:
            identity = self.tokens.caller(f"Bearer {credential}")
        except domain_errors.Unauthenticated:
            raise _unauthenticated("SESSION_REVOKED", "the credential this session logged in "
                                   "with is no longer accepted; log in again") from None
        if identity.role == auth.SERVICE:
            raise _unauthenticated("SESSION_REVOKED", "the principal of this session is now a "
                                   "service (CRM_SERVICE_PRINCIPALS); log in again")
        return credential, identity

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

    async def caller(self, request: web.Request) -> Caller:
        """Who this request acts as (memoized on the request); 401/403 if it cannot."""
        found: Caller | None = request.get(CALLER)
        if found is not None:
            return found
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            if not all(32 <= ord(c) <= 126 for c in authorization):
                raise _unauthenticated("INVALID_AUTHORIZATION",
                                       "the Authorization header is not printable ASCII")
            found = Caller(authorization, self._principal_of(authorization))
        elif (cookie := request.cookies.get(self.cookie_name)) is not None:
            session = self.read(cookie)
            credential, identity = await self.resolve(session)
            if request.method not in SAFE_METHODS:
                self.check_csrf(session, request.headers.get(CSRF_HEADER))
            found = Caller(f"Bearer {credential}", session.principal, session, identity)
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
            raise GatewayError.bad_field(
                "token", "required: a token from CRM_API_TOKENS or a JWT of the identity "
                "provider")
        credential = token.strip()
        try:
            identity = self.tokens.caller(f"Bearer {credential}")
        except domain_errors.Unauthenticated as refused:
            why = refused.message if refused.message.startswith("the JWT") else (
                "the token is not accepted")
            raise _unauthenticated("INVALID_TOKEN", why) from None
        if identity.role == auth.SERVICE:
            raise GatewayError(
                code_pb2.PERMISSION_DENIED, "ROLE_FORBIDS",
                f"{identity.principal} is a service (CRM_SERVICE_PRINCIPALS); services cannot "
                "sign in to the console", metadata={"role": auth.SERVICE})
        value, session = self.issue(credential, identity.principal)
        request[CALLER] = Caller(None, identity.principal, session, identity)  # access log
        response = web.json_response(self._describe(session, identity))
        response.set_cookie(
            self.cookie_name, value, max_age=max(session.expires - int(time.time()), 0),
            path="/", secure=self.settings.secure_cookies, httponly=True, samesite="Strict",
        )
        return response

    async def current(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(self.cookie_name)
        if cookie is None:
            raise _unauthenticated("NO_SESSION", "not logged in")
        session = self.read(cookie)
        _, identity = await self.resolve(session)
        return web.json_response(self._describe(session, identity))

    async def logout(self, request: web.Request) -> web.Response:
        """End the session for good: its cookie, and every copy of it, is refused from now."""
        cookie = request.cookies.get(self.cookie_name)
        if cookie is not None:
            try:
                session = self.read(cookie)
            except GatewayError:
                session = None  # expired or invalid: nothing to protect, just clear it
            if session is not None:
                self.check_csrf(session, request.headers.get(CSRF_HEADER))
                await self.ended.end(session.nonce, session.expires)
                request[CALLER] = Caller(None, session.principal, session)  # access log
        response = web.Response(status=204)
        response.del_cookie(self.cookie_name, path="/", secure=self.settings.secure_cookies,
                            httponly=True, samesite="Strict")
        return response

    async def close(self) -> None:
        await self.ended.close()

    def _describe(self, session: Session, identity: auth.Caller) -> dict[str, str]:
        expires = datetime.fromtimestamp(session.expires, UTC)
        return {
            "principal": session.principal,
            "org": identity.org,
            "role": identity.role,
            "csrfToken": self.csrf_token(session),
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        }
