"""Two leads processes on one database against one, the same client.

    python -m tests.bench.replicas [--duration 3] [--rounds 2] [--channels 8]

The leads service on a fresh PostgreSQL database, served by one process, then
by two (`--workers 2`: two whole servers on one port, SO_REUSEPORT, as two
replicas behind a balancer), in turns; the same client each time: CreateLead and
UpdateLeadStatus over gRPC at concurrency 32 on `--channels` connections (which
the kernel spreads over the processes), each turn with the bare echo server's
own turn (a fifth of the time, the same client and connections), so every figure
has its ratio to echo from the same moment. Prints one JSON document: req/s per
turn and the best of each.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.bench.load import Tally
from tests.bench.procs import CpuProbe, run_load
from tests.bench.report import stand_alone
from tests.bench.servers import (
    ROOT,
    START_TIMEOUT,
    admin_url,
    create_databases,
    drop_databases,
    free_port,
    make_tokens,
    service_env,
    start_echo,
)

CONCURRENCY = 32
SCENARIOS = ("CreateLead", "UpdateLeadStatus")
# The echo baseline's turn in each measurement, as a share of its time.
ECHO_SHARE = 0.2


async def serving(log: Path, workers: int, process: asyncio.subprocess.Process) -> None:
    """Wait until every worker says it serves."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        if process.returncode is not None:
            raise RuntimeError(f"leads exited:\n{text[-2000:]}")
        if text.count("serving on") >= workers:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"leads did not serve:\n{text[-2000:]}")


async def turn(url: str, database: str, workers: int, *, tokens: dict[str, str], echo: str,
               workdir: Path, duration: float, channels: int) -> dict[str, tuple[float, float]]:
    """Each scenario's req/s and the echo server's in its turns, under `workers`."""
    port = free_port()
    ports = {"leads": port, "bookings": free_port(), "messaging": free_port(),
             "gateway": free_port()}
    env = {**service_env(tokens, url, workdir, ports), "CRM_LOG_LEVEL": "INFO"}
    log = workdir / f"leads-{workers}-{uuid.uuid4().hex[:6]}.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.leads", "--port", str(port), "--workers",
            str(workers), cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=sink)
    try:
        await serving(log, workers, process)
        found: dict[str, tuple[float, float]] = {}
        for scenario in SCENARIOS:
            job = {"kind": "load", "scenario": scenario, "paths": ["grpc"],
                   "targets": {"leads": f"127.0.0.1:{port}", "echo": echo},
                   "token": tokens["bench"], "concurrencies": [CONCURRENCY], "warmup": 0.5,
                   "duration": duration, "rounds": 1, "echo_share": ECHO_SHARE,
                   "channels": channels, "companions": {},
                   "analyze": [admin_url(database)]}
            (result,) = await run_load(job, CpuProbe({}, []), workdir / "clients.log")
            echoes = Tally(CONCURRENCY)
            echoes.merge(result["echo"])
            found[scenario] = (float(result["rps"]), float(echoes.result()["rps"]))
        return found
    finally:
        process.terminate()
        await process.wait()


async def measure(*, duration: float, rounds: int, channels: int) -> dict[str, Any]:
    tokens = make_tokens()
    name = f"crm_replicas_{uuid.uuid4().hex[:8]}"
    url = create_databases([name])[name]
    rps: dict[str, dict[str, list[float]]] = {s: {"1": [], "2": []} for s in SCENARIOS}
    echo_rps: dict[str, dict[str, list[float]]] = {s: {"1": [], "2": []} for s in SCENARIOS}
    try:
        with tempfile.TemporaryDirectory(prefix="crm-replicas-") as tmp:
            workdir = Path(tmp)
            echo = await start_echo(workdir)
            try:
                for _ in range(rounds):
                    for workers in (1, 2):
                        found = await turn(url, name, workers, tokens=tokens, echo=echo.target,
                                           workdir=workdir, duration=duration,
                                           channels=channels)
                        for scenario, (calls, echoes) in found.items():
                            rps[scenario][str(workers)].append(calls)
                            echo_rps[scenario][str(workers)].append(echoes)
            finally:
                await echo.stop()
    finally:
        drop_databases([name])
    best = {scenario: {workers: max(found) for workers, found in by.items()}
            for scenario, by in rps.items()}
    # The echo server as it ran beside the calls: its best turn, per scenario (the
    # ratios are to the machine at its quickest in the run).
    echo_best = {scenario: max(x for found in by.values() for x in found)
                 for scenario, by in echo_rps.items()}
    return {"concurrency": CONCURRENCY, "channels": channels, "rps": rps, "best": best,
            "echo_rps": echo_rps, "echo": echo_best,
            "two_vs_one": {s: round(b["2"] / b["1"], 2) for s, b in best.items()},
            "xecho": {s: {w: round(r / echo_best[s], 3) for w, r in b.items()}
                      for s, b in best.items()}}


def table(row: dict[str, Any]) -> str:
    lines = []
    for scenario, by in row["best"].items():
        lines.append(f"{scenario} over gRPC, c={row['concurrency']} on {row['channels']} "
                     f"connections (best of rounds, req/s; echo {row['echo'][scenario]:.0f})")
        for workers, best in by.items():
            rounds = ", ".join(f"{r:.0f}" for r in row["rps"][scenario][workers])
            lines.append(f"  {workers} leads process{'es' if workers != '1' else ''}: "
                         f"{best:7.0f}   {row['xecho'][scenario][workers]:.2f}x echo   "
                         f"rounds: {rounds}")
        lines.append(f"  two / one: {row['two_vs_one'][scenario]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    stand_alone(__doc__, measure, table, duration=(float, 3.0), rounds=(int, 2),
                channels=(int, 8))


if __name__ == "__main__":
    main()
