"""The facts of the call being served, for the code that serves it.

The call interceptor sets them once per call; handlers, audit records and log
lines read them from here instead of passing them through every signature.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass

from services.shared.auth import Caller

NOBODY = Caller("")


@dataclass(frozen=True)
class Call:
    service: str
    # The full gRPC method, as in "/crm.leads.v1.LeadsService/GetLead".
    method: str
    request_id: str
    caller: Caller = NOBODY
    idempotency_key: str = ""

    @property
    def principal(self) -> str:
        return self.caller.principal

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
    # A stream whose client went away is closed by the event loop's finalizer, in
    # a context of its own: there is no call of ours to restore there.
    with contextlib.suppress(ValueError):
        _current.reset(token)  # type: ignore[arg-type]
