"""The orchestrator's side of client processes, and what it reads of the servers.

A client process (`tests.bench.client`) is started per job; its JSON lines
arrive here. When it marks the start or the end of a measurement window, the
servers' CPU times are read from /proc (and those of the PostgreSQL backends
serving the run's databases), so each result also says how busy each server
was: 1.0 is one whole core.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.servers import ROOT, cpu_seconds, postgres_backends

# A client line can be long (a subscriber's timestamps): no line limit worth hitting.
LINE_LIMIT = 256 * 1024 * 1024


class ClientFailed(RuntimeError):
    pass


class ClientProcess:
    """One `python -m tests.bench.client` process and its JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, job: Mapping[str, Any], log: Path) -> ClientProcess:
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.client", json.dumps(job), cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=sink,
                limit=LINE_LIMIT,
            )
        return cls(process, log)

    async def message(self, patience: float = 300.0) -> dict[str, Any]:
        """The next message; an `error` message or an early exit raises ClientFailed."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), patience)
        if not line:
            await self.process.wait()
            raise ClientFailed(f"the client exited ({self.process.returncode}):\n"
                               f"{self.log.read_text(errors='replace')[-2000:]}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise ClientFailed(str(message["error"]))
        return message

    async def send(self, command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def finish(self, patience: float = 30.0) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), patience)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: dict[str, float]
    postgres: dict[int, float]


class CpuProbe:
    """Reads the CPU time of the servers (and of their PostgreSQL backends)."""

    def __init__(self, pids: Mapping[str, int], databases: list[str]) -> None:
        self.pids = dict(pids)
        self.databases = databases

    async def sample(self) -> Sample:
        wall = time.monotonic()
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        postgres: dict[int, float] = {}
        if self.databases:
            for pid in await asyncio.to_thread(postgres_backends, self.databases):
                postgres[pid] = cpu_seconds(pid)
        return Sample(wall, cpu, postgres)

    @staticmethod
    def used(before: Sample, after: Sample) -> dict[str, float]:
        """CPU seconds each server used between two samples (PostgreSQL: every backend
        of the run's databases, summed; one that connected meanwhile counts whole)."""
        used = {name: after.cpu[name] - before.cpu.get(name, 0.0) for name in after.cpu}
        if after.postgres:
            used["postgres"] = sum(t - before.postgres.get(pid, 0.0)
                                   for pid, t in after.postgres.items())
        return used

    @classmethod
    def shares(cls, before: Sample, after: Sample) -> dict[str, float]:
        """CPU share of each server between two samples (1.0: one core)."""
        return Usage.of(before, after).shares()


@dataclass
class Usage:
    """CPU seconds of each server over some windows, and their wall time."""

    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, before: Sample, after: Sample) -> Usage:
        usage = cls()
        usage.add(before, after)
        return usage

    def add(self, before: Sample, after: Sample) -> None:
        self.wall += after.wall - before.wall
        for name, seconds in CpuProbe.used(before, after).items():
            self.cpu[name] = self.cpu.get(name, 0.0) + seconds

    def shares(self) -> dict[str, float]:
        if self.wall <= 0:
            return {}
        return {name: round(seconds / self.wall, 3) for name, seconds in self.cpu.items()}


async def run_load(job: Mapping[str, Any], probe: CpuProbe, log: Path) -> list[dict[str, Any]]:
    """Run one load job; each result gets the servers' CPU shares of its windows."""
    client = await ClientProcess.start(job, log)
    usage: dict[tuple[str, int], Usage] = {}
    started: dict[tuple[str, int], Sample] = {}
    try:
        while True:
            message = await client.message()
            if "mark" in message:
                row = (str(message["path"]), int(message["concurrency"]))
                sample = await probe.sample()
                if message["mark"] == "start":
                    started[row] = sample
                elif row in started:
                    usage.setdefault(row, Usage()).add(started.pop(row), sample)
                continue
            results: list[dict[str, Any]] = message["result"]
            for result in results:
                concurrency = int(result["concurrency"])
                found = usage.get((result.pop("turn", result["path"]), concurrency))
                result["server_cpu"] = found.shares() if found else {}
                echo = usage.get(("echo", concurrency))
                result["echo_cpu"] = echo.shares() if echo else {}
            return results
    finally:
        await client.finish()
