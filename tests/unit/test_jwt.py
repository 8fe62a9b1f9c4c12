"""JWT bearer tokens: what is accepted, what is refused, and why (never the token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from services.shared import auth
from services.shared.auth import Caller, Tokens
from services.shared.config import ConfigError, Settings
from services.shared.jwts import accepted_tokens
from tests.support.idp import HS256_SECRET, IdentityProvider, ec_key, public_jwk, rsa_key

STATIC = "alice-token-0123456789abcdef"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> IdentityProvider:
    return IdentityProvider(tmp_path_factory.mktemp("idp"))


def tokens_for(idp: IdentityProvider, **env: str) -> Tokens:
    settings = Settings.from_env("leads", {"CRM_API_TOKENS": f"alice:{STATIC}",
                                           **idp.env(), **env})
    return accepted_tokens(settings.tokens, settings.jwt, settings.service_principals)


def refused(tokens: Tokens, token: str) -> str:
    with pytest.raises(auth.errors.Unauthenticated) as error:
        tokens.caller(f"Bearer {token}")
    assert error.value.reason == "INVALID_TOKEN"
    message = error.value.message
    assert token not in message
    assert all(part not in message for part in token.split(".") if len(part) > 8)
    return message


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_a_signed_jwt_stands_for_its_sub_org_and_role(idp: IdentityProvider, alg: str) -> None:
    tokens = tokens_for(idp)
    assert tokens.caller(f"Bearer {idp.sign(alg=alg)}") == Caller("erin", "agent", "acme")
    assert tokens.caller(f"Bearer {STATIC}") == Caller("alice")  # static tokens still work


@pytest.mark.parametrize(("roles", "role"), [
    (["viewer"], "viewer"), (["agent"], "agent"), (["admin"], "admin"),
    (["viewer", "agent"], "agent"), (["offline_access", "admin", "viewer"], "admin"),
])
def test_the_role_is_the_strongest_the_roles_claim_names(
    idp: IdentityProvider, roles: list[str], role: str,
) -> None:
    assert tokens_for(idp).caller(f"Bearer {idp.sign(roles=roles)}").role == role


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(("forge", "says"), [
    (lambda idp: idp.sign(ttl=-3600), "the JWT has expired"),
    (lambda idp: idp.sign(key=rsa_key()), "the JWT's signature does not verify"),
    (lambda idp: idp.sign(alg="ES256", key=ec_key()), "the JWT's signature does not verify"),
    (lambda idp: idp.sign(alg="HS256", key="another-secret-0123456789abcdef0123"),
     "the JWT's signature does not verify"),
    (lambda idp: unsigned(idp.claims()), "the JWT's algorithm is not one accepted here"),
    (lambda idp: idp.sign(alg="RS512", kid="rsa-1"),
     "the JWT's algorithm is not one accepted here"),
    (lambda idp: idp.sign(kid="nobody"), "the JWT's key (kid) is not in CRM_JWT_JWKS_FILE"),
    (lambda idp: idp.sign(alg="ES256", kid="rsa-1", key=idp.keys["ec-1"]),
     "the JWT's key (kid) is not in"),
    (lambda idp: idp.sign(exp=None), "the JWT has no `exp` claim"),
    (lambda idp: idp.sign(sub=None), "the JWT has no `sub` claim"),
    (lambda idp: idp.sign(org=None), "the JWT has no `org` claim"),
    (lambda idp: idp.sign(roles=None), "the JWT has no `roles` claim"),
    (lambda idp: idp.sign(iss=None), "the JWT has no `iss` claim"),
    (lambda idp: idp.sign(aud=None), "the JWT has no `aud` claim"),
    (lambda idp: idp.sign(iss="https://evil.example/"),
     "the JWT's issuer (iss) is not CRM_JWT_ISSUER"),
    (lambda idp: idp.sign(aud="someone-else"), "the JWT's audience (aud) is not CRM_JWT_AUDIENCE"),
    (lambda idp: idp.sign(nbf=int(time.time()) + 3600), "the JWT is not valid yet"),
    (lambda idp: idp.sign(roles=["service"]), "the JWT's roles name `service`"),
    (lambda idp: idp.sign(roles=["owner"]), "the JWT's roles name none of admin, agent, viewer"),
    (lambda idp: idp.sign(roles=[]), "the JWT's roles name none of"),
    (lambda idp: idp.sign(roles="agent"), "the JWT's roles is not a list of strings"),
    (lambda idp: idp.sign(org="Acme Inc"), "the JWT's org: an org name is lower-case"),
    (lambda idp: idp.sign(org=7), "the JWT's org is not a string"),
    (lambda idp: idp.sign(sub="gateway"), "the JWT's sub is a service principal"),
    (lambda idp: idp.sign(sub="a b"), "the JWT's sub is not 1 to 128 printable"),
    (lambda idp: "not.a.jwt", "the token is not accepted, nor a well-formed JWT"),
])
def test_a_bad_jwt_is_unauthenticated_with_the_reason(
    idp: IdentityProvider, forge: Any, says: str,
) -> None:
    message = refused(tokens_for(idp), forge(idp))
    assert message.startswith(says), message


def test_an_hs256_jwt_signed_with_the_public_key_is_refused(
    idp: IdentityProvider, tmp_path: Path,
) -> None:
    # The classic confusion: an HS256 MAC keyed with the RSA public key's bytes.
    pem = idp.keys["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps(idp.claims()).encode()

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = part(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()) + "." + part(body)
    forged = head + "." + part(hmac.new(pem, head.encode(), hashlib.sha256).digest())
    assert refused(tokens_for(idp), forged).startswith("the JWT's signature does not verify")
    only_keys = tokens_for(idp, CRM_JWT_HS256_SECRET="")
    assert refused(only_keys, forged).startswith("the JWT's algorithm is not one accepted")


def test_without_issuer_and_audience_settings_a_jwt_with_an_audience_is_refused(
    idp: IdentityProvider,
) -> None:
    tokens = tokens_for(idp, CRM_JWT_ISSUER="", CRM_JWT_AUDIENCE="")
    assert tokens.caller(f"Bearer {idp.sign(aud=None, iss='whoever')}").principal == "erin"
    assert refused(tokens, idp.sign()).startswith(
        "the JWT has an audience (aud) and CRM_JWT_AUDIENCE is not set")


def test_without_jwt_settings_a_jwt_is_not_accepted(idp: IdentityProvider) -> None:
    settings = Settings.from_env("leads", {"CRM_API_TOKENS": f"alice:{STATIC}"})
    tokens = accepted_tokens(settings.tokens, settings.jwt, settings.service_principals)
    assert refused(tokens, idp.sign()).startswith("the token is not accepted")


def test_a_rotated_key_is_read_from_the_changed_file(tmp_path: Path) -> None:
    idp = IdentityProvider(tmp_path)
    tokens = tokens_for(idp)
    idp.keys["rsa-2"] = rsa_key()
    later = idp.sign(kid="rsa-2")
    before = idp.jwks_file.stat().st_mtime
    idp.publish()
    os.utime(idp.jwks_file, (before + 5, before + 5))
    assert tokens.caller(f"Bearer {later}") == Caller("erin", "agent", "acme")


SECRETISH = "abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.mark.parametrize(("write", "env", "says"), [
    (None, {"CRM_JWT_JWKS_FILE": "/no/such/jwks.json"}, "CRM_JWT_JWKS_FILE: no such file"),
    ("not json " + SECRETISH, None, "CRM_JWT_JWKS_FILE: expected a readable JWKS JSON file"),
    (json.dumps({"keys": []}), None, "CRM_JWT_JWKS_FILE: expected a JWKS JSON object"),
    (json.dumps({"keys": [{"kty": "RSA", "n": SECRETISH}]}), None,
     "CRM_JWT_JWKS_FILE: key 1 is not a usable JWK"),
    (json.dumps({"keys": [{"kty": "oct", "k": SECRETISH}]}), None,
     "CRM_JWT_JWKS_FILE: the file holds no RS256 (RSA) or ES256 (EC P-256) signing key"),
    ("private", None, "CRM_JWT_JWKS_FILE: key 1 holds a private key"),
    (None, {"CRM_JWT_HS256_SECRET": "short-secret"},
     "CRM_JWT_HS256_SECRET: expected at least 32 characters"),
])
def test_bad_jwt_settings_stop_start_up_by_name_never_by_value(
    tmp_path: Path, write: str | None, env: dict[str, str] | None, says: str,
) -> None:
    path = tmp_path / "jwks.json"
    if write == "private":
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(rsa_key()))
        write = json.dumps({"keys": [jwk]})
    if write is not None:
        path.write_text(write, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        Settings.from_env("leads", {"CRM_API_TOKENS": f"alice:{STATIC}",
                                    **(env or {"CRM_JWT_JWKS_FILE": str(path)})})
    message = str(error.value)
    assert message.startswith(says), message
    assert SECRETISH not in message and "short-secret" not in message


def test_the_jwks_file_may_hold_keys_of_other_algorithms_and_uses(tmp_path: Path) -> None:
    jwk = public_jwk(rsa_key(), "enc-1") | {"use": "enc"}
    idp = IdentityProvider(tmp_path)
    document = json.loads(idp.jwks_file.read_text())
    document["keys"].append(jwk)
    idp.jwks_file.write_text(json.dumps(document))
    assert tokens_for(idp).caller(f"Bearer {idp.sign()}").principal == "erin"
    assert HS256_SECRET not in repr(Settings.from_env("leads", {
        "CRM_API_TOKENS": f"alice:{STATIC}", **idp.env()}))


def test_a_good_jwt_is_remembered_for_a_minute_at_most(
    idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.shared import jwts
    verifier = jwts.JwtVerifier(Settings.from_env("leads", {
        "CRM_API_TOKENS": f"alice:{STATIC}", **idp.env()}).jwt, ["gateway"])
    checked: list[str] = []
    verify = verifier._verify
    monkeypatch.setattr(verifier, "_verify", lambda token: checked.append(token) or verify(token))
    token, other = idp.sign(), idp.sign(sub="fay")
    for _ in range(3):
        assert verifier.caller(token) == Caller("erin", "agent", "acme")
    assert verifier.caller(other).principal == "fay"
    assert checked == [token, other]
    later = time.time() + jwts.CACHE_SECONDS + 1
    monkeypatch.setattr(jwts.time, "time", lambda: later)
    verifier.caller(token)
    assert checked == [token, other, token]
    with pytest.raises(auth.errors.Unauthenticated):  # a bad one is never remembered
        verifier.caller(idp.sign(ttl=-600))
    assert len(verifier._good) == 2


def test_a_refused_jwt_still_names_the_principal_it_claims(idp: IdentityProvider) -> None:
    """For counting failed authentications per principal: read, never trusted."""
    from services.shared.jwts import claimed_principal

    assert claimed_principal(idp.sign(sub="erin", alg="HS256", key="wrong-" + "k" * 32)) == "erin"
    assert claimed_principal(idp.sign(sub="erin", ttl=-3600)) == "erin"
    assert claimed_principal("not-a-jwt-0123456789abcdef") is None
    assert claimed_principal("a.b.c") is None
    assert claimed_principal(idp.sign(sub="has space")) is None
    assert claimed_principal(idp.sign({"sub": ["x"], "exp": 1})) is None
    assert claimed_principal("x." * 5000 + "x") is None
