"""Refusals, as the domain names them.

Domain code raises these; it never sees gRPC. They become a `google.rpc.Status`
in exactly one place, `services.shared.status`. The tree, with the gRPC code each
branch maps to:

    DomainError
    ├── InvalidArgument      INVALID_ARGUMENT     bad fields (BadRequest details)
    ├── NotFound             NOT_FOUND
    ├── FailedPrecondition   FAILED_PRECONDITION  state conflicts (PreconditionFailure)
    ├── Aborted              ABORTED              stale versions, a key in use
    ├── OutOfRange           OUT_OF_RANGE         cursors past retention
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED    a caller whose role may not do this
    ├── ResourceExhausted    RESOURCE_EXHAUSTED   a limit reached; may carry retry_after
    └── Unavailable          UNAVAILABLE          transient; may carry retry_after

Every error has a `reason` (UPPER_SNAKE_CASE, the ErrorInfo reason), a message
for humans, and string `metadata` for machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is its path, as in `lead_ids[2]`."""

    field: str
    description: str


@dataclass(frozen=True)
class Violation:
    """One failed precondition: `subject` names what failed, as in `leads/<id>`."""

    type: str
    subject: str
    description: str


class DomainError(Exception):
    reason: str = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Iterable[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """A refusal of one field, worded as `field: description`."""
        return cls(
            f"{field}: {description}",
            violations=[FieldViolation(field, description)],
            reason=reason,
        )


class NotFound(DomainError):
    reason = "NOT_FOUND"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        violations: Iterable[Violation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)


class Aborted(DomainError):
    reason = "ABORTED"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Unavailable(DomainError):
    reason = "UNAVAILABLE"
    # Whether the caller's channel may retry this refusal at once. A service
    # answers UNAVAILABLE itself only after retrying within the caller's
    # deadline (the database, another service, the SMS provider), so by default
    # it asks the channel not to retry (gRPC's retry pushback): retries at every
    # hop would multiply into a missed deadline. Channels still retry when no
    # server could be reached at all, which is when another replica helps.
    retry_now = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Violations:
    """Collects field violations so a request is refused once, naming every bad field."""

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._found.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self._found)

    def raise_if_any(self) -> None:
        if self._found:
            message = "; ".join(f"{v.field}: {v.description}" for v in self._found)
            raise InvalidArgument(message, violations=self._found)
