"""The facts of the call being served, for the code that serves it.

The call interceptor sets them once per call; handlers, audit records and log
lines read them from here instead of passing them through every signature.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    service: str
    # The full gRPC method, as in "/crm.leads.v1.LeadsService/GetLead".
    method: str
    request_id: str
    principal: str = ""
    idempotency_key: str = ""

    @property
    def rpc(self) -> str:
        """The short method name, as in "GetLead"."""
        return self.method.rsplit("/", 1)[-1]


_current: ContextVar[Call | None] = ContextVar("crm_call", default=None)


def current_call() -> Call:
    call = _current.get()
    if call is None:
        raise LookupError("no call is being served in this context")
    return call


def maybe_call() -> Call | None:
    return _current.get()


def enter(call: Call) -> object:
    return _current.set(call)


def leave(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
