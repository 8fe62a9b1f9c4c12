"""Group commit on against off, the same client.

    python -m tests.bench.grouping [--duration 3] [--rounds 2]

One leads process on a fresh PostgreSQL database, with CRM_GROUP_COMMIT=32
(group commit on) and with CRM_GROUP_COMMIT=0 (every call commits
alone), in turns; the same client each time: CreateLead and UpdateLeadStatus
over gRPC at concurrency 32. Each turn also reads the process's
crm_group_commit_calls metric: the calls its write transactions carried, on
average (the leads UpdateLeadStatus makes for itself included; off, no metric:
every call alone). Prints one JSON
document: req/s, p50, CPU and calls per commit per turn.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.bench.procs import CpuProbe, run_load
from tests.bench.replicas import serving
from tests.bench.report import stand_alone
from tests.bench.servers import (
    ROOT,
    admin_url,
    create_databases,
    drop_databases,
    free_port,
    make_tokens,
    service_env,
    start_echo,
)

CONCURRENCY = 32
SETTINGS = {"on": "32", "off": "0"}
SCENARIOS = ("CreateLead", "UpdateLeadStatus")


def carried(metrics_port: int) -> tuple[float, float]:
    """(write transactions, calls they carried) so far, from the process's metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for part in found:
            if line.startswith(f"crm_group_commit_calls_{part}{{"):
                found[part] += float(line.rsplit(" ", 1)[1])
    return found["count"], found["sum"]


async def turn(url: str, database: str, setting: str, scenario: str, *,
               tokens: dict[str, str], echo: str, workdir: Path, duration: float
               ) -> dict[str, Any]:
    port, metrics_port = free_port(), free_port()
    ports = {"leads": port, "bookings": free_port(), "messaging": free_port(),
             "gateway": free_port()}
    env = {**service_env(tokens, url, workdir, ports), "CRM_LOG_LEVEL": "INFO",
           "CRM_GROUP_COMMIT": SETTINGS[setting], "CRM_METRICS_PORT": str(metrics_port)}
    log = workdir / f"leads-{setting}-{uuid.uuid4().hex[:6]}.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.leads", "--port", str(port), cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=sink)
    try:
        await serving(log, 1, process)
        before = await asyncio.to_thread(carried, metrics_port)
        job = {"kind": "load", "scenario": scenario, "paths": ["grpc"],
               "targets": {"leads": f"127.0.0.1:{port}", "echo": echo},
               "token": tokens["bench"], "concurrencies": [CONCURRENCY], "warmup": 0.5,
               "duration": duration, "rounds": 1, "echo_share": 0.0, "channels": 1,
               "companions": {}, "analyze": [admin_url(database)]}
        probe = CpuProbe({"leads": process.pid}, [database])
        (result,) = await run_load(job, probe, workdir / "clients.log")
        after = await asyncio.to_thread(carried, metrics_port)
        commits, calls = after[0] - before[0], after[1] - before[1]
        return {"rps": round(float(result["rps"]), 1), "p50_ms": result["p50_ms"],
                "errors": result["error_count"], "server_cpu": result["server_cpu"],
                "calls_per_commit": round(calls / commits, 2) if commits else None}
    finally:
        process.terminate()
        await process.wait()


async def measure(*, duration: float, rounds: int) -> dict[str, Any]:
    tokens = make_tokens()
    name = f"crm_grouping_{uuid.uuid4().hex[:8]}"
    url = create_databases([name])[name]
    turns: dict[str, dict[str, list[dict[str, Any]]]] = {
        scenario: {setting: [] for setting in SETTINGS} for scenario in SCENARIOS}
    try:
        with tempfile.TemporaryDirectory(prefix="crm-grouping-") as tmp:
            workdir = Path(tmp)
            echo = await start_echo(workdir)
            try:
                for _ in range(rounds):
                    for scenario in SCENARIOS:
                        for setting in SETTINGS:
                            turns[scenario][setting].append(await turn(
                                url, name, setting, scenario, tokens=tokens,
                                echo=echo.target, workdir=workdir, duration=duration))
            finally:
                await echo.stop()
    finally:
        drop_databases([name])
    rows = {}
    for scenario, by_setting in turns.items():
        best = {setting: max(found, key=lambda t: t["rps"])
                for setting, found in by_setting.items()}
        rows[scenario] = {"turns": by_setting, "best": best,
                          "on_vs_off": round(best["on"]["rps"] / best["off"]["rps"], 2)}
    return {"concurrency": CONCURRENCY, "settings": SETTINGS, "scenarios": rows}


def table(row: dict[str, Any]) -> str:
    lines = [f"Group commit on (CRM_GROUP_COMMIT={SETTINGS['on']}) vs off (0), one leads "
             f"process, gRPC c={row['concurrency']} (best of rounds)"]
    for scenario, found in row["scenarios"].items():
        for setting in SETTINGS:
            best = found["best"][setting]
            rounds = ", ".join(f"{t['rps']:.0f}" for t in found["turns"][setting])
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(best["server_cpu"].items()))
            per_commit = best["calls_per_commit"]
            carried = "    1" if per_commit is None else f"{per_commit:5.2f}"
            lines.append(f"  {scenario:<17} {setting:<3} {best['rps']:7.0f} req/s  p50 "
                         f"{best['p50_ms'] or 0:6.2f} ms  calls/commit {carried}  "
                         f"CPU {cpu}   rounds: {rounds}")
        lines.append(f"  {scenario:<17} on / off: {found['on_vs_off']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    stand_alone(__doc__, measure, table, duration=(float, 3.0), rounds=(int, 2))


if __name__ == "__main__":
    main()
