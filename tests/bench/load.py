"""Closed-loop load: `concurrency` tasks, each making one call after another.

Calls run from the start (warm-up) to the end of the window; only the calls
that complete inside the window [start, end] count, and only the successful
ones make the throughput. A row may be measured in several rounds (each with
its own short warm-up), whose windows, calls and CPU times add up. The
client's CPU share is its process CPU time (every thread, gRPC's included) over
the windows' wall time: near 1.0 means the client had a whole core and may
itself have been the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc

from tests.bench.kit import Exhausted, Failed, describe
from tests.bench.stats import summarize


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Drive:
    """One measurement: workers calling in a loop, a timer marking the window."""

    def __init__(self, call: Callable[[int], Awaitable[None]], *, warmup: float,
                 duration: float, mark: Callable[[str], None]) -> None:
        self.call = call
        self.mark = mark
        self.duration = duration
        self.clock = time.perf_counter
        self.start = self.clock() + warmup
        self.end = self.start + duration
        self.ended = asyncio.Event()
        self.exhausted = False
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    async def worker(self, i: int) -> None:
        clock = self.clock
        while (started := clock()) < self.end:
            code: str | None = None
            try:
                await self.call(i)
            except Exhausted:
                self._exhausted()
                return
            except grpc.aio.AioRpcError as error:
                code = describe(error)
            except Failed as error:
                code = error.code
            except (aiohttp.ClientError, TimeoutError) as error:
                code = type(error).__name__
            done = clock()
            if self.start <= done <= self.end:
                if code is None:
                    self.latencies.append(done - started)
                else:
                    self.errors[code] += 1

    def _exhausted(self) -> None:
        if not self.exhausted:
            self.exhausted = True
            self.end = min(self.end, self.clock())
            self.ended.set()

    async def timer(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of this process over the window."""
        await asyncio.sleep(max(0.0, self.start - self.clock()))
        if self.ended.is_set():
            return 0.0, 0.0
        cpu0, wall0 = cpu_time(), self.clock()
        self.mark("start")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), max(0.0, self.end - self.clock()))
        cpu1, wall1 = cpu_time(), self.clock()
        self.mark("end")
        return cpu1 - cpu0, wall1 - wall0



@dataclass
class Tally:
    """What the rounds of one path at one concurrency add up to."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    planned: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    rounds: int = 0
    exhausted: bool = False

    def add(self, run: Drive, cpu: float, wall: float) -> None:
        self.latencies.extend(run.latencies)
        self.errors.update(run.errors)
        self.seconds += max(0.0, run.end - run.start)
        self.planned += run.duration
        self.cpu += cpu
        self.wall += wall
        self.rounds += 1
        self.exhausted = self.exhausted or run.exhausted

    def raw(self) -> dict[str, Any]:
        """Everything, the latencies included, to be merged elsewhere (`merge`)."""
        return {"concurrency": self.concurrency, "latencies": self.latencies,
                "errors": dict(self.errors), "seconds": self.seconds, "planned": self.planned,
                "cpu": self.cpu, "wall": self.wall, "rounds": self.rounds,
                "exhausted": self.exhausted}

    def merge(self, raw: dict[str, Any]) -> None:
        self.latencies.extend(raw["latencies"])
        self.errors.update(raw["errors"])
        for name in ("seconds", "planned", "cpu", "wall", "rounds"):
            setattr(self, name, getattr(self, name) + raw[name])
        self.exhausted = self.exhausted or bool(raw["exhausted"])

    def result(self) -> dict[str, Any]:
        ok = len(self.latencies)
        result: dict[str, Any] = {
            "concurrency": self.concurrency,
            "ok": ok,
            "seconds": round(self.seconds, 4),
            "rounds": self.rounds,
            "rps": ok / self.seconds if self.seconds > 0 else 0.0,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "client_cpu": self.cpu / self.wall if self.wall > 0 else 0.0,
            "exhausted": self.exhausted,
            **summarize(self.latencies),
        }
        if self.exhausted:
            result["note"] = (f"prepared data ran out: measured {self.seconds:.2f} s "
                              f"of {self.planned:.2f} s")
        return result


async def drive(
    call: Callable[[int], Awaitable[None]],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    mark: Callable[[str], None],
    into: Tally,
) -> None:
    """Measure `call` made by `concurrency` workers: warm-up, then `duration` seconds."""
    run = Drive(call, warmup=warmup, duration=duration, mark=mark)
    workers = [asyncio.create_task(run.worker(i)) for i in range(concurrency)]
    cpu, wall = await run.timer()
    await asyncio.gather(*workers)
    into.add(run, cpu, wall)
