"""Realtime, orchestrator side: commit-to-subscriber latency and memory per idle stream.

For one feed and one number of streams:

1. read the RSS (VmRSS) of the server(s) that hold the streams;
2. subscriber processes (STREAMS_PER_PROCESS streams each: one Python process
   holding a thousand streams would measure itself) open the streams and say
   when every one is live;
3. after half a second of rest, read the RSS again: (after - before) / streams is the
   memory an idle subscriber costs (RSS is what the process holds from the
   system; memory a smaller run freed may be reused, so it errs low, not high);
   and the upstream Subscribe streams the leads service holds (its
   `crm_subscribers`): for SSE, the gateway's, however many browsers;
4. a writer process makes `events` changes one after another, `interval` apart,
   each stamped `t_commit` when its call returned;
5. the subscribers report when each stream saw each change (`t_seen`); the
   latencies are every `t_seen - t_commit`, over every stream and change.

`idle` holds many streams open in one process without changes, heartbeats
flowing, and reports that process's RSS, open files and CPU: SSE browsers in
the gateway, or direct Subscribe streams in the leads service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.bench.procs import ClientProcess, CpuProbe
from tests.bench.servers import Server, gauge, open_fds, rss_kib
from tests.bench.stats import summarize

SETTLE_SECONDS = 0.5
STREAMS_PER_PROCESS = 250
IDLE_PER_PROCESS = 2500
# The idle row's window: long enough for heartbeats (every 5 s in the bench) to flow.
IDLE_SECONDS = 12.0


def interval_for(streams: int) -> float:
    """Time between changes: long enough that one change has reached every stream
    before the next is made, so each latency is one change's, not a queue's."""
    return max(0.05, streams * 0.0003)


def shares(streams: int, per_process: int) -> list[int]:
    processes = max(1, math.ceil(streams / per_process))
    return [streams // processes + (1 if i < streams % processes else 0)
            for i in range(processes)]


async def open_subscribers(base: dict[str, Any], streams: int, per_process: int, log: Path
                           ) -> tuple[list[ClientProcess], float]:
    """Subscriber processes holding `streams` streams, every one live; the seconds it took."""
    subscribers = [await ClientProcess.start({**base, "kind": "subscribe", "streams": n}, log)
                   for n in shares(streams, per_process)]
    try:
        readies = [(await s.message(patience=300))["ready"] for s in subscribers]
    except BaseException:
        await asyncio.gather(*(s.finish() for s in subscribers))
        raise
    return subscribers, max(float(r["seconds"]) for r in readies)


async def measure(
    *,
    via: str,
    streams: int,
    events: int,
    targets: Mapping[str, str],
    token: str,
    holders: Mapping[str, int],
    probe: CpuProbe,
    log: Path,
    leads: Server | None = None,
) -> dict[str, Any]:
    """One realtime measurement; `holders` are the processes whose RSS is read."""
    before = {name: rss_kib(pid) for name, pid in holders.items()}
    base = {"targets": dict(targets), "token": token, "via": via}
    subscribers, opened = await open_subscribers(base, streams, STREAMS_PER_PROCESS, log)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        after = {name: rss_kib(pid) for name, pid in holders.items()}
        upstream = await gauge(leads, "crm_subscribers") if leads is not None else None
        interval = interval_for(streams)
        for subscriber in subscribers:
            await subscriber.send("go")
        cpu0 = await probe.sample()
        writer = await ClientProcess.start(
            {**base, "via": "echo" if via == "echo" else "grpc", "kind": "write",
             "events": events, "interval": interval}, log)
        try:
            commits: dict[str, float] = (await writer.message())["result"]["commits"]
        finally:
            await writer.finish()
        for subscriber in subscribers:
            await subscriber.send({"stop": list(commits), "timeout": 10 + streams / 100})
        results = [(await s.message())["result"] for s in subscribers]
        cpu1 = await probe.sample()
    finally:
        await asyncio.gather(*(s.finish() for s in subscribers))
    latencies = [t - commits[lead_id] for seen in results
                 for lead_id, times in seen["seen"].items() for t in times]
    expected = streams * len(commits)
    return {
        "feed": via,
        "streams": streams,
        "processes": len(subscribers),
        "events": len(commits),
        "interval_s": interval,
        "delivered": len(latencies),
        "missed": max(0, expected - len(latencies)),
        "seconds_to_open": round(opened, 3),
        **summarize(latencies),
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_kib_per_stream": {name: round((after[name] - before[name]) / streams, 2)
                               for name in holders},
        "upstream_streams": upstream,
        "client_cpu": round(sum(r["client_cpu"] for r in results), 3),
        "server_cpu": probe.shares(cpu0, cpu1),
        "failures": [f for r in results for f in r["failures"]][:5],
        "short_streams": {"count": sum(r["short_streams"]["count"] for r in results),
                          "first": [f for r in results for f in r["short_streams"]["first"]][:10]},
        "degraded_bookmarks": sum(r["degraded_bookmarks"] for r in results),
    }


async def idle(*, via: str, streams: int, targets: Mapping[str, str], token: str,
               holder: Server, leads: Server, probe: CpuProbe, log: Path) -> dict[str, Any]:
    """`streams` idle streams held open by one process, `holder`: SSE browsers
    (`via` sse) in the gateway, or Subscribe streams (`via` grpc) in leads."""
    before = rss_kib(holder.pid)
    fds_before = open_fds(holder.pid)
    base = {"targets": dict(targets), "token": token, "via": via}
    subscribers, opened = await open_subscribers(base, streams, IDLE_PER_PROCESS, log)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        cpu0 = await probe.sample()
        await asyncio.sleep(IDLE_SECONDS)
        cpu1 = await probe.sample()
        after = rss_kib(holder.pid)
        upstream = await gauge(leads, "crm_subscribers")
        held = await gauge(holder, "crm_gateway_sse_streams" if via == "sse"
                           else "crm_subscribers")
        fds = open_fds(holder.pid)
    finally:
        await asyncio.gather(*(s.finish() for s in subscribers))
    return {
        "feed": via,
        "streams": streams,
        "processes": len(subscribers),
        "seconds_to_open": round(opened, 3),
        "rss_kib_before": before,
        "rss_kib_after": after,
        "kib_per_stream": round((after - before) / streams, 2),
        "fds_before": fds_before,
        "fds": fds,
        "held_streams": held,
        "upstream_streams": upstream,
        "idle_seconds": IDLE_SECONDS,
        "server_cpu": probe.shares(cpu0, cpu1),
    }
