"""One bench run: the echo baseline, then per backend a fresh stack, its calls
over gRPC and HTTP, and its realtime feeds."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import append, grouping, realtime, replicas, report
from tests.bench.load import Tally
from tests.bench.procs import ClientFailed, CpuProbe, run_load
from tests.bench.scenarios import SCENARIOS
from tests.bench.servers import (
    Server,
    Stack,
    admin_url,
    make_tokens,
    postgres_version,
    raise_fd_limit,
    stack,
    start_echo,
)

# The realtime measurements, selectable with --only like the calls; and the
# append path under pgbench, two leads processes against one, and group commit on
# against off (PostgreSQL only). (`--only Idle` takes both idle rows; `[I]dle` the
# gateway's alone.)
SUBSCRIBE, SSE, IDLE, APPEND, REPLICAS = "Subscribe", "SSE", "Idle", "Append", "Replicas"
GROUPING = "Grouping"
IDLE_SUBSCRIBE = "IdleSubscribe"


@dataclass
class Options:
    backends: list[str] = field(default_factory=lambda: ["postgresql", "sqlite"])
    concurrencies: list[int] = field(default_factory=lambda: [1, 32])
    paths: list[str] = field(default_factory=lambda: ["grpc", "http"])
    only: list[str] = field(default_factory=list)
    warmup: float = 0.5
    duration: float = 3.0
    rounds: int = 2
    # The echo baseline's turn in each row, as a share of the row's measured time.
    echo_share: float = 0.2
    streams: list[int] = field(default_factory=lambda: [1, 100, 1000])
    sse_streams: list[int] = field(default_factory=lambda: [1, 100, 1000])
    # Idle SSE browsers held by one gateway process (RSS, files, CPU).
    idle_browsers: list[int] = field(default_factory=lambda: [10000])
    # Idle Subscribe streams held by one leads process (RSS, files, CPU).
    idle_streams: list[int] = field(default_factory=lambda: [10000])
    events: int = 20
    channels: int = 1
    output_dir: Path = Path("bench/results")
    # Where the servers' logs and SQLite files go; None: a temporary directory.
    workdir: Path | None = None

    def selected(self, name: str) -> bool:
        if not self.only:
            return True
        for pattern in self.only:
            wildcard = any(c in pattern for c in "*?[")
            if fnmatch.fnmatch(name.lower(), pattern.lower() if wildcard
                               else f"*{pattern.lower()}*"):
                return True
        return False


STARTED = time.monotonic()


def progress(text: str) -> None:
    """A line on stderr, with the time since the run started."""
    elapsed = time.monotonic() - STARTED
    print(f"[{elapsed // 60:02.0f}:{elapsed % 60:04.1f}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Where:
    """The backend being measured: its name, every target, and the CPU probe."""

    backend: str
    targets: dict[str, str]
    probe: CpuProbe
    # Its PostgreSQL databases, analyzed after each job makes its data.
    databases: list[str] = field(default_factory=list)


@dataclass
class Run:
    options: Options
    workdir: Path
    echo: Server
    tokens: dict[str, str] = field(default_factory=make_tokens)
    calls: list[dict[str, Any]] = field(default_factory=list)
    feeds: list[dict[str, Any]] = field(default_factory=list)
    idles: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    broken: list[str] = field(default_factory=list)
    # The interleaved echo turns of the current backend, by concurrency.
    echoes: dict[int, tuple[Tally, dict[str, float]]] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.tokens["bench"]

    def _paths(self, scenario: str) -> list[str]:
        return [path for path in self.options.paths if path in SCENARIOS[scenario].paths]

    async def load(self, where: Where, scenario: str, companions: list[str] | None = None
                   ) -> None:
        """Every selected path and concurrency of one scenario, in one client process;
        `companions` (references for it) take their turns in the same rounds."""
        kind = SCENARIOS[scenario]
        concurrencies = [c for c in self.options.concurrencies if c >= kind.min_concurrency]
        paths = self._paths(scenario)
        others = {name: found for name in companions or [] if (found := self._paths(name))}
        if not concurrencies or not paths:
            return
        job = {"kind": "load", "scenario": scenario, "paths": paths, "targets": where.targets,
               "token": self.token, "concurrencies": concurrencies,
               "warmup": self.options.warmup, "duration": self.options.duration,
               "rounds": self.options.rounds, "echo_share": self.options.echo_share,
               "channels": self.options.channels, "companions": others,
               "analyze": where.databases}

        def facts(name: str) -> dict[str, Any]:
            found = SCENARIOS[name]
            return {"scenario": name, "label": found.label or name, "backend": where.backend,
                    **({"reference_for": found.reference_for} if found.reference_for else {})}

        try:
            results = await run_load(job, where.probe, self.workdir / "clients.log")
        except (ClientFailed, TimeoutError) as error:
            self.failures += 1
            progress(f"  {scenario} on {where.backend}: FAILED {error}")
            self.calls.extend({**facts(name), "path": path, "failure": str(error)}
                              for name, found in {scenario: paths, **others}.items()
                              for path in found)
            return
        counted: set[int] = set()
        for result in results:
            self._baseline(result, counted)
            row = {**facts(result["scenario"]), **result}
            self.calls.append(row)
            errors = f", {result['error_count']} errors" if result["error_count"] else ""
            path = result["path"]
            progress(f"  {row['label']:<25} {where.backend:<10} {path:<4} "
                     f"c={result['concurrency']:<3} {result['rps']:8.0f} req/s  "
                     f"p50 {result['p50_ms'] or 0:7.2f} ms{errors}  "
                     f"client CPU {result['client_cpu']:.2f}")

    def _baseline(self, result: dict[str, Any], counted: set[int]) -> None:
        """Summarize the row's own echo turns, and add them (once per concurrency:
        the paths of a job share them) to the backend's echo rows."""
        raw, cpu = result.pop("echo", None), result.pop("echo_cpu", {})
        if raw is None:
            return
        concurrency = int(result["concurrency"])
        own = Tally(concurrency)
        own.merge(raw)
        result["echo"] = {**own.result(), "server_cpu": cpu}
        if concurrency in counted:
            return
        counted.add(concurrency)
        total, shares = self.echoes.setdefault(concurrency, (Tally(concurrency), {}))
        weight, before = own.wall, total.wall
        total.merge(raw)
        for name in {*cpu, *shares}:  # wall-weighted mean of the shares
            shares[name] = (shares.get(name, 0.0) * before + cpu.get(name, 0.0) * weight) / (
                total.wall or 1.0)

    def echo_rows(self, backend: str) -> list[dict[str, Any]]:
        """The echo baseline of a backend: every interleaved echo turn, merged."""
        rows = [{"scenario": "Echo", "label": "Echo (interleaved)", "backend": backend,
                 "path": "grpc", **tally.result(),
                 "server_cpu": {name: round(share, 3) for name, share in shares.items()}}
                for _, (tally, shares) in sorted(self.echoes.items())]
        self.echoes.clear()
        return rows

    async def feed(self, where: Where, via: str, streams: int, holders: dict[str, int],
                   leads: Server | None = None) -> None:
        facts = {"feed": via, "backend": where.backend, "streams": streams}
        try:
            row = await realtime.measure(
                via=via, streams=streams, events=self.options.events, targets=where.targets,
                token=self.token, holders=holders, probe=where.probe,
                log=self.workdir / "clients.log", leads=leads)
        except (ClientFailed, TimeoutError) as error:
            self.failures += 1
            progress(f"  realtime {via} x {streams} on {where.backend}: FAILED {error}")
            self.feeds.append({**facts, "failure": str(error)})
            return
        row["backend"] = where.backend
        self.feeds.append(row)
        progress(f"  realtime {via:<5} {where.backend:<10} {streams:>5} streams  p50 "
                 f"{row['p50_ms'] or 0:7.2f} ms  p99 {row['p99_ms'] or 0:7.2f} ms  "
                 f"delivered {row['delivered']}/{row['delivered'] + row['missed']}")

    async def baseline_feeds(self) -> None:
        sizes = sorted({*(self.options.streams if self.options.selected(SUBSCRIBE) else []),
                        *(self.options.sse_streams if self.options.selected(SSE) else [])})
        if not sizes:
            return
        progress("echo fan-out (realtime baseline)")
        where = Where("-", {"echo": self.echo.target}, CpuProbe({"echo": self.echo.pid}, []))
        for streams in sizes:
            await self.feed(where, "echo", streams, {"echo": self.echo.pid})

    def calls_on(self, backend: str) -> list[str]:
        """The selected calls that run on this backend (not the Echo scenario: its
        turns are in every call's rounds)."""
        return [name for name, kind in SCENARIOS.items()
                if name != "Echo" and backend in kind.backends and self.options.selected(name)]

    async def backend(self, backend: str) -> None:
        lean = any(SCENARIOS[name].on_lean for name in self.calls_on(backend))
        progress(f"{backend}: starting leads, bookings, messaging and the gateway"
                 + (", and the lean reference" if lean else ""))
        async with stack(backend, self.tokens, self.workdir / backend, lean=lean) as running:
            await self.on_stack(running)

    async def on_stack(self, running: Stack) -> None:
        options = self.options
        where = Where(
            running.backend,
            {**running.targets, "echo": self.echo.target,
             "gateway": running.servers["gateway"].url},
            CpuProbe({**running.pids(), "echo": self.echo.pid}, running.databases),
            [admin_url(name) for name in running.databases],
        )
        calls = self.calls_on(running.backend)
        # A call's gRPC and HTTP rows, its lean reference and its echo baseline take
        # turns in rounds, so that their ratios span as little drift of the machine
        # as possible.
        first = len(self.calls)
        for name in calls:
            if SCENARIOS[name].reference_for in calls:
                continue  # measured in the turns of the call it is the reference for
            await self.load(where, name,
                            [other for other in calls if SCENARIOS[other].reference_for == name])
        self.calls[first:first] = self.echo_rows(where.backend)
        pids = running.pids()
        leads = running.servers["leads"]
        # The gRPC and SSE rows of a size one after the other: their ratio spans little drift.
        sizes = sorted({*(options.streams if options.selected(SUBSCRIBE) else []),
                        *(options.sse_streams if options.selected(SSE) else [])})
        holders = {name: pids[name] for name in ("gateway", "leads", "bookings", "messaging")}
        for streams in sizes:
            if options.selected(SUBSCRIBE) and streams in options.streams:
                await self.feed(where, "grpc", streams, {"leads": pids["leads"]}, leads)
            if options.selected(SSE) and streams in options.sse_streams:
                await self.feed(where, "sse", streams, holders, leads)
        if options.selected(IDLE_SUBSCRIBE):
            for streams in options.idle_streams:
                await self.idle(where, running, "grpc", streams)
        if options.selected(IDLE):
            for browsers in options.idle_browsers:
                await self.idle(where, running, "sse", browsers)

    async def idle(self, where: Where, running: Stack, via: str, streams: int) -> None:
        """`streams` idle streams in one process: SSE browsers in the gateway, or
        Subscribe streams (`via` grpc) in leads."""
        holder = "gateway" if via == "sse" else "leads"
        facts = {"feed": via, "backend": where.backend, "streams": streams}
        try:
            row = await realtime.idle(
                via=via, streams=streams, targets=where.targets, token=self.token,
                holder=running.servers[holder], leads=running.servers["leads"],
                probe=where.probe, log=self.workdir / "clients.log")
        except (ClientFailed, TimeoutError) as error:
            self.failures += 1
            progress(f"  idle {via} x {streams} on {where.backend}: FAILED {error}")
            self.idles.append({**facts, "failure": str(error)})
            return
        row["backend"] = where.backend
        self.idles.append(row)
        progress(f"  idle {via:<5} {where.backend:<10} {streams:>5} streams  "
                 f"{row['kib_per_stream']:.1f} KiB each in {holder}, {row['fds']} fds, "
                 f"upstream {row['upstream_streams']}, "
                 f"{holder} CPU {row['server_cpu'].get(holder, 0)}")


async def postgres_extras(options: Options, backends: list[str], *, after: bool = False
                          ) -> dict[str, Any]:
    """PostgreSQL only: the append path under pgbench (before the calls); two leads
    processes against one, and group commit on against off (after them)."""
    found: dict[str, Any] = {}
    if "postgresql" not in backends:
        return found
    if not after and options.selected(APPEND):
        progress("the append path under pgbench: log, no log, head row")
        try:
            found["append"] = await asyncio.to_thread(
                append.measure, clients=32, duration=max(options.duration, 3.0),
                rounds=options.rounds)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            progress(f"  append path: FAILED {error}")
    if after and options.selected(REPLICAS):
        progress("one leads process against two (CreateLead, UpdateLeadStatus c=32)")
        try:
            found["replicas"] = await replicas.measure(
                duration=options.duration, rounds=options.rounds, channels=8)
        except (RuntimeError, OSError, TimeoutError, ClientFailed) as error:
            progress(f"  replicas: FAILED {error}")
    if after and options.selected(GROUPING):
        progress("group commit on against off (CreateLead, UpdateLeadStatus c=32)")
        try:
            found["grouping"] = await grouping.measure(duration=options.duration,
                                                       rounds=options.rounds)
        except (RuntimeError, OSError, TimeoutError, ClientFailed) as error:
            progress(f"  grouping: FAILED {error}")
    return found


async def run(options: Options) -> int:
    facts = report.machine()
    facts["open_files_limit"] = raise_fd_limit()
    backends = list(options.backends)
    if "postgresql" in backends and postgres_version() is None:
        progress("PostgreSQL does not answer: skipping the postgresql backend")
        backends.remove("postgresql")
    with tempfile.TemporaryDirectory(prefix="crm-bench-") as tmp:
        workdir = Path(tmp) if options.workdir is None else options.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        progress(f"servers' and clients' logs: {workdir}")
        extras = await postgres_extras(options, backends)
        echo = await start_echo(workdir)
        bench = Run(options, workdir, echo)
        try:
            await bench.baseline_feeds()
            for backend in backends:
                try:
                    await bench.backend(backend)
                except (OSError, RuntimeError) as error:  # a server would not start
                    bench.failures += 1
                    bench.broken.append(f"{backend}: {error}")
                    progress(f"{backend}: FAILED {error}")
        finally:
            await echo.stop()
        extras.update(await postgres_extras(options, backends, after=True))
    report.add_ratios(bench.calls)
    report.add_realtime_ratios(bench.feeds)
    facts["load_average_at_end"] = list(os.getloadavg())
    facts["run_seconds"] = round(time.monotonic() - STARTED, 1)
    document = {"machine": facts, "options": {**asdict(options),
                                              "output_dir": str(options.output_dir),
                                              "workdir": str(options.workdir or "")},
                "calls": bench.calls, "realtime": bench.feeds, "idle": bench.idles,
                "failures": bench.broken, **extras,
                "legend": {"calls": report.LEGEND, "realtime": report.REALTIME_LEGEND}}
    print(report.header(facts, asdict(options)))
    if bench.calls:
        print()
        print(report.calls_table(bench.calls))
        print(report.LEGEND)
    if bench.feeds:
        print()
        print(report.realtime_table(bench.feeds))
        print(report.REALTIME_LEGEND)
        for note in report.realtime_notes(bench.feeds):
            print(f"note: {note}")
    if bench.idles:
        print()
        print(report.idle_table(bench.idles))
        print(report.IDLE_LEGEND)
    for name, table in (("append", append.table), ("replicas", replicas.table),
                        ("grouping", grouping.table)):
        if extras.get(name) is not None:
            print()
            print(table(extras[name]))
    for broken in bench.broken:
        print(f"FAILED {broken}")
    path = report.write_json(options.output_dir, document)
    print(f"\nthe run took {facts['run_seconds']:.0f} s; results: {path}")
    return 1 if bench.failures else 0
