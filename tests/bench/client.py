"""A client process: `python -m tests.bench.client '<job as JSON>'`.

It talks to the orchestrator in JSON lines on stdout: `{"mark": …}` the
moment a measurement window starts or ends (so the orchestrator reads the
servers' CPU then), `{"ready": …}` for subscribers, and finally `{"result": …}`
or `{"error": …}`.

    {"kind": "load", "scenario": "GetLead", "paths": ["grpc", "http"], "rounds": 3,
     "echo_share": 0.25, "concurrencies": [1, 32], "warmup": 0.5, "duration": 3,
     "channels": 1, "targets": {…}, "token": "…"}
    {"kind": "subscribe", "via": "grpc" | "sse" | "echo", "streams": 100, …}
    {"kind": "write", "via": "grpc" | "echo", "events": 30, "interval": 0.05, …}
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.bench import feeds
from tests.bench.feeds import emit
from tests.bench.kit import Kit
from tests.bench.load import Tally, drive
from tests.bench.scenarios import GRPC, HTTP, SCENARIOS, Echo

ECHO = "echo"

# Warm-up of the rounds after the first: the channel and the server are warm by then,
# only the pipeline of calls in flight has to fill again. The echo server answers in
# well under a millisecond: its pipeline is full at once.
ROUND_WARMUP = 0.2
ECHO_WARMUP = 0.1


@dataclass(frozen=True)
class Turn:
    """One path's share of a round."""

    path: str
    call: Callable[[int], Awaitable[None]]
    seconds: float
    warmup: float


async def load(job: dict[str, Any]) -> None:
    """Per concurrency: prepare, then `rounds` rounds in which each path takes its turn,
    and the echo baseline too (for `echo_share` of the time), so that a row and its
    baseline see the same drift of a shared machine."""
    concurrencies = [int(c) for c in job["concurrencies"]]
    paths: list[str] = list(job["paths"])
    rounds = max(1, int(job.get("rounds", 1)))
    warmup, duration = float(job["warmup"]), float(job["duration"])
    kit = Kit(job["targets"], job["token"], channels=int(job.get("channels", 1)),
              http_connections=max(concurrencies))
    scenario = SCENARIOS[job["scenario"]](kit)
    calls = {GRPC: scenario.grpc, HTTP: scenario.http}
    turns = [Turn(path, calls[path], duration / rounds, min(warmup, ROUND_WARMUP))
             for path in paths]
    echo_share = float(job.get("echo_share", 0.0))
    baseline = Echo(kit)
    if echo_share > 0:
        turns.append(Turn(ECHO, baseline.grpc, duration * echo_share / rounds, ECHO_WARMUP))
    # What the scenario's own turns take, for making the data they consume.
    spent = sum(turn.seconds * rounds + turn.warmup * (rounds - 1) + warmup
                for turn in turns if turn.path != ECHO)
    results: list[dict[str, Any]] = []
    try:
        for concurrency in concurrencies:
            await scenario.prepare(concurrency, scenario.prepare_share * spent)
            await baseline.prepare(concurrency, 0)
            tallies = {turn.path: Tally(concurrency) for turn in turns}
            for round_ in range(rounds):
                for turn in turns:

                    def mark(what: str, path: str = turn.path, concurrency: int = concurrency
                             ) -> None:
                        emit({"mark": what, "path": path, "concurrency": concurrency})

                    first = round_ == 0 and turn.path != ECHO
                    await drive(turn.call, concurrency=concurrency,
                                warmup=warmup if first else turn.warmup,
                                duration=turn.seconds, mark=mark, into=tallies[turn.path])
            echo = tallies[ECHO].raw() if ECHO in tallies else None
            results.extend({"path": path, **tallies[path].result(), "echo": echo}
                           for path in paths)
    finally:
        await kit.close()
    emit({"result": results})


async def main(job: dict[str, Any]) -> None:
    kind = job["kind"]
    if kind == "load":
        await load(job)
    elif kind == "subscribe":
        await feeds.Subscribers(job).run()
    elif kind == "write":
        await feeds.write(job)
    else:
        raise ValueError(f"unknown job kind {kind!r}")


if __name__ == "__main__":
    try:
        asyncio.run(main(json.loads(sys.argv[1])))
    except Exception as error:
        traceback.print_exc()
        emit({"error": f"{type(error).__name__}: {error}"})
        sys.exit(1)
