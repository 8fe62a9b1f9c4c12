"""Domain errors become gRPC statuses here, and nowhere else.

Each status is a `google.rpc.Status` carrying an ErrorInfo (reason, domain = the
service, metadata) and, where they apply, BadRequest field violations, a
PreconditionFailure, or a RetryInfo. It travels in the `grpc-status-details-bin`
trailer, where grpcurl, grpc-gateway style gateways and `grpc_status` read it.
"""

from __future__ import annotations

import math
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared import errors

_CODES: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.Aborted, code_pb2.ABORTED),
    (errors.OutOfRange, code_pb2.OUT_OF_RANGE),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
]

# Outcomes that a retry with the same idempotency key must run again.
TRANSIENT_CODES = frozenset({
    code_pb2.UNAVAILABLE, code_pb2.INTERNAL, code_pb2.DEADLINE_EXCEEDED, code_pb2.UNKNOWN,
    code_pb2.CANCELLED, code_pb2.RESOURCE_EXHAUSTED,
})


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: errors.DomainError, domain: str) -> status_pb2.Status:
    code = next((c for kind, c in _CODES if isinstance(error, kind)), code_pb2.INTERNAL)
    status = status_pb2.Status(code=code, message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    status.details.append(_pack(info))
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.append(_pack(bad))
    if isinstance(error, errors.FailedPrecondition) and error.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.append(_pack(failure))
    if (isinstance(error, errors.Unavailable | errors.ResourceExhausted)
            and error.retry_after is not None):
        seconds = max(0.0, error.retry_after)
        whole = math.floor(seconds)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def internal(domain: str, message: str = "internal error") -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    status.details.append(_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain)))
    return status


def is_final(status: status_pb2.Status) -> bool:
    """Whether an outcome is final, so that a retry with the same key replays it."""
    return status.code not in TRANSIENT_CODES


async def abort(
    context: grpc.aio.ServicerContext, status: status_pb2.Status, *, retry_now: bool = True
) -> NoReturn:
    """End the call with `status`. `retry_now=False` asks the caller's gRPC retry
    policy not to retry (gRPC's retry pushback), when retrying cannot help yet."""
    refusal = rpc_status.to_status(status)
    if not retry_now:
        refusal = _WithPushback(refusal)
    await context.abort_with_status(refusal)
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class _WithPushback(grpc.Status):  # type: ignore[misc]
    def __init__(self, status: grpc.Status) -> None:
        self.code = status.code
        self.details = status.details
        self.trailing_metadata = (*status.trailing_metadata, ("grpc-retry-pushback-ms", "-1"))


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
