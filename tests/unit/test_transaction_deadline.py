"""`retrying` answers by the caller's deadline even when the work it gives up on
takes long to unwind (a query cut off by a partition: psycopg first asks the
server to cancel it, over a network that no longer answers)."""

from __future__ import annotations

import asyncio

import pytest

from services.shared.db import retrying
from services.shared.errors import Unavailable


async def test_an_answer_does_not_wait_for_abandoned_work_to_unwind() -> None:
    release = asyncio.Event()
    unwound = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # a query that never answers
        finally:
            await release.wait()  # and a cancellation that takes its time
            unwound.set()

    attempt = asyncio.create_task(retrying(stuck, time_remaining=0.2))
    done, _ = await asyncio.wait({attempt}, timeout=10)
    release.set()
    assert done, "no answer while the abandoned work was unwinding"
    assert not unwound.is_set()
    with pytest.raises(Unavailable) as refused:
        attempt.result()
    assert refused.value.reason == "DATABASE_UNAVAILABLE"
    await asyncio.wait_for(unwound.wait(), 5)  # and it does unwind, on its own


async def test_a_cancelled_caller_cancels_its_work_too() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(retrying(work, time_remaining=30))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_work_that_finishes_in_time_is_answered_with_its_result() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await retrying(work, time_remaining=5) == "done"
