"""A test identity provider: its own keys, a JWKS file of them, and JWTs it signs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support import leaks

HS256_SECRET = "an-hs256-secret-of-the-identity-provider-0123456789"
leaks.watch({HS256_SECRET: "CRM_JWT_HS256_SECRET"})
ISSUER = "https://idp.example.test/"
AUDIENCE = "closed-loop"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public))
    jwk.update(kid=kid, use="sig")
    return jwk


@dataclass
class IdentityProvider:
    directory: Path
    keys: dict[str, Any] = field(default_factory=dict)  # kid → private key

    def __post_init__(self) -> None:
        self.keys = {"rsa-1": rsa_key(), "ec-1": ec_key()}
        self.publish()

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    def publish(self) -> None:
        document = {"keys": [public_jwk(k, kid) for kid, k in self.keys.items()]}
        self.jwks_file.write_text(json.dumps(document), encoding="utf-8")

    def env(self, *, issuer: bool = True, audience: bool = True) -> dict[str, str]:
        """CRM_JWT_* trusting this provider."""
        env = {"CRM_JWT_JWKS_FILE": str(self.jwks_file), "CRM_JWT_HS256_SECRET": HS256_SECRET}
        if issuer:
            env["CRM_JWT_ISSUER"] = ISSUER
        if audience:
            env["CRM_JWT_AUDIENCE"] = AUDIENCE
        return env

    def claims(self, sub: str = "erin", org: str = "acme", roles: Any = ("agent",),
               ttl: float = 300, **more: Any) -> dict[str, Any]:
        now = int(time.time())
        found = {"sub": sub, "org": org, "roles": list(roles) if isinstance(roles, tuple)
                 else roles, "exp": now + int(ttl), "iat": now, "iss": ISSUER, "aud": AUDIENCE}
        found.update(more)
        return {k: v for k, v in found.items() if v is not None}

    def sign(self, claims: dict[str, Any] | None = None, *, alg: str = "RS256",
             kid: str | None = "", key: Any = None, **fields: Any) -> str:
        """A JWT of `claims` (default: `self.claims(**fields)`), signed as `alg`."""
        body = self.claims(**fields) if claims is None else claims
        if alg == "HS256":
            return jwt.encode(body, key or HS256_SECRET, algorithm="HS256")
        if kid == "":
            kid = "rsa-1" if alg == "RS256" else "ec-1"
        headers = {"kid": kid} if kid is not None else {}
        signer = key or self.keys[kid if kid in self.keys else
                                  ("rsa-1" if alg == "RS256" else "ec-1")]
        return jwt.encode(body, signer, algorithm=alg, headers=headers)
