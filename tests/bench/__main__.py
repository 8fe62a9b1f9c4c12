"""`python -m tests.bench` (`make bench`): see tests/bench/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.bench.run import Options, run
from tests.bench.servers import ROOT

T = TypeVar("T")


def _list(cast: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse(raw: str) -> list[T]:
        values = [cast(part.strip()) for part in raw.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmark the services and the gateway against a bare gRPC echo server.")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 0.3 s warm-up, 1 s per row in one round, fewer "
                             "streams and events")
    parser.add_argument("--duration", type=float, help="seconds measured per row (3; quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per row (0.5; quick 0.3)")
    parser.add_argument("--rounds", type=int,
                        help="rounds a row's time is split in, its paths taking turns (2; "
                             "quick 1)")
    parser.add_argument("--only", type=_list(str), default=[],
                        help="scenarios to run, comma-separated substrings or globs: CreateLead, "
                             "LeanCreateLead, UpdateLeadStatus, LeanUpdateLeadStatus, "
                             "ConfirmAppointment, SendSms, Replay, ReplayOwnKey, GetLead, "
                             "Subscribe, SSE, Idle, IdleSubscribe, Append, Replicas, Grouping "
                             "(default: all; CreateLead takes LeanCreateLead too, '[C]reateLead' "
                             "only the service's; Subscribe and Idle take IdleSubscribe too)")
    parser.add_argument("--backends", type=_list(str), default=["postgresql", "sqlite"],
                        help="postgresql,sqlite (default both)")
    parser.add_argument("--paths", type=_list(str), default=["grpc", "http"],
                        help="grpc,http (default both)")
    parser.add_argument("--concurrency", type=_list(int), default=[1, 32],
                        help="calls in flight per row (default 1,32)")
    parser.add_argument("--echo-share", type=float, default=0.2,
                        help="the echo baseline's turn in each row, as a share of its measured "
                             "time (0.2; 0: none, and xecho from nothing)")
    parser.add_argument("--streams", type=_list(int),
                        help="Subscribe streams (default 1,100,1000; quick 1,100)")
    parser.add_argument("--sse-streams", type=_list(int),
                        help="SSE clients (default 1,100,1000; quick 1,100)")
    parser.add_argument("--idle-browsers", type=_list(int),
                        help="idle SSE browsers held by one gateway (default 10000; quick 1000)")
    parser.add_argument("--idle-streams", type=_list(int),
                        help="idle Subscribe streams held by one leads process (default 10000; "
                             "quick 1000)")
    parser.add_argument("--events", type=int, help="changes per realtime row (20; quick 10)")
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC channels (connections) per client process (default 1)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench" / "results",
                        help="where the JSON goes (default bench/results)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the servers' logs and SQLite files here (default: a "
                             "temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    for backend in args.backends:
        if backend not in {"postgresql", "sqlite"}:
            parser.error(f"--backends: unknown backend {backend!r}")
    for path in args.paths:
        if path not in {"grpc", "http"}:
            parser.error(f"--paths: unknown path {path!r}")
    quick = args.quick
    return Options(
        backends=args.backends,
        concurrencies=args.concurrency,
        paths=args.paths,
        only=args.only,
        warmup=args.warmup if args.warmup is not None else (0.3 if quick else 0.5),
        duration=args.duration if args.duration is not None else (1.0 if quick else 3.0),
        rounds=args.rounds or (1 if quick else 2),
        echo_share=args.echo_share,
        streams=args.streams or ([1, 100] if quick else [1, 100, 1000]),
        sse_streams=args.sse_streams or ([1, 100] if quick else [1, 100, 1000]),
        idle_browsers=args.idle_browsers or ([1000] if quick else [10000]),
        idle_streams=args.idle_streams or ([1000] if quick else [10000]),
        events=args.events or (10 if quick else 20),
        channels=args.channels,
        output_dir=args.output_dir,
        workdir=args.workdir,
    )


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
