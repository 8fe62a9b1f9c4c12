"""Limits on what one caller, and one process, may hold open or try.

    StreamLimits    concurrent streams per principal and per process (Subscribe
                    in the services, GET /v1/events in the gateway); one over a
                    cap is refused RESOURCE_EXHAUSTED / TOO_MANY_STREAMS, and
                    the streams already open are untouched
    FailureLimits   failed authentications per key (a client address, a
                    principal) in a sliding window; past the cap, attempts are
                    refused RESOURCE_EXHAUSTED / TOO_MANY_FAILED_AUTHENTICATIONS
                    until the oldest failure leaves the window

Both are counted in the process (replicas each count their own) and are
bounded in memory: FailureLimits forgets keys whose failures have left the
window, and keeps at most `max_keys` of them (the oldest go first).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

from services.shared.errors import ResourceExhausted

STREAM_RETRY_SECONDS = 5.0


class StreamLimits:
    """Open streams, by principal and in all, refused beyond their caps."""

    @classmethod
    def subscribe(cls, per_principal: int = 100, total: int = 10_000) -> StreamLimits:
        """The services' Subscribe streams (CRM_SUBSCRIBE_MAX_STREAMS…)."""
        return cls(per_principal=per_principal, total=total, what="Subscribe streams",
                   per_principal_variable="CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL",
                   total_variable="CRM_SUBSCRIBE_MAX_STREAMS")

    def __init__(self, *, per_principal: int, total: int, what: str,
                 per_principal_variable: str, total_variable: str) -> None:
        self.per_principal = per_principal
        self.total = total
        self.open = 0
        self._by_principal: dict[str, int] = {}
        self._what = what
        self._variables = (per_principal_variable, total_variable)

    def held_by(self, principal: str) -> int:
        return self._by_principal.get(principal, 0)

    @contextlib.contextmanager
    def admit(self, principal: str) -> Iterator[None]:
        """Hold one stream for `principal` while the block runs; refused if over a cap.

        The release is synchronous, so a stream cancelled anywhere is released once.
        """
        self.hold(principal)
        try:
            yield
        finally:
            self.release(principal)

    def hold(self, principal: str) -> None:
        """One more stream for `principal`, or refused if over a cap; `release` it once
        (`admit` without the context manager's objects, for streams held by thousands)."""
        held = self.held_by(principal)
        if held >= self.per_principal:
            raise ResourceExhausted(
                f"{principal} already has {held} {self._what} open, the most one principal "
                f"may ({self._variables[0]}); close one first",
                reason="TOO_MANY_STREAMS", retry_after=STREAM_RETRY_SECONDS,
                metadata={"scope": "principal", "limit": str(self.per_principal)})
        if self.open >= self.total:
            raise ResourceExhausted(
                f"this server already has {self.open} {self._what} open, the most it serves "
                f"({self._variables[1]}); try again shortly or elsewhere",
                reason="TOO_MANY_STREAMS", retry_after=STREAM_RETRY_SECONDS,
                metadata={"scope": "process", "limit": str(self.total)})
        self.open += 1
        self._by_principal[principal] = held + 1

    def release(self, principal: str) -> None:
        self.open -= 1
        left = self._by_principal[principal] - 1
        if left:
            self._by_principal[principal] = left
        else:
            del self._by_principal[principal]


class FailureLimits:
    """Failed authentications per key, in a sliding window of `window` seconds."""

    def __init__(self, *, limit: int, window: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        found = self._failures.get(key)
        if found is None:
            return None
        while found and found[0] <= now - self.window:
            found.popleft()
        if not found:
            del self._failures[key]
            return None
        return found

    def retry_after(self, *keys: str) -> float | None:
        """Seconds until the busiest of `keys` may try again, or None if all may now."""
        now = self._clock()
        waits = [failures[0] + self.window - now for key in keys
                 if (failures := self._recent(key, now)) is not None
                 and len(failures) >= self.limit]
        return max(waits) if waits else None

    def check(self, *keys: str, what: str = "authentication") -> None:
        """Refuse an attempt while any of `keys` is over the limit."""
        wait = self.retry_after(*keys)
        if wait is not None:
            raise ResourceExhausted(
                f"too many failed {what}s from here; try again in {math.ceil(wait)} s",
                reason="TOO_MANY_FAILED_AUTHENTICATIONS", retry_after=wait,
                metadata={"limit": str(self.limit), "window_seconds": f"{self.window:g}"})

    def failed(self, *keys: str) -> None:
        """Count one failure against each of `keys`."""
        now = self._clock()
        for key in keys:
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(key)
            failures.append(now)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
