"""Refusals become HTTP here, and nowhere else.

Every refusal the gateway answers is a `google.rpc.Status` as JSON:
`{"code": 9, "message": "…", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
"reason": "STATUS_UNCHANGED", "domain": "leads", "metadata": {…}}, …]}`. An upstream's
status is passed on as it came, read from its `grpc-status-details-bin` trailer; one the
gateway makes itself (bad JSON, an unknown route, a body too large, a missing CSRF token,
an upstream it cannot reach) carries an ErrorInfo of domain "gateway".

The HTTP status, first by reason, then by code:

    reason                                    gRPC code            HTTP
    IDEMPOTENCY_KEY_MISSING                   INVALID_ARGUMENT     400
    IDEMPOTENCY_KEY_REUSED                    INVALID_ARGUMENT     422
    IDEMPOTENCY_KEY_IN_USE                    ABORTED              409
    ROLE_FORBIDS                              PERMISSION_DENIED    403   a viewer pressing a
                                                                         button, a user calling a
                                                                         service-only RPC, a service
                                                                         signing in to the console
    BODY_TOO_LARGE (gateway)                  RESOURCE_EXHAUSTED   413
    METHOD_NOT_ALLOWED (gateway)              UNIMPLEMENTED        405
    UNSUPPORTED_MEDIA_TYPE (gateway)          INVALID_ARGUMENT     415

    gRPC code                                 HTTP
    OK                                        200
    CANCELLED                                 499
    UNKNOWN                                   500
    INVALID_ARGUMENT                          400
    DEADLINE_EXCEEDED                         504
    NOT_FOUND                                 404
    ALREADY_EXISTS                            409
    PERMISSION_DENIED                         403   (CSRF_TOKEN_INVALID, bad Twilio signatures)
    RESOURCE_EXHAUSTED                        429
    FAILED_PRECONDITION                       409   state conflicts: STATUS_UNCHANGED,
                                                    INVALID_STATUS_TRANSITION, ALREADY_CONFIRMED,
                                                    SLOT_TAKEN, RECIPIENT_OPTED_OUT …
                                                    (docs/design.md; grpc-gateway says 400)
    ABORTED                                   409   VERSION_MISMATCH
    OUT_OF_RANGE                              400
    UNIMPLEMENTED                             501
    INTERNAL                                  500
    UNAVAILABLE                               503   + Retry-After from the RetryInfo, in whole
                                                    seconds rounded up (PROVIDER_CIRCUIT_OPEN;
                                                    an upstream that does not answer: 1 s)
    RESOURCE_EXHAUSTED with a RetryInfo       429   + Retry-After, as for 503 (TOO_MANY_STREAMS,
                                                    TOO_MANY_FAILED_AUTHENTICATIONS)
    DATA_LOSS                                 500
    UNAUTHENTICATED                           401   + WWW-Authenticate: Bearer

The legacy API (`gateway.legacy`) answers the same HTTP statuses with its own body shape.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared.errors import DomainError
from services.shared.status import error_info, to_status

DOMAIN = "gateway"
log = logging.getLogger("crm.gateway")

_BY_REASON: dict[str, int] = {
    "IDEMPOTENCY_KEY_MISSING": 400,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "IDEMPOTENCY_KEY_IN_USE": 409,
    "ROLE_FORBIDS": 403,
}
_BY_GATEWAY_REASON: dict[str, int] = {
    "ROLE_FORBIDS": 403,
    "BODY_TOO_LARGE": 413,
    "METHOD_NOT_ALLOWED": 405,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}
_BY_CODE: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 409,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}
# What an upstream that answered with no rich status is reported as.
_BARE_REASONS: dict[int, str] = {
    code_pb2.UNAVAILABLE: "UPSTREAM_UNAVAILABLE",
    code_pb2.DEADLINE_EXCEEDED: "UPSTREAM_DEADLINE_EXCEEDED",
}
UPSTREAM_RETRY_SECONDS = 1.0


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def make_status(
    code: int,
    reason: str,
    message: str,
    *,
    domain: str = DOMAIN,
    metadata: Mapping[str, str] | None = None,
    violations: Iterable[tuple[str, str]] = (),
    retry_after: float | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo and, if given, BadRequest and RetryInfo."""
    status = status_pb2.Status(code=code, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
    status.details.append(_pack(info))
    bad = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
           for f, d in violations]
    if bad:
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=bad)))
    if retry_after is not None:
        whole = math.floor(retry_after)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((retry_after - whole) * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


@dataclass(frozen=True)
class Refusal:
    """A refusal ready to answer: its status, HTTP status and extra headers."""

    status: status_pb2.Status
    http_status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        info = error_info(self.status)
        return str(info.reason if info is not None else code_pb2.Code.Name(self.status.code))


def retry_after(status: status_pb2.Status) -> int | None:
    """Whole seconds to wait, rounded up, from the status's RetryInfo if it has one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = float(retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9)
            return max(0, math.ceil(delay))
    return None


def http_status(status: status_pb2.Status) -> int:
    info = error_info(status)
    if info is not None:
        if info.domain == DOMAIN and info.reason in _BY_GATEWAY_REASON:
            return _BY_GATEWAY_REASON[info.reason]
        if info.reason in _BY_REASON:
            return _BY_REASON[info.reason]
    return _BY_CODE.get(status.code, 500)


def refusal(status: status_pb2.Status, headers: Mapping[str, str] | None = None) -> Refusal:
    """Decide the HTTP status and headers of a google.rpc.Status."""
    answer = http_status(status)
    extra = dict(headers or {})
    if answer in (429, 503) and (wait := retry_after(status)) is not None:
        extra["Retry-After"] = str(wait)
    if answer == 401:
        extra.setdefault("WWW-Authenticate", 'Bearer realm="closed-loop"')
    return Refusal(status, answer, extra)


class Refused(Exception):
    """A refusal on its way to the client (the error middleware answers it)."""

    def __init__(self, refused: Refusal) -> None:
        super().__init__(refused.status.message)
        self.refusal = refused


class GatewayError(Refused):
    """A refusal made by the gateway itself (ErrorInfo domain "gateway")."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[tuple[str, str]] = (),
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        status = make_status(code, reason, message, metadata=metadata, violations=violations,
                             retry_after=retry_after)
        super().__init__(refusal(status, headers))

    @classmethod
    def bad_field(cls, field: str, description: str, *, reason: str = "INVALID_ARGUMENT"
                  ) -> GatewayError:
        return cls(code_pb2.INVALID_ARGUMENT, reason, f"{field}: {description}",
                   violations=[(field, description)])


_BARE_MESSAGES: dict[int, str] = {
    code_pb2.UNAVAILABLE: "the {service} service is unavailable; try again shortly",
    code_pb2.DEADLINE_EXCEEDED: "the {service} service did not answer in time",
}


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> Refusal:
    """The upstream's own google.rpc.Status, or one made from its bare code.

    A bare code comes from gRPC itself (the service could not be reached, a
    deadline passed): its details speak of addresses and transports, so they go
    to the log and the caller hears the service's name and what happened.
    """
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is None:
        code = error.code().value[0]
        log.warning("%s answered %s: %s", service, error.code().name, error.details(),
                    extra={"service": service, "code": error.code().name})
        message = _BARE_MESSAGES.get(code, "the {service} service answered {code}")
        status = make_status(
            code,
            _BARE_REASONS.get(code, code_pb2.Code.Name(code)),
            message.format(service=service, code=error.code().name),
            metadata={"service": service},
            retry_after=UPSTREAM_RETRY_SECONDS if code == code_pb2.UNAVAILABLE else None,
        )
    return refusal(status)


def from_domain_error(error: DomainError) -> Refusal:
    """A refusal the gateway made with the services' own domain errors (their limits)."""
    return refusal(to_status(error, DOMAIN))


def from_http_exception(error: web.HTTPException, max_body: int) -> Refusal:
    """aiohttp's own refusals (no route, wrong method, body too large) as statuses."""
    if isinstance(error, web.HTTPNotFound):
        status = make_status(code_pb2.NOT_FOUND, "ROUTE_NOT_FOUND", "no such route")
        return refusal(status)
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        status = make_status(code_pb2.UNIMPLEMENTED, "METHOD_NOT_ALLOWED",
                             f"{error.method} is not allowed here; allowed: {allowed}",
                             metadata={"allowed": allowed})
        return refusal(status, {"Allow": allowed})
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return body_too_large(max_body)
    code = next((c for c, h in _BY_CODE.items() if h == error.status and c), code_pb2.UNKNOWN)
    status = make_status(code, f"HTTP_{error.status}", error.reason)
    return Refusal(status, error.status, {})


def body_too_large(limit: int) -> Refusal:
    return refusal(make_status(
        code_pb2.RESOURCE_EXHAUSTED, "BODY_TOO_LARGE",
        f"the request body is larger than this gateway accepts ({limit} bytes)",
        metadata={"max_bytes": str(limit)},
    ))


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """The status as grpc-gateway writes it: code, message and details with @type."""
    body = json_format.MessageToDict(status, always_print_fields_with_no_presence=True)
    return body


def response(refused: Refusal) -> web.Response:
    return web.Response(
        status=refused.http_status,
        text=json.dumps(status_json(refused.status)),
        content_type="application/json",
        headers=refused.headers,
    )
