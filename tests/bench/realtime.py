"""Realtime, orchestrator side: commit-to-subscriber latency and memory per idle stream.

For one feed and one number of streams:

1. read the RSS (VmRSS) of the server(s) that hold the streams;
2. a subscriber process opens the streams and says when every one is live;
3. after half a second of rest, read the RSS again: (after - before) / streams is the
   memory an idle subscriber costs (RSS is what the process holds from the
   system; memory a smaller run freed may be reused, so it errs low, not high);
4. a writer process makes `events` changes one after another, `interval` apart,
   each stamped `t_commit` when its call returned;
5. the subscriber reports when each stream saw each change (`t_seen`); the
   latencies are every `t_seen - t_commit`, over every stream and change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.bench.procs import ClientProcess, CpuProbe
from tests.bench.servers import rss_kib
from tests.bench.stats import summarize

SETTLE_SECONDS = 0.5


def interval_for(streams: int) -> float:
    """Time between changes: long enough that one change has reached every stream
    before the next is made, so each latency is one change's, not a queue's."""
    return max(0.05, streams * 0.0003)


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
) -> dict[str, Any]:
    """One realtime measurement; `holders` are the processes whose RSS is read."""
    before = {name: rss_kib(pid) for name, pid in holders.items()}
    base = {"targets": dict(targets), "token": token, "via": via}
    subscriber = await ClientProcess.start({**base, "kind": "subscribe", "streams": streams},
                                           log)
    try:
        ready = (await subscriber.message(patience=180))["ready"]
        await asyncio.sleep(SETTLE_SECONDS)
        after = {name: rss_kib(pid) for name, pid in holders.items()}
        interval = interval_for(streams)
        await subscriber.send("go")
        cpu0 = await probe.sample()
        writer = await ClientProcess.start(
            {**base, "via": "echo" if via == "echo" else "grpc", "kind": "write",
             "events": events, "interval": interval}, log)
        try:
            commits: dict[str, float] = (await writer.message())["result"]["commits"]
        finally:
            await writer.finish()
        await subscriber.send({"stop": list(commits), "timeout": 10 + streams / 100})
        seen = (await subscriber.message())["result"]
        cpu1 = await probe.sample()
    finally:
        await subscriber.finish()
    latencies = [t - commits[lead_id] for lead_id, times in seen["seen"].items() for t in times]
    expected = streams * len(commits)
    return {
        "feed": via,
        "streams": streams,
        "events": len(commits),
        "interval_s": interval,
        "delivered": len(latencies),
        "missed": max(0, expected - len(latencies)),
        "seconds_to_open": round(float(ready["seconds"]), 3),
        **summarize(latencies),
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_kib_per_stream": {name: round((after[name] - before[name]) / streams, 2)
                               for name in holders},
        "client_cpu": seen["client_cpu"],
        "server_cpu": probe.shares(cpu0, cpu1),
        "failures": seen["failures"],
        "short_streams": seen["short_streams"],
        "degraded_bookmarks": seen["degraded_bookmarks"],
    }
