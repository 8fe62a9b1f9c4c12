"""Retrying sends to the SMS provider: full-jitter backoff, attempts, the
deadline, and the breaker - with a fake clock, recorded sleeps and scripted
randomness, so nothing here waits."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import pytest

from services.messaging.breaker import BreakerState, CircuitOpen, ProviderBreaker
from services.messaging.retry import NEXT_ATTEMPT_ALLOWANCE, backoff_delay, send_with_retries


class Transient(Exception):
    """A 503 from the provider."""


class Permanent(Exception):
    """An invalid number (Twilio 21211)."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, Transient | TimeoutError)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Sleeper:
    """Records each delay and moves the fake clock on by it, instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self.then: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay
        if self.then is not None:
            await self.then()


class Provider:
    """Answers each call with the next scripted outcome: a result or an error."""

    def __init__(self, outcomes: Iterable[str | Exception]) -> None:
        self._outcomes: Iterator[str | Exception] = iter(outcomes)
        self.calls = 0

    async def send(self) -> str:
        self.calls += 1
        outcome = next(self._outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def scripted(values: Iterable[float]) -> Callable[[], float]:
    values = iter(values)
    return lambda: next(values)


def failures(count: int) -> list[str | Exception]:
    return [Transient(f"503 #{n}") for n in range(1, count + 1)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeper(clock: FakeClock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
def breaker(clock: FakeClock) -> ProviderBreaker:
    return ProviderBreaker(100, 30.0, is_failure=is_transient, clock=clock)


async def send(
    provider: Provider,
    breaker: ProviderBreaker,
    clock: FakeClock,
    sleeper: Sleeper,
    *,
    max_attempts: int = 5,
    deadline: float | None = None,
    rng: Callable[[], float] = lambda: 0.5,
) -> str:
    return await send_with_retries(
        provider.send, breaker=breaker, max_attempts=max_attempts, deadline=deadline,
        is_transient=is_transient, sleep=sleeper, clock=clock, rng=rng,
    )


async def test_a_first_time_success_is_returned_without_sleeping(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    provider = Provider(["SM1"])
    assert await send(provider, breaker, clock, sleeper) == "SM1"
    assert (provider.calls, sleeper.delays) == (1, [])


async def test_transient_failures_are_retried_until_an_attempt_succeeds(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    provider = Provider([*failures(2), "SM1"])
    assert await send(provider, breaker, clock, sleeper) == "SM1"
    assert provider.calls == 3
    assert len(sleeper.delays) == 2


async def test_backoff_delays_are_the_random_fraction_of_a_doubling_capped_ceiling(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    fractions = [0.9, 0.5, 0.25, 0.0, 0.999, 0.5, 0.1]
    provider = Provider([*failures(7), "SM1"])

    await send(provider, breaker, clock, sleeper, max_attempts=8, rng=scripted(fractions))

    ceilings = [1, 2, 4, 8, 16, 30, 30]  # base 1 s doubling, capped at max_delay 30 s
    expected = [f * c for f, c in zip(fractions, ceilings, strict=True)]
    assert sleeper.delays == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(20))
def test_every_backoff_delay_lies_between_zero_and_its_ceiling(seed: int) -> None:
    rng = random.Random(seed).random
    for retry in range(12):
        ceiling = min(30.0, 1.0 * 2**retry)
        assert 0 <= backoff_delay(retry, base_delay=1.0, max_delay=30.0, rng=rng) <= ceiling


def test_a_huge_retry_number_is_capped_rather_than_overflowing() -> None:
    assert backoff_delay(10_000, base_delay=1.0, max_delay=30.0, rng=lambda: 1.0) == 30.0


async def test_retries_stop_at_max_attempts_and_raise_the_last_transient_error(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    provider = Provider(failures(10))

    with pytest.raises(Transient, match="#4"):
        await send(provider, breaker, clock, sleeper, max_attempts=4)

    assert provider.calls == 4
    assert len(sleeper.delays) == 3


async def test_a_permanent_error_is_raised_after_one_attempt(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    provider = Provider([Permanent("21211"), "SM1"])

    with pytest.raises(Permanent):
        await send(provider, breaker, clock, sleeper)

    assert (provider.calls, sleeper.delays) == (1, [])


async def test_a_delay_that_would_leave_no_room_before_the_deadline_is_not_slept(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    deadline = clock() + 3.0
    provider = Provider(failures(10))

    # Delays drawn: 0.99 (fits with the allowance), then 1.98 (would end at 2.97
    # and leave 0.03 s, less than the allowance): the run ends after 2 attempts.
    with pytest.raises(Transient, match="#2"):
        await send(provider, breaker, clock, sleeper, deadline=deadline, rng=lambda: 0.99)

    assert sleeper.delays == pytest.approx([0.99])
    assert clock() + NEXT_ATTEMPT_ALLOWANCE <= deadline


@pytest.mark.parametrize("seed", range(10))
async def test_no_run_ever_sleeps_past_its_deadline(
    seed: int, breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    deadline = clock() + 10.0
    provider = Provider(failures(20))

    with pytest.raises(Transient):
        await send(provider, breaker, clock, sleeper, max_attempts=20, deadline=deadline,
                   rng=random.Random(seed).random)

    assert clock() + NEXT_ATTEMPT_ALLOWANCE <= deadline


async def test_no_attempt_is_made_once_the_deadline_has_passed(
    breaker: ProviderBreaker, clock: FakeClock, sleeper: Sleeper
) -> None:
    provider = Provider(["SM1"])

    with pytest.raises(TimeoutError):
        await send(provider, breaker, clock, sleeper, deadline=clock() - 0.1)

    assert provider.calls == 0


async def test_an_attempt_cut_off_by_the_deadline_does_not_count_against_the_breaker() -> None:
    breaker = ProviderBreaker(1, 30.0, is_failure=is_transient)

    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    with pytest.raises(TimeoutError):
        await send_with_retries(hang, breaker=breaker, max_attempts=5,
                                deadline=time.monotonic() + 0.02, is_transient=is_transient)

    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.failures) == (BreakerState.CLOSED, 0)


async def test_an_open_breaker_refuses_before_the_first_attempt(
    clock: FakeClock, sleeper: Sleeper
) -> None:
    breaker = ProviderBreaker(1, 30.0, is_failure=is_transient, clock=clock)
    with pytest.raises(Transient):
        await breaker.call(Provider(failures(1)).send)
    provider = Provider(["SM1"])

    with pytest.raises(CircuitOpen) as refused:
        await send(provider, breaker, clock, sleeper)

    assert (provider.calls, sleeper.delays) == (0, [])
    assert refused.value.retry_after == pytest.approx(30.0)


async def test_a_breaker_opened_by_other_sends_mid_run_stops_the_retries_at_once(
    clock: FakeClock, sleeper: Sleeper
) -> None:
    breaker = ProviderBreaker(2, 30.0, is_failure=is_transient, clock=clock)
    others = Provider(failures(2))

    async def other_sends_fail() -> None:
        for _ in range(2):
            with pytest.raises(Transient):
                await breaker.call(others.send)

    sleeper.then = other_sends_fail  # while this run sleeps after its first failure
    provider = Provider([*failures(1), "SM1"])

    with pytest.raises(CircuitOpen):
        await send(provider, breaker, clock, sleeper)

    assert provider.calls == 1
    assert len(sleeper.delays) == 1


async def test_a_long_run_of_transient_failures_opens_the_breaker_and_ends_there(
    clock: FakeClock, sleeper: Sleeper
) -> None:
    breaker = ProviderBreaker(3, 30.0, is_failure=is_transient, clock=clock)
    provider = Provider(failures(10))

    with pytest.raises(CircuitOpen) as refused:
        await send(provider, breaker, clock, sleeper, max_attempts=10)

    assert provider.calls == 3
    assert len(sleeper.delays) == 2  # no sleep only to be refused afterwards
    assert isinstance(refused.value.__cause__, Transient)
    assert refused.value.retry_after == pytest.approx(30.0)
    assert breaker.snapshot().state is BreakerState.OPEN


async def test_a_run_of_no_attempts_is_refused(breaker: ProviderBreaker) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        await send_with_retries(Provider([]).send, breaker=breaker, max_attempts=0,
                                deadline=None, is_transient=is_transient)
