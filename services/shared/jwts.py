"""JWT bearer tokens from an identity provider, verified with PyJWT.

    CRM_JWT_JWKS_FILE      a JWKS JSON file of public keys: RS256 (RSA) and ES256 (EC P-256)
    CRM_JWT_HS256_SECRET   a shared secret for HS256 (at least 32 characters)
    CRM_JWT_ISSUER         when set, the `iss` every JWT must have
    CRM_JWT_AUDIENCE       when set, an `aud` every JWT must have; unset, a JWT with an
                           `aud` is refused (it was meant for some other system)

Neither of the first two set: no JWT is accepted (static tokens only).

A JWT is checked strictly, and refused UNAUTHENTICATED / INVALID_TOKEN with the
reason in the message (never the token): the algorithm must be one configured
(RS256 or ES256 with a JWKS key, HS256 with the secret; `none` never), and
picks the key: an HS256 JWT is never checked against a public key, nor an RS256
one against the secret. A JWKS key is chosen by the JWT's `kid`, or is the only
key of its algorithm; a `kid` the file does not hold re-reads the file if it
changed (keys rotate without a restart). Required claims: `exp`, `sub` (the
principal), `org` (an org name), `roles` (a list): the caller's role is the
highest of `admin`, `agent`, `viewer` the list names, and other roles of the
identity provider are ignored. An identity provider cannot make a service: a
JWT naming `service` among its roles, or whose `sub` is in CRM_SERVICE_PRINCIPALS,
is refused. `nbf` and `iat`, when present, are checked; 30 seconds of clock skew
are allowed on `exp`, `nbf` and `iat`.

A client presents the same JWT on every call, and checking one costs PyJWT some
hundreds of microseconds, so a JWT found good is remembered (by its SHA-256, at
most CACHE_SIZE of them) for CACHE_SECONDS or until it expires, whichever is
first: a key removed from the JWKS file stops its JWTs within CACHE_SECONDS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from services.shared import errors
from services.shared.auth import (
    ADMIN,
    AGENT,
    MAX_PRINCIPAL_LENGTH,
    SERVICE,
    VIEWER,
    Caller,
    Tokens,
    org_name,
    principal_name,
)

log = logging.getLogger("crm.auth")

RS256, ES256, HS256 = "RS256", "ES256", "HS256"
LEEWAY_SECONDS = 30
MIN_HS256_SECRET_LENGTH = 32
# The roles a JWT may give, strongest first.
_GIVEN_ROLES = (ADMIN, AGENT, VIEWER)
_REQUIRED = ["exp", "sub", "org", "roles"]
CACHE_SIZE = 10_000
CACHE_SECONDS = 60.0
# Longer than any JWT an identity provider issues; not read beyond this.
MAX_JWT_LENGTH = 8192


def claimed_principal(token: str) -> str | None:
    """The principal a JWT claims to be (its `sub`), read WITHOUT checking it.

    Only for counting failed authentications per principal (gateway.app): a
    refused JWT still names whom it tried to be. None for anything that is not a
    JWT with a string `sub` of a principal's shape.
    """
    if token.count(".") != 2 or len(token) > MAX_JWT_LENGTH:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False,
                                            "verify_aud": False, "verify_iss": False})
        sub = claims.get("sub") if isinstance(claims, dict) else None
        return principal_name(sub) if isinstance(sub, str) else None
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return None


class InvalidJwt(errors.Unauthenticated):
    def __init__(self, why: str) -> None:
        super().__init__(f"{why}; send a valid JWT of the identity provider, or a token "
                         "from CRM_API_TOKENS", reason="INVALID_TOKEN")


@dataclass(frozen=True)
class JwtSettings:
    jwks_file: Path | None = None
    hs256_secret: str = field(default="", repr=False)
    issuer: str = ""
    audience: str = ""

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or bool(self.hs256_secret)


def hs256_secret(raw: str) -> str:
    if len(raw) < MIN_HS256_SECRET_LENGTH:
        raise ValueError(f"expected at least {MIN_HS256_SECRET_LENGTH} characters")
    return raw


def read_jwks(path: Path) -> dict[str, list[jwt.PyJWK]]:
    """The public keys of a JWKS file, by algorithm; ValueError saying why (no key material)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("expected a readable JWKS JSON file ({\"keys\": […]})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a JWKS JSON object with a non-empty `keys` list")
    found: dict[str, list[jwt.PyJWK]] = {RS256: [], ES256: []}
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"key {i} is not a JSON object")
        if "d" in entry:
            raise ValueError(f"key {i} holds a private key: give the public keys only")
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            raise ValueError(f"key {i} is not a usable JWK") from None
        if key.algorithm_name in found:
            found[key.algorithm_name].append(key)
    if not found[RS256] and not found[ES256]:
        raise ValueError("the file holds no RS256 (RSA) or ES256 (EC P-256) signing key")
    return found


class JwtVerifier:
    """The Caller a JWT stands for, or InvalidJwt."""

    def __init__(self, settings: JwtSettings, service_principals: Iterable[str]) -> None:
        self.settings = settings
        self._services = frozenset(service_principals)
        self._keys: dict[str, list[jwt.PyJWK]] = {}
        self._mtime = 0.0
        if settings.jwks_file is not None:
            self._mtime = os.stat(settings.jwks_file).st_mtime
            self._keys = read_jwks(settings.jwks_file)
        self.algorithms = ([RS256] if self._keys.get(RS256) else []) + (
            [ES256] if self._keys.get(ES256) else []) + ([HS256] if settings.hs256_secret else [])
        self._good: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()

    def caller(self, token: str) -> Caller:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        known = self._good.get(digest)
        if known is not None and known[1] > now:
            self._good.move_to_end(digest)
            return known[0]
        self._good.pop(digest, None)
        caller, expires = self._verify(token)
        self._good[digest] = (caller, min(expires, now + CACHE_SECONDS))
        if len(self._good) > CACHE_SIZE:
            self._good.popitem(last=False)
        return caller

    def _verify(self, token: str) -> tuple[Caller, float]:
        """The caller of a JWT checked in full, and when it expires."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidJwt("the token is not accepted, nor a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidJwt(f"the JWT's algorithm is not one accepted here "
                             f"({', '.join(self.algorithms)})")
        key = self._key(alg, header.get("kid"))
        claims = self._decode(token, key, alg)
        return self._caller(claims), float(claims["exp"])

    def _key(self, alg: str, kid: Any) -> Any:
        if alg == HS256:
            return self.settings.hs256_secret
        key = self._find(alg, kid)
        if key is None and kid is not None and self._reloaded():
            key = self._find(alg, kid)
        if key is None:
            raise InvalidJwt("the JWT's key (kid) is not in CRM_JWT_JWKS_FILE" if kid is not None
                             else "the JWT names no key (kid) and CRM_JWT_JWKS_FILE holds "
                                  f"several {alg} keys")
        return key.key

    def _find(self, alg: str, kid: Any) -> jwt.PyJWK | None:
        keys = self._keys.get(alg, [])
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((k for k in keys if k.key_id == kid), None)

    def _reloaded(self) -> bool:
        """Re-read the JWKS file if it changed since it was read; whether it was."""
        path = self.settings.jwks_file
        assert path is not None
        try:
            mtime = os.stat(path).st_mtime
            if mtime == self._mtime:
                return False
            self._keys = read_jwks(path)
        except (OSError, ValueError) as why:
            log.warning("CRM_JWT_JWKS_FILE changed but cannot be used: %s; keeping the keys "
                        "read before", why)
            return False
        self._mtime = mtime
        return True

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        issuer, audience = self.settings.issuer, self.settings.audience
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], issuer=issuer or None,
                audience=audience or None, leeway=LEEWAY_SECONDS,
                options={"require": _REQUIRED + (["iss"] if issuer else [])
                         + (["aud"] if audience else [])})
        except jwt.ExpiredSignatureError:
            raise InvalidJwt("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidJwt("the JWT is not valid yet (nbf)") from None
        except jwt.InvalidIssuedAtError:
            raise InvalidJwt("the JWT's iat is not a time in the past") from None
        except jwt.MissingRequiredClaimError as missing:
            raise InvalidJwt(f"the JWT has no `{missing.claim}` claim") from None
        except jwt.InvalidIssuerError:
            raise InvalidJwt("the JWT's issuer (iss) is not CRM_JWT_ISSUER") from None
        except jwt.InvalidAudienceError:
            raise InvalidJwt("the JWT's audience (aud) is not CRM_JWT_AUDIENCE"
                             if audience else "the JWT has an audience (aud) and "
                             "CRM_JWT_AUDIENCE is not set") from None
        except jwt.InvalidSignatureError:
            raise InvalidJwt("the JWT's signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidJwt("the JWT is not valid") from None
        return claims

    def _caller(self, claims: Mapping[str, Any]) -> Caller:
        sub, org, given = claims["sub"], claims["org"], claims["roles"]
        if not (isinstance(sub, str) and 0 < len(sub) <= MAX_PRINCIPAL_LENGTH
                and all(33 <= ord(c) <= 126 for c in sub)):
            raise InvalidJwt(f"the JWT's sub is not 1 to {MAX_PRINCIPAL_LENGTH} printable "
                             "ASCII characters without spaces")
        if sub in self._services:
            raise InvalidJwt("the JWT's sub is a service principal (CRM_SERVICE_PRINCIPALS); "
                             "services use their static tokens")
        if not isinstance(org, str):
            raise InvalidJwt("the JWT's org is not a string")
        try:
            org_name(org)
        except ValueError as why:
            raise InvalidJwt(f"the JWT's org: {why}") from None
        if not isinstance(given, list) or not all(isinstance(r, str) for r in given):
            raise InvalidJwt("the JWT's roles is not a list of strings")
        if SERVICE in given:
            raise InvalidJwt("the JWT's roles name `service`, which only "
                             "CRM_SERVICE_PRINCIPALS gives")
        role = next((r for r in _GIVEN_ROLES if r in given), None)
        if role is None:
            raise InvalidJwt(f"the JWT's roles name none of {', '.join(_GIVEN_ROLES)}")
        return Caller(sub, role, org)


def accepted_tokens(static: Mapping[str, Caller], settings: JwtSettings,
                    service_principals: Iterable[str]) -> Tokens:
    """The tokens a server accepts: CRM_API_TOKENS, and JWTs when CRM_JWT_* says so."""
    verifier = JwtVerifier(settings, service_principals) if settings.enabled else None
    return Tokens(static, verifier.caller if verifier else None)
