"""A client process: `python -m tests.bench.client '<job as JSON>'`.

It talks to the orchestrator in JSON lines on stdout: `{"mark": …}` the
moment a measurement window starts or ends (so the orchestrator reads the
servers' CPU then), `{"ready": …}` for subscribers, and finally `{"result": …}`
or `{"error": …}`.

    {"kind": "load", "scenario": "GetLead", "paths": ["grpc", "http"], "rounds": 3,
     "echo_share": 0.25, "concurrencies": [1, 32], "warmup": 0.5, "duration": 3,
     "channels": 1, "targets": {…}, "token": "…",
     "companions": {"LeanCreateLead": ["grpc"]},   (optional: other scenarios
                                                    taking turns in the same rounds)
     "analyze": ["postgresql://…/crmbench_…_leads", …]}   (optional, see below)
    {"kind": "subscribe", "via": "grpc" | "sse" | "echo", "streams": 100, …}
    {"kind": "write", "via": "grpc" | "echo", "events": 30, "interval": 0.05, …}

`analyze` names the run's PostgreSQL databases: after making its data, a load
job runs ANALYZE on them, so the rows are measured with the planner statistics
that a database in service has (autovacuum gathers them about once a minute).
Only the tables that hold rows: autovacuum never analyzes a table nothing was
written to, and an empty table analyzed is known to the planner as empty, so
that a plan it caches for a prepared statement (a key's lookup by its primary
key) scans the whole table as it fills, every call a little longer.
A run lasts less than that on databases made seconds before it, and without
statistics PostgreSQL's planner rates every index that starts with `org` as good
as a primary key for a lookup by id: in the rounds where autovacuum had not come
yet, UpdateLeadStatus read its lead through the phone index, every row of the org.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pg_sql

from tests.bench import feeds
from tests.bench.feeds import emit
from tests.bench.kit import Kit
from tests.bench.load import Tally, drive
from tests.bench.scenarios import GRPC, HTTP, SCENARIOS, Echo
from tests.bench.servers import raise_fd_limit

ECHO = "echo"

# Warm-up of the rounds after the first: the channel and the server are warm by then,
# only the pipeline of calls in flight has to fill again. The echo server answers in
# well under a millisecond: its pipeline is full at once.
ROUND_WARMUP = 0.2
ECHO_WARMUP = 0.1


@dataclass(frozen=True)
class Turn:
    """One path's share of a round (of the job's scenario or of a companion)."""

    # What its marks and its result are known by: the path, "<scenario>/<path>"
    # for a companion's.
    id: str
    scenario: str
    path: str
    call: Callable[[int], Awaitable[None]]
    seconds: float
    warmup: float


async def load(job: dict[str, Any]) -> None:
    """Per concurrency: prepare, then `rounds` rounds in which each path takes its turn
    (the job's scenario's, then its companions'), and the echo baseline too (for
    `echo_share` of the time), so that rows measured together and their baseline see
    the same drift of a shared machine."""
    concurrencies = [int(c) for c in job["concurrencies"]]
    main_scenario = str(job["scenario"])
    parts: dict[str, list[str]] = {main_scenario: list(job["paths"]),
                                   **job.get("companions", {})}
    rounds = max(1, int(job.get("rounds", 1)))
    warmup, duration = float(job["warmup"]), float(job["duration"])
    kit = Kit(job["targets"], job["token"], channels=int(job.get("channels", 1)),
              http_connections=max(concurrencies))
    scenarios = {name: SCENARIOS[name](kit) for name in parts}
    turns: list[Turn] = []
    for name, paths in parts.items():
        scenario = scenarios[name]
        calls = {GRPC: scenario.grpc, HTTP: scenario.http}
        turns.extend(Turn(path if name == main_scenario else f"{name}/{path}", name, path,
                          calls[path], duration / rounds, min(warmup, ROUND_WARMUP))
                     for path in paths)
    echo_share = float(job.get("echo_share", 0.0))
    baseline = Echo(kit)
    if echo_share > 0:
        turns.append(Turn(ECHO, baseline.name, ECHO, baseline.grpc,
                          duration * echo_share / rounds, ECHO_WARMUP))
    # What each scenario's own turns take, for making the data they consume.
    spent = {name: sum(turn.seconds * rounds + turn.warmup * (rounds - 1) + warmup
                       for turn in turns if turn.scenario == name) for name in scenarios}
    results: list[dict[str, Any]] = []
    try:
        for concurrency in concurrencies:
            for name, scenario in scenarios.items():
                await scenario.prepare(concurrency, scenario.prepare_share * spent[name])
            await baseline.prepare(concurrency, 0)
            await analyze(job.get("analyze", []))
            tallies = {turn.id: Tally(concurrency) for turn in turns}
            for round_ in range(rounds):
                for turn in turns:

                    def mark(what: str, turn_id: str = turn.id, concurrency: int = concurrency
                             ) -> None:
                        emit({"mark": what, "path": turn_id, "concurrency": concurrency})

                    first = round_ == 0 and turn.path != ECHO
                    await drive(turn.call, concurrency=concurrency,
                                warmup=warmup if first else turn.warmup,
                                duration=turn.seconds, mark=mark, into=tallies[turn.id])
            echo = tallies[ECHO].raw() if ECHO in tallies else None
            results.extend({"scenario": turn.scenario, "path": turn.path, "turn": turn.id,
                            **tallies[turn.id].result(), "echo": echo}
                           for turn in turns if turn.path != ECHO)
    finally:
        await kit.close()
    emit({"result": results})


async def analyze(databases: list[str]) -> None:
    """Gather the planner's statistics of these databases' tables that hold rows (see
    the module)."""
    for url in databases:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            tables = await (await conn.execute(
                "SELECT schemaname, relname FROM pg_stat_user_tables")).fetchall()
            for schema, name in tables:
                table = pg_sql.Identifier(schema, name)
                found = await (await conn.execute(
                    pg_sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table))).fetchone()
                if found and found[0]:
                    await conn.execute(pg_sql.SQL("ANALYZE {}").format(table))


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
        raise_fd_limit()
        asyncio.run(main(json.loads(sys.argv[1])))
    except Exception as error:
        traceback.print_exc()
        emit({"error": f"{type(error).__name__}: {error}"})
        sys.exit(1)
