"""What a run found: machine facts, ratios, the printed tables and the JSON file."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.bench.servers import ROOT, postgres_version
from tests.bench.stats import ratio

MEMORY_MIN_STREAMS = 100
SHORT = {"leads": "L", "bookings": "B", "messaging": "M", "gateway": "G", "echo": "E",
         "lean": "R", "postgres": "P"}


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgres_version(),
        "grpcio": version("grpcio"),
        "aiohttp": version("aiohttp"),
        "sqlalchemy": version("sqlalchemy"),
        "git_commit": commit,
        "load_average_at_start": list(os.getloadavg()),
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """xecho: against the echo baseline of the same backend and concurrency;
    xgrpc (HTTP rows): against the same call straight over gRPC;
    xlean (gRPC rows of a call with a lean reference): against that reference."""
    def find(scenario: str, backend: str, path: str, concurrency: int) -> list[dict[str, Any]]:
        return [row for row in rows if "rps" in row and (
            row["scenario"], row["backend"], row["path"], row["concurrency"]) == (
                scenario, backend, path, concurrency)]

    def mean(found: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not found:
            return None
        return {key: sum(row[key] for row in found) / len(found)
                if all(row[key] is not None for row in found) else None
                for key in ("rps", "p50_ms", "p99_ms")}

    references = {(row["reference_for"], row["backend"], row["concurrency"]): row
                  for row in rows if "rps" in row and row.get("reference_for")}
    for row in rows:
        if "rps" not in row:
            continue
        lean = references.get((row["scenario"], row["backend"], row["concurrency"]))
        if lean is not None and row["path"] == "grpc":
            row["x_lean"] = {"rps": ratio(row["rps"], lean["rps"]),
                             "p50": ratio(row["p50_ms"], lean["p50_ms"])}
        # A row's own interleaved echo turns; the backend's echo rows for the rest.
        base = row.get("echo") or mean(find("Echo", row["backend"], "grpc", row["concurrency"]))
        row["x_echo"] = {
            "rps": ratio(row["rps"], base["rps"]) if base else None,
            "p50": ratio(row["p50_ms"], base["p50_ms"]) if base else None,
            "p99": ratio(row["p99_ms"], base["p99_ms"]) if base else None,
        }
        if row["path"] == "http":
            direct = mean(find(row["scenario"], row["backend"], "grpc", row["concurrency"]))
            row["x_grpc"] = {
                "rps": ratio(row["rps"], direct["rps"]) if direct else None,
                "p50": ratio(row["p50_ms"], direct["p50_ms"]) if direct else None,
            }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cpu(shares: dict[str, float]) -> str:
    busy = sorted(((share, name) for name, share in shares.items() if share >= 0.05),
                  reverse=True)
    return " ".join(f"{SHORT.get(name, name)}{share:.2f}" for share, name in busy) or "-"


def _table(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return " | ".join(c.rjust(w) if i in right else c.ljust(w)
                          for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join(line.rstrip() for line in [fmt(header), rule, *map(fmt, lines)])


def calls_table(rows: list[dict[str, Any]]) -> str:
    header = ["scenario", "backend", "path", "conc", "req/s", "p50 ms", "p99 ms", "errors",
              "xecho", "xgrpc", "xlean", "client CPU", "server CPU"]
    lines = []
    for row in rows:
        if "rps" not in row:
            lines.append([row["label"], row["backend"], row["path"],
                          str(row.get("concurrency", "-")), "FAILED", "", "", "", "", "", "", "",
                          str(row.get("failure", ""))[:60]])
            continue
        errors = str(row["error_count"])
        if row["error_count"]:
            top = max(row["errors"].items(), key=lambda item: item[1])[0]
            errors += f" ({top})"
        x_grpc = row.get("x_grpc", {}).get("rps")
        x_lean = row.get("x_lean", {}).get("rps")
        rps = f"{row['rps']:.0f}" + ("*" if row.get("exhausted") else "")
        lines.append([
            row["label"], row["backend"], row["path"], str(row["concurrency"]), rps,
            _num(row["p50_ms"], 2), _num(row["p99_ms"], 2), errors,
            _num(row["x_echo"]["rps"], 2), _num(x_grpc, 2), _num(x_lean, 2),
            f"{row['client_cpu']:.2f}", _cpu(row.get("server_cpu", {})),
        ])
    return _table(header, lines, right={3, 4, 5, 6, 8, 9, 10, 11})


def realtime_table(rows: list[dict[str, Any]]) -> str:
    header = ["feed", "backend", "streams", "procs", "open s", "events", "gap ms", "delivered",
              "p50 ms", "p99 ms", "max ms", "xecho p50", "xgrpc p99", "KiB/stream", "upstream",
              "sub CPU", "server CPU"]
    lines = []
    for row in rows:
        if "p50_ms" not in row:
            lines.append([row["feed"], row["backend"], str(row["streams"]), "", "FAILED", "", "",
                          "", "", "", "", "", "", "", "", "",
                          str(row.get("failure", ""))[:60]])
            continue
        per_stream = row["rss_kib_per_stream"]
        holder = "gateway" if row["feed"] == "sse" else next(iter(per_stream))
        # A page-granular RSS says nothing about one stream.
        memory = per_stream.get(holder) if row["streams"] >= MEMORY_MIN_STREAMS else None
        upstream = row.get("upstream_streams")
        lines.append([
            row["feed"], row["backend"], str(row["streams"]), str(row.get("processes", 1)),
            f"{row['seconds_to_open']:.1f}",
            str(row["events"]), f"{row['interval_s'] * 1000:.0f}",
            f"{row['delivered']}/{row['delivered'] + row['missed']}",
            _num(row["p50_ms"], 2), _num(row["p99_ms"], 2), _num(row["max_ms"], 1),
            _num(row.get("x_echo_p50"), 1), _num(row.get("x_grpc_p99"), 2), _num(memory, 1),
            "-" if upstream is None else f"{upstream:.0f}",
            f"{row['client_cpu']:.2f}", _cpu(row.get("server_cpu", {})),
        ])
    return _table(header, lines, right=set(range(2, 16)))


def idle_table(rows: list[dict[str, Any]]) -> str:
    header = ["idle", "backend", "streams", "procs", "open s", "holder", "RSS MiB",
              "KiB/stream", "fds", "held", "upstream", "server CPU (idle)"]
    lines = []
    for row in rows:
        holder = "gateway" if row["feed"] == "sse" else "leads"
        if "kib_per_stream" not in row:
            lines.append([row["feed"], row["backend"], str(row["streams"]), "", "FAILED",
                          holder, "", "", "", "", "", str(row.get("failure", ""))[:60]])
            continue
        upstream, held = row.get("upstream_streams"), row.get("held_streams")
        lines.append([
            row["feed"], row["backend"], str(row["streams"]), str(row["processes"]),
            f"{row['seconds_to_open']:.1f}", holder,
            f"{row['rss_kib_before'] / 1024:.0f} → {row['rss_kib_after'] / 1024:.0f}",
            f"{row['kib_per_stream']:.1f}",
            f"{row['fds_before']} → {row['fds']}",
            "-" if held is None else f"{held:.0f}",
            "-" if upstream is None else f"{upstream:.0f}", _cpu(row.get("server_cpu", {})),
        ])
    return _table(header, lines, right=set(range(2, 11)) - {5})


def realtime_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the realtime table cannot show: streams that lost events, SSE clients
    that went live without some service."""
    notes = []
    for row in rows:
        where = f"{row['feed']} {row['backend']} x {row['streams']}"
        short = row.get("short_streams") or {}
        if short.get("count"):
            notes.append(f"{where}: {short['count']} streams missed events "
                         f"(first: stream, [missed events by order]: {short['first'][:3]})")
        if row.get("degraded_bookmarks"):
            notes.append(
                f"{where}: {row['degraded_bookmarks']} of {row['streams']} SSE clients were "
                "first told the stream was live without some service (the gateway's "
                "LIVE_WITHOUT_AFTER); they were counted open once their event id held a "
                "leads cursor")
    return notes


def add_realtime_ratios(rows: list[dict[str, Any]]) -> None:
    echoes = {row["streams"]: row for row in rows if row["feed"] == "echo" and "p50_ms" in row}
    direct = {(row["backend"], row["streams"]): row for row in rows
              if row["feed"] == "grpc" and "p99_ms" in row}
    for row in rows:
        grpc_row = direct.get((row["backend"], row["streams"]))
        if row["feed"] == "sse" and "p99_ms" in row and grpc_row is not None:
            row["x_grpc_p99"] = ratio(row["p99_ms"], grpc_row["p99_ms"])
        base = echoes.get(row["streams"])
        if "p50_ms" in row and base is not None:
            row["x_echo_p50"] = ratio(row["p50_ms"], base["p50_ms"])
            row["x_echo_p99"] = ratio(row["p99_ms"], base["p99_ms"])


def header(facts: dict[str, Any], options: dict[str, Any]) -> str:
    return (
        f"Closed Loop bench — {facts['date']} — {facts['nproc']} x {facts['cpu_model']}, "
        f"Linux {facts['kernel']}, Python {facts['python']}, PostgreSQL "
        f"{facts['postgresql'] or 'absent'}, grpcio {facts['grpcio']}, git {facts['git_commit']}\n"
        f"load average at start {' '.join(f'{x:.2f}' for x in facts['load_average_at_start'])}; "
        f"per row: {options['warmup']} s warm-up, {options['duration']} s measured in "
        f"{options['rounds']} round(s) in which the gRPC and HTTP paths of a call and the "
        f"echo baseline ({options['echo_share']:.0%} of the time) take turns"
    )


LEGEND = (
    "req/s: successful calls completed in the window (* = prepared data ran out: shorter "
    "window). xecho: req/s ÷ the bare echo server's at the same concurrency, measured in "
    "turns with the row (Echo rows: every such turn of the backend, merged). "
    "xgrpc: HTTP req/s ÷ the same call straight over gRPC. xlean: req/s ÷ that of the "
    "call's lean reference (the \"(lean raw SQL)\" row: tests.bench.lean, the same write by "
    "hand in raw psycopg on a bare grpc.aio server and a database of its own), measured in "
    "turns with the row. CPU: process CPU time ÷ wall time (1.00 = one core); server CPU: "
    "L leads, B bookings, M messaging, G gateway, E echo, R the lean reference, P the "
    "PostgreSQL backends of the run."
)
REALTIME_LEGEND = (
    "latency: t_seen (subscriber received the event) - t_commit (the writer's CreateLead "
    "returned), CLOCK_MONOTONIC, every stream x every event. open: seconds until every "
    "stream was live; gap: time between two "
    "changes. xecho p50: ÷ the echo server's fan-out at the same stream count. KiB/stream: "
    "RSS growth of the holding process (leads; the gateway for sse, whose browsers each "
    "follow 3 services over its shared upstream streams) with the streams idle, ÷ streams "
    "(from 100 streams up). sub CPU: "
    "the subscriber processes (procs: how many; each holds at most 250 streams); server "
    "CPU as above, from the first change to the last delivery. xgrpc p99: an SSE row's "
    "p99 ÷ that of the direct gRPC subscribers of the same size and backend, measured just "
    "before it. upstream: Subscribe streams the leads service held while the streams were "
    "open (its crm_subscribers): for SSE, the gateway's, however many browsers."
)
IDLE_LEGEND = (
    "idle: streams held open by one process (holder) with no changes made, heartbeats "
    "flowing (every 5 s in the bench): sse, browsers on the gateway's /v1/events; grpc, "
    "Subscribe streams straight to leads. RSS: the holder's before the streams → with them "
    "open; KiB/stream: its growth ÷ streams; fds: the holder's open files before → with "
    "them open; held: the streams the holder counts (crm_gateway_sse_streams, "
    "crm_subscribers); upstream: the leads service's crm_subscribers; server CPU over 12 s "
    "of idling."
)


def write_json(directory: Path, document: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def stand_alone(doc: str | None, measure: Callable[..., Any], table: Callable[[Any], str],
                **options: tuple[type, Any]) -> None:
    """`python -m tests.bench.<row>`: one measurement row run alone, its options
    (name: (type, default)) from the command line; the table to stderr, the JSON
    to stdout."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    for name, (kind, default) in options.items():
        parser.add_argument(f"--{name}", type=kind, default=default)
    found = measure(**vars(parser.parse_args()))
    row = asyncio.run(found) if inspect.isawaitable(found) else found
    print(table(row), file=sys.stderr)
    print(json.dumps(row))
