"""The SMS provider's circuit breaker: aiobreaker 1.2, with its gaps covered.

When the provider is down, every send would otherwise wait out its whole
deadline on retries, and so would the next. The breaker counts consecutive
*transient* failures (connection errors, timeouts, 429, 5xx: whatever
`is_failure` says); at `fail_max` it opens and every call fails at once with
`CircuitOpen` and a `retry_after`, without reaching the provider. After
`reset_timeout` seconds one trial call goes through (half-open): success
closes the breaker, a transient failure opens it again for a fresh timeout.
Permanent provider errors (an invalid number) pass through untouched: they
neither count nor reset the count, since they say nothing about the provider's
health beyond "it answers" - which is why a permanent error on the *trial*
closes the breaker, like a success.

What aiobreaker 1.2.0 gets wrong (paths under site-packages/aiobreaker/):

1. Half-open admits every caller, not one trial. `CircuitOpenState.call_async`
   (state.py:218-224) moves to half-open and calls through; the half-open
   state has no `before_call` of its own, so `CircuitBreakerBaseState.call_async`
   (state.py:98-111) runs every call that arrives while the trial is pending.
   Fifty waiting sends hit a provider that is just recovering.
2. Times mix UTC and local wall clocks. `open()` stamps `datetime.utcnow()`
   (circuitbreaker.py:228) but `opens_at` compares it with `datetime.now()`
   (circuitbreaker.py:84), as do `time_until_open` (circuitbreaker.py:95) and
   `CircuitBreakerError.time_remaining` (state.py:24). At UTC+9 (Asia/Tokyo)
   `opens_at` is None at once - "already reopened" - and `time_remaining`
   raises TypeError; at UTC-8 (Los Angeles) the breaker reports that it
   reopens 8 hours late, and `sleep_until_open` would sleep that long. The
   admission check itself (state.py:207) compares utcnow with utcnow, so the
   open -> half-open switch happens on time in any zone, but on the wall clock:
   a clock step (NTP, a VM resumed) stretches or skips the open period.
3. An excluded ("not a system error") exception counts as a success
   (state.py:64-65): it resets the failure count, so permanent errors between
   transient ones would keep the breaker from ever opening.
4. An outcome is judged by the state that admitted the call, even after the
   breaker moved on (state.py:53-80): a slow call admitted while closed that
   fails after the breaker opened re-opens it, refreshing the timeout
   (state.py:176-177), even in the middle of a half-open trial.
5. Listeners hear of a change before storage holds it (circuitbreaker.py:229,
   `self.state = self._state_storage.state = ...` assigns left to right), and
   `timedelta(0)` as the timeout silently becomes 60 s (circuitbreaker.py:39).

What this module keeps and what it replaces: aiobreaker's `CircuitBreaker`
(failure counter, `fail_max`, exclusions, listeners, memory storage of state
and counter) and its three state classes, subclassed:

- the half-open state admits one trial at a time and refuses the others;
- the open state times its timeout on a monotonic clock (`clock`, injectable),
  and the opening time is kept as a monotonic reading, not in the storage's
  `opened_at` datetime (a datetime cannot be compared across clock steps);
  aware UTC datetimes appear only in `snapshot()`, placed on the wall clock at
  the moment of the snapshot so `closes_at - opened_at == reset_timeout`;
- permanent errors are passed through without touching the count;
- an outcome moves the breaker only while the state that admitted the call is
  still current (aiobreaker makes a new state object on every transition);
- transitions write storage first, then notify.

The call that trips the breaker (and a failed trial) raises the provider's own
error, not aiobreaker's CircuitBreakerError: `CircuitOpen` always means "the
provider was not called", which matters for a text that may or may not have
gone out. A refused call's `retry_after` is the time left until a trial is
admitted; during a trial it is `TRIAL_RETRY_AFTER` (at most `reset_timeout`),
since the trial's outcome cannot be known in advance.

The open -> half-open switch happens lazily, when the next call arrives (that
call is the trial); `on_change` hears of it then. `snapshot()` reads without
side effects and already reports `half_open` once the timeout has passed, so a
status page never says "open" past `closes_at` unless a trial failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn, TypeVar, cast

from aiobreaker import CircuitBreaker, CircuitBreakerListener, CircuitBreakerState
from aiobreaker.state import (
    CircuitBreakerBaseState,
    CircuitClosedState,
    CircuitHalfOpenState,
    CircuitOpenState,
)
from aiobreaker.storage.memory import CircuitMemoryStorage

from services.shared.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# What callers refused during a trial are told: how long a trial takes is not
# known, and success closes the breaker at once.
TRIAL_RETRY_AFTER = 1.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Unavailable):
    """The provider was not called: the breaker is open, or a trial is under way."""

    reason = "PROVIDER_CIRCUIT_OPEN"

    def __init__(self, retry_after: float) -> None:
        seconds = max(0.0, retry_after)
        super().__init__(
            f"the SMS provider is failing; try again in {seconds:.1f} s", retry_after=seconds
        )
        self.retry_after: float = seconds


@dataclass(frozen=True)
class BreakerSnapshot:
    """The breaker as it stands, with totals since this process started."""

    state: BreakerState
    failure_count: int
    fail_max: int
    reset_timeout: float
    opened_at: datetime | None
    closes_at: datetime | None
    successes: int
    failures: int
    rejections: int
    short_circuited: int


@dataclass
class _Totals:
    successes: int = 0
    failures: int = 0
    rejections: int = 0
    short_circuited: int = 0


class ProviderBreaker:
    """A circuit breaker for one provider, shared by every send of this process."""

    def __init__(
        self,
        fail_max: int,
        reset_timeout: float,
        *,
        is_failure: Callable[[BaseException], bool],
        clock: Callable[[], float] | None = None,
        on_change: Callable[[BreakerSnapshot], None] | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be at least 1, not {fail_max}")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be positive seconds, not {reset_timeout}")
        self._breaker = _Breaker(
            fail_max=fail_max,
            reset_timeout=float(reset_timeout),
            is_failure=is_failure,
            clock=clock or time.monotonic,
            on_change=(lambda: on_change(self.snapshot())) if on_change else None,
        )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` if the breaker lets it through; else raise `CircuitOpen`."""
        return cast(T, await self._breaker.call_async(fn))

    def retry_after(self) -> float | None:
        """How long a call made now would be told to wait; None if it would go through."""
        return self._breaker.refusal(self._breaker.clock())

    def snapshot(self) -> BreakerSnapshot:
        breaker, now = self._breaker, self._breaker.clock()
        wall_now = datetime.now(UTC)
        state = breaker.effective_state(now)
        opened_at = None
        if breaker.opened_mono is not None:
            opened_at = wall_now - timedelta(seconds=now - breaker.opened_mono)
        closes_at = None
        if state is BreakerState.OPEN and opened_at is not None:
            closes_at = opened_at + timedelta(seconds=breaker.reset_timeout)
        totals = breaker.totals
        return BreakerSnapshot(
            state=state,
            failure_count=breaker.fail_counter,
            fail_max=breaker.fail_max,
            reset_timeout=breaker.reset_timeout,
            opened_at=opened_at,
            closes_at=closes_at,
            successes=totals.successes,
            failures=totals.failures,
            rejections=totals.rejections,
            short_circuited=totals.short_circuited,
        )


class _Breaker(CircuitBreaker):  # type: ignore[misc]
    """aiobreaker's breaker on a monotonic clock, with the state classes below."""

    def __init__(
        self,
        *,
        fail_max: int,
        reset_timeout: float,
        is_failure: Callable[[BaseException], bool],
        clock: Callable[[], float],
        on_change: Callable[[], None] | None,
    ) -> None:
        # Set before aiobreaker builds its first state object.
        self.clock = clock
        self.reset_timeout = reset_timeout
        self.opened_mono: float | None = None
        self.trial_running = False
        self.totals = _Totals()
        super().__init__(
            fail_max=fail_max,
            timeout_duration=timedelta(seconds=reset_timeout),
            exclude=[lambda error: not is_failure(error)],
            listeners=[_Notifier(on_change)] if on_change else [],
            state_storage=CircuitMemoryStorage(CircuitBreakerState.CLOSED),
        )

    def _create_new_state(
        self, new_state: CircuitBreakerState, prev_state: Any = None, notify: bool = False
    ) -> CircuitBreakerBaseState:
        return _STATES[new_state](self, prev_state=prev_state, notify=notify)

    # -- transitions: storage first, so listeners see the new state ----------------

    def open(self) -> None:
        self.opened_mono = self.clock()
        self._move_to(CircuitBreakerState.OPEN)

    def half_open(self) -> None:
        self._move_to(CircuitBreakerState.HALF_OPEN)

    def close(self) -> None:
        self._move_to(CircuitBreakerState.CLOSED)

    def _move_to(self, state: CircuitBreakerState) -> None:
        self._state_storage.state = state
        self.state = state  # aiobreaker's setter builds the state object and notifies

    # -- time, on the monotonic clock ----------------------------------------------

    def seconds_until_trial(self, now: float) -> float:
        if self.opened_mono is None:
            return 0.0
        return max(0.0, self.opened_mono + self.reset_timeout - now)

    def refusal(self, now: float) -> float | None:
        """The retry_after a call arriving at `now` gets, or None if it goes through."""
        state = self.current_state
        if state is CircuitBreakerState.OPEN:
            wait = self.seconds_until_trial(now)
            return wait if wait > 0 else None
        if state is CircuitBreakerState.HALF_OPEN and self.trial_running:
            return min(TRIAL_RETRY_AFTER, self.reset_timeout)
        return None

    def effective_state(self, now: float) -> BreakerState:
        state = self.current_state
        if state is CircuitBreakerState.CLOSED:
            return BreakerState.CLOSED
        if state is CircuitBreakerState.OPEN and self.seconds_until_trial(now) > 0:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    # aiobreaker's own reporting, made correct for anyone who reads it.

    @property
    def opens_at(self) -> datetime | None:
        """When an open breaker admits a trial (aware UTC); None once it does."""
        wait = self.time_until_open
        return None if wait is None else datetime.now(UTC) + wait

    @property
    def time_until_open(self) -> timedelta | None:
        if self.current_state is not CircuitBreakerState.OPEN:
            return None
        wait = self.seconds_until_trial(self.clock())
        return timedelta(seconds=wait) if wait > 0 else None


class _Notifier(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        # A failing observer must not leave the breaker half-way through a transition.
        try:
            self._on_change()
        except Exception:
            log.exception("the breaker's on_change callback failed")


class _Judged(CircuitBreakerBaseState):  # type: ignore[misc]
    """Outcomes move the breaker only while the state that admitted the call is current."""

    _breaker: _Breaker

    def _is_current(self) -> bool:
        return self._breaker._state is self

    def _handle_success(self) -> None:
        self._breaker.totals.successes += 1
        if self._is_current():
            super()._handle_success()

    def _handle_error(self, func: Any, exception: Exception) -> NoReturn:
        breaker = self._breaker
        if breaker.is_system_error(exception):
            breaker.totals.failures += 1
            if self._is_current():
                breaker._inc_counter()
                for listener in breaker.listeners:
                    listener.failure(breaker, exception)
                self.on_failure(exception)
        else:
            breaker.totals.rejections += 1
            if self._is_current():
                self.on_permanent_error()
        raise exception

    def on_permanent_error(self) -> None:
        """The provider answered, with a refusal of this one message."""


class _Closed(_Judged, CircuitClosedState):  # type: ignore[misc]
    def on_failure(self, exception: Exception) -> None:
        if self._breaker.fail_counter >= self._breaker.fail_max:
            self._breaker.open()


class _Open(_Judged, CircuitOpenState):  # type: ignore[misc]
    def before_call(self, func: Any, *args: Any, **kwargs: Any) -> None:
        wait = self._breaker.seconds_until_trial(self._breaker.clock())
        if wait > 0:
            self._breaker.totals.short_circuited += 1
            raise CircuitOpen(wait)
        # aiobreaker's call_async now moves to half-open and calls through it.


class _HalfOpen(_Judged, CircuitHalfOpenState):  # type: ignore[misc]
    async def call_async(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        breaker = self._breaker
        if breaker.trial_running:
            breaker.totals.short_circuited += 1
            raise CircuitOpen(min(TRIAL_RETRY_AFTER, breaker.reset_timeout))
        # No await between the check and the claim: one event loop, one trial.
        breaker.trial_running = True
        try:
            return await super().call_async(func, *args, **kwargs)
        finally:
            # Also when the trial is cancelled: the next call becomes the trial.
            breaker.trial_running = False

    def on_failure(self, exception: Exception) -> None:
        self._breaker.open()

    def on_permanent_error(self) -> None:
        self._breaker.close()


_STATES: dict[CircuitBreakerState, type[CircuitBreakerBaseState]] = {
    CircuitBreakerState.CLOSED: _Closed,
    CircuitBreakerState.OPEN: _Open,
    CircuitBreakerState.HALF_OPEN: _HalfOpen,
}
