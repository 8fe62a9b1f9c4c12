"""`bounded`: work's answer, or TimeoutError once its time is up, without waiting
for the work to unwind (services.shared.db)."""

from __future__ import annotations

import asyncio

import pytest

from services.shared.db import bounded


class SlowToUnwind:
    """Work that, told to stop, takes its time (as a query cut off by a partition
    does while psycopg asks the server to cancel it)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.unwound = False

    async def __call__(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await self.release.wait()
            self.unwound = True
            raise
        return "never"


async def test_the_works_answer_and_its_error_come_back_as_they_are() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def failing() -> None:
        raise LookupError("no such row")

    assert await bounded(answer, 5) == 42
    with pytest.raises(LookupError, match="no such row"):
        await bounded(failing, 5)


async def test_time_up_raises_at_once_and_leaves_the_work_to_unwind_on_its_own() -> None:
    work = SlowToUnwind()
    with pytest.raises(TimeoutError):
        await bounded(work, 0.05)
    assert work.started.is_set() and not work.unwound  # not waited for
    work.release.set()
    for _ in range(100):
        await asyncio.sleep(0)
        if work.unwound:
            break
    assert work.unwound  # it was told to stop, and did


async def test_a_cancelled_caller_cancels_the_work_without_waiting_for_it() -> None:
    work = SlowToUnwind()
    caller = asyncio.ensure_future(bounded(work, 60))
    await work.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not work.unwound
    work.release.set()
    for _ in range(100):
        await asyncio.sleep(0)
        if work.unwound:
            break
    assert work.unwound


async def test_no_timer_is_left_behind_once_the_work_answered() -> None:
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]

    async def answer() -> str:
        return "done"

    for _ in range(50):
        assert await bounded(answer, 30) == "done"
    # Cancelled timers leave the heap lazily; none of the 50 may stay due.
    due = [handle for handle in loop._scheduled  # type: ignore[attr-defined]
           if not handle.cancelled()]
    assert len(due) <= before
