"""Realtime, client side: many subscribers in one process, and a writer in another.

Subscribers (`via`: grpc = leads' Subscribe, sse = the gateway's /v1/events,
echo = the echo server's stream) open `streams` streams and report `ready` once
every one is live: its first bookmark arrived (an SSE client: its event id holds
a leads cursor). Each records `t_seen` for each `lead.created` event (echo:
each payload) by lead id, on receipt.

The writer makes `events` changes one after another, `interval` apart, and
records `t_commit` for each: the moment its CreateLead call returned (the
commit happened before the answer). Latency is `t_seen - t_commit`, both read
from CLOCK_MONOTONIC, one clock for every process of the host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
from crm.leads.v1 import leads_pb2

from tests.bench import echo
from tests.bench.kit import DEADLINE, PHONE, Kit, new_key, now
from tests.bench.load import cpu_time

STREAMS_PER_CHANNEL = 200
# SSE connections (and Subscribe streams) a subscriber process opens at once.
CONNECTING = 64
MAX_CHANNELS = 8


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _cursors(event_id: bytes) -> dict[str, Any]:
    """The services' cursors in a composite SSE event id (base64url of a JSON object)."""
    try:
        found = json.loads(base64.urlsafe_b64decode(event_id + b"=" * (-len(event_id) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return found if isinstance(found, dict) else {}


class Subscribers:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.streams = int(job["streams"])
        channels = min(MAX_CHANNELS, max(1, math.ceil(self.streams / STREAMS_PER_CHANNEL)))
        self.kit = Kit(job["targets"], job["token"], channels=channels)
        self.seen: defaultdict[str, list[float]] = defaultdict(list)
        # What each stream saw, to tell a slow stream from one that lost events.
        self.by_stream: list[set[str]] = [set() for _ in range(self.streams)]
        self.live = 0
        self.all_live = asyncio.Event()
        self.arrived = asyncio.Event()
        self.failures: list[str] = []
        # SSE bookmarks that went live without some service (the gateway's timeout).
        self.degraded = 0
        self.connecting = asyncio.Semaphore(CONNECTING)

    def _went_live(self) -> None:
        self.live += 1
        if self.live == self.streams:
            self.all_live.set()

    def _saw(self, stream: int, lead_id: str) -> None:
        self.seen[lead_id].append(now())
        self.by_stream[stream].add(lead_id)
        self.arrived.set()

    async def _delivered(self, ids: list[str], wanted: int) -> None:
        while sum(len(self.seen.get(i, ())) for i in ids) < wanted:
            self.arrived.clear()
            await self.arrived.wait()

    def _short(self, ids: list[str]) -> dict[str, Any]:
        """How many streams missed some of `ids`; for the first few, which ones (by
        their place in `ids`, the writer's order)."""
        short = [(i, [n for n, lead_id in enumerate(ids) if lead_id not in seen])
                 for i, seen in enumerate(self.by_stream) if not seen.issuperset(ids)]
        return {"count": len(short), "first": short[:10]}

    def _failed(self, why: str) -> None:
        self.failures.append(why)
        self.all_live.set()  # nobody waits for a stream that failed

    async def grpc_stream(self, i: int) -> None:
        """One Subscribe stream. At most CONNECTING of a process's are opening at once
        (until live): clients coming back at once, not ten thousand calls queued
        in the server's pending list until grpc cancels them."""
        stub = self.kit.leads[i % len(self.kit.leads)]
        live = False
        await self.connecting.acquire()
        try:
            async for event in stub.Subscribe(leads_pb2.SubscribeRequest(),
                                              metadata=self.kit.metadata):
                if event.type == "bookmark":
                    if not live:
                        live = True
                        self.connecting.release()
                        self._went_live()
                elif event.type == "lead.created":
                    self._saw(i, event.lead_id)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED or not live:
                self._failed(f"{error.code().name}: {error.details()}")
        finally:
            if not live:
                self.connecting.release()

    async def echo_stream(self, i: int) -> None:
        channels = self.kit.channels("echo")
        subscribe = channels[i % len(channels)].unary_stream(echo.SUBSCRIBE)
        live = False
        try:
            async for payload in subscribe(b""):
                if not live:
                    live = True
                    self._went_live()
                else:
                    self._saw(i, payload.decode())
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self._failed(f"{error.code().name}: {error.details()}")

    async def sse_stream(self, i: int, session: aiohttp.ClientSession) -> None:
        """One SSE client. It is live for leads' events once its event id (the
        composite cursor) holds a leads cursor: a gateway whose upstreams are slow
        to answer goes live without them (a bookmark naming them `unavailable`),
        and their events join later, from the head."""
        live = False
        kind = ""
        data = last_id = b""
        try:
            # Ten thousand connects at once would overflow the gateway's listen backlog.
            async with self.connecting:
                response = await session.get("/v1/events", headers=self.kit.headers)
            async with response:
                if response.status != 200:
                    self._failed(f"HTTP {response.status}")
                    return
                async for raw in response.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"event:"):
                        kind = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        data = line[5:].strip()
                    elif line.startswith(b"id:"):
                        last_id = line[3:].strip()
                    elif not line:
                        if kind == "bookmark" and not live:
                            if b"unavailable" in data:
                                self.degraded += 1
                            if "leads" in _cursors(last_id):
                                live = True
                                self._went_live()
                        elif kind == "lead.created":
                            self._saw(i, json.loads(data)["leadId"])
                        kind, data = "", b""
        except aiohttp.ClientError as error:
            self._failed(f"{type(error).__name__}: {error}")

    async def run(self) -> None:
        via = self.job["via"]
        began = time.monotonic()
        session: aiohttp.ClientSession | None = None
        if via == "sse":
            session = aiohttp.ClientSession(
                base_url=self.job["targets"]["gateway"],
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
            opened = [self.sse_stream(i, session) for i in range(self.streams)]
        elif via == "echo":
            opened = [self.echo_stream(i) for i in range(self.streams)]
        else:
            opened = [self.grpc_stream(i) for i in range(self.streams)]
        tasks = [asyncio.create_task(stream) for stream in opened]
        try:
            await asyncio.wait_for(self.all_live.wait(), 120)
            if self.failures:
                emit({"error": f"{len(self.failures)} streams failed: {self.failures[:3]}"})
                return
            emit({"ready": {"streams": self.live, "seconds": time.monotonic() - began}})
            await self.serve_commands()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if session is not None:
                await session.close()
            await self.kit.close()

    async def serve_commands(self) -> None:
        """`go` starts the CPU clock; `{"stop": [ids]}` waits for those ids on every
        stream (10 s at most) and reports what was seen."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        cpu0 = wall0 = 0.0
        while line := await reader.readline():
            command = json.loads(line)
            if command == "go":
                cpu0, wall0 = cpu_time(), time.monotonic()
                continue
            ids = list(command["stop"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delivered(ids, self.streams * len(ids)),
                                       float(command.get("timeout", 10)))
            wall = time.monotonic() - wall0
            emit({"result": {
                "seen": {i: self.seen.get(i, []) for i in ids},
                "short_streams": self._short(ids),
                "degraded_bookmarks": self.degraded,
                "client_cpu": (cpu_time() - cpu0) / wall if wall > 0 else 0.0,
                "failures": self.failures[:5],
            }})
            return


async def write(job: dict[str, Any]) -> None:
    """Make `events` changes `interval` apart; report each one's t_commit by id."""
    kit = Kit(job["targets"], job["token"])
    commits: dict[str, float] = {}
    try:
        make: Callable[[], Awaitable[str]]
        if job["via"] == "echo":
            publish = kit.channels("echo")[0].unary_unary(echo.PUBLISH)

            async def make() -> str:
                payload = new_key()
                await publish(payload.encode(), timeout=DEADLINE)
                return payload
        else:
            async def make() -> str:
                lead = await kit.leads[0].CreateLead(
                    leads_pb2.CreateLeadRequest(name="Bench Realtime Lead", phone=PHONE),
                    metadata=kit.keyed(new_key()), timeout=DEADLINE)
                return str(lead.lead_id)

        await make()  # the connection is up before the first measured change
        await asyncio.sleep(job["interval"])
        for _ in range(int(job["events"])):
            made = await make()
            commits[made] = now()
            await asyncio.sleep(job["interval"])
    finally:
        await kit.close()
    emit({"result": {"commits": commits}})
