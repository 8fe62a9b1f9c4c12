"""Sending through the breaker, again after a transient failure, within the deadline.

A 503 or a dropped connection from the SMS provider often clears in a second,
so a send is tried again - up to `max_attempts` in all - after a delay drawn
with full jitter, uniform in [0, min(max_delay, base_delay * 2**n)] before
retry n+1 (1 s, 2 s, 4 s ... caps), so that senders who failed together do not
come back together. Everything else ends the run at once:

- a permanent error (an invalid number): trying again cannot help;
- `CircuitOpen`: the provider is known to be failing; the caller answers
  UNAVAILABLE / PROVIDER_CIRCUIT_OPEN with its `retry_after`. When a transient
  failure of this run is the one that opens the breaker, the run ends with
  `CircuitOpen` (chained from that failure) instead of sleeping only to be
  refused;
- the deadline: a delay is slept only if it, plus `NEXT_ATTEMPT_ALLOWANCE` for
  the attempt after it, ends before `deadline`; otherwise the last transient
  error is raised. A drawn delay is never shortened to fit.

Each attempt is also cut off at the deadline, which raises TimeoutError. The
cut is made *outside* the breaker, so it reaches the provider call as a
cancellation, which the breaker does not count: running out of the caller's
time is no evidence that the provider is down. The provider's own slowness is
bounded by the adapter's HTTP timeout, whose error does count. Every attempt
goes through `breaker.call`, so the transient failures of a long run count
against the breaker like any others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.messaging.breaker import CircuitOpen, ProviderBreaker
from services.shared.retry import backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds the deadline must leave for an attempt after a delay, for the delay
# to be worth sleeping: one round trip to the provider's API.
NEXT_ATTEMPT_ALLOWANCE = 0.5


def backoff_delay(
    retry: int, *, base_delay: float, max_delay: float, rng: Callable[[], float]
) -> float:
    """The delay before retry number `retry` (0 for the first): full jitter."""
    return backoff(retry, base_delay, max_delay, rng=rng)


async def send_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    breaker: ProviderBreaker,
    max_attempts: int,
    deadline: float | None,
    is_transient: Callable[[BaseException], bool],
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> T:
    """Run `attempt` through `breaker` until it succeeds or retrying makes no sense.

    `deadline` is a `clock()` reading; None means no deadline.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    retry = 0
    while True:
        try:
            return await _attempt_before(deadline, attempt, breaker=breaker, clock=clock)
        except CircuitOpen:
            raise
        except Exception as error:
            if not is_transient(error):
                raise
            refused_for = breaker.retry_after()
            if refused_for is not None:
                raise CircuitOpen(refused_for) from error
            if retry + 1 >= max_attempts:
                raise
            delay = backoff_delay(retry, base_delay=base_delay, max_delay=max_delay, rng=rng)
            if not _fits(delay, deadline, clock):
                raise
            log.info("retrying the SMS provider after a transient failure",
                     extra={"error": repr(error)[:300], "attempt": retry + 1, "delay": delay})
        retry += 1
        await sleep(delay)


async def _attempt_before(
    deadline: float | None,
    attempt: Callable[[], Awaitable[T]],
    *,
    breaker: ProviderBreaker,
    clock: Callable[[], float],
) -> T:
    if deadline is None:
        return await breaker.call(attempt)
    remaining = deadline - clock()
    if remaining <= 0:
        raise TimeoutError("the deadline passed before the SMS provider could be called")
    async with asyncio.timeout(remaining):
        return await breaker.call(attempt)


def _fits(delay: float, deadline: float | None, clock: Callable[[], float]) -> bool:
    return deadline is None or clock() + delay + NEXT_ATTEMPT_ALLOWANCE <= deadline
