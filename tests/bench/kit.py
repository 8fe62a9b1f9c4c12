"""What a client process calls the servers with: channels, stubs, an HTTP session.

Channels are plain `grpc.aio` channels with the token sent as metadata on each
call: no client interceptors and no retries, so that the client costs the same
in front of the echo server as in front of a service, and a refusal is counted
as an error instead of being retried away. Each channel has its own connection
(`grpc.use_local_subchannel_pool`); worker `i` uses channel `i % channels`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import grpc
from crm.bookings.v1 import bookings_pb2, bookings_pb2_grpc
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.bench import echo, lean

DEADLINE = 10.0
PHONE = "+1 415 555 0123"
Metadata = tuple[tuple[str, str], ...]


class Failed(Exception):
    """A call was refused or failed; `code` names how (`ABORTED/IDEMPOTENCY_KEY_IN_USE`)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Exhausted(Exception):
    """The scenario's prepared data is used up: the measurement ends here."""


def now() -> float:
    """The clock both sides of a realtime measurement read: CLOCK_MONOTONIC is one
    clock for every process on a Linux host (per boot), unlike perf_counter's origin."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def describe(error: grpc.aio.AioRpcError) -> str:
    """`CODE/REASON` of a refusal, the reason from its google.rpc.ErrorInfo."""
    code: str = error.code().name
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return f"{code}/{info.reason}"
    return code


def new_key() -> str:
    return uuid.uuid4().hex


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _as_get_lead(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A bytes-in, bytes-out method called with GetLead's request, serialized as
    GetLead's is (the echo server, the floor)."""
    return channel.unary_unary(method,
                               request_serializer=leads_pb2.GetLeadRequest.SerializeToString,
                               response_deserializer=leads_pb2.GetLeadRequest.FromString)


class Kit:
    """Channels to every target of a job, and an HTTP session to the gateway."""

    def __init__(self, targets: Mapping[str, str], token: str, channels: int = 1,
                 http_connections: int = 0) -> None:
        self.targets = dict(targets)
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),)
        self.headers = {"Authorization": f"Bearer {token}"}
        options = [("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)]
        self._channels = {
            name: [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
            for name, target in self.targets.items() if name != "gateway"
        }
        self.leads = [leads_pb2_grpc.LeadsServiceStub(c) for c in self._channels.get("leads", [])]
        # The lean reference (tests.bench.lean) answers the leads writes.
        self.lean = [leads_pb2_grpc.LeadsServiceStub(c) for c in self._channels.get("lean", [])]
        # And the floor beside it: one `SELECT 1` a call (tests.bench.lean.Floor).
        self.floor = [_as_get_lead(c, lean.ROUND_TRIP) for c in self._channels.get("lean", [])]
        self.bookings = [bookings_pb2_grpc.BookingsServiceStub(c)
                         for c in self._channels.get("bookings", [])]
        self.messaging = [messaging_pb2_grpc.MessagingServiceStub(c)
                          for c in self._channels.get("messaging", [])]
        # The echo call is made like GetLead's: the same request, serialized the same way.
        self.echo = [_as_get_lead(c, echo.ECHO) for c in self._channels.get("echo", [])]
        self._http_connections = http_connections
        self._session: aiohttp.ClientSession | None = None

    def channels(self, name: str) -> Sequence[grpc.aio.Channel]:
        return self._channels[name]

    def keyed(self, key: str) -> Metadata:
        return (*self.metadata, ("idempotency-key", key))

    # -- HTTP ----------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.targets["gateway"],
                connector=aiohttp.TCPConnector(limit=self._http_connections),
                timeout=aiohttp.ClientTimeout(total=DEADLINE),
            )
        return self._session

    async def http(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                   expect_replayed: bool = False) -> Any:
        """One JSON call through the gateway; a status ≥ 300 raises `Failed`."""
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.session.request(method, path, json=body, headers=headers) as response:
            raw = await response.read()
            if response.status >= 300:
                raise Failed(f"HTTP {response.status}/{_reason(raw)}")
            if expect_replayed and response.headers.get("Idempotent-Replayed") != "true":
                raise Failed("HTTP: not replayed")
            return json.loads(raw) if raw else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        for channels in self._channels.values():
            for channel in channels:
                await channel.close()

    # -- preparing data (not measured) ---------------------------------------------

    async def create_lead(self, name: str = "Bench Lead",
                          stub: leads_pb2_grpc.LeadsServiceStub | None = None) -> str:
        lead = await (stub or self.leads[0]).CreateLead(
            leads_pb2.CreateLeadRequest(name=name, phone=PHONE),
            metadata=self.keyed(new_key()), timeout=DEADLINE)
        return str(lead.lead_id)

    async def create_appointment(self, lead_id: str, starts_in: float) -> str:
        """A pending appointment of an agent of its own, so confirming it conflicts with nothing."""
        start = time.time() + starts_in
        appointment = await self.bookings[0].CreateAppointment(
            bookings_pb2.CreateAppointmentRequest(
                lead_id=lead_id, agent_id=f"bench-agent-{new_key()}",
                start_time=timestamp(start), end_time=timestamp(start + 1800)),
            metadata=self.keyed(new_key()), timeout=DEADLINE)
        return str(appointment.appointment_id)


def _reason(raw: bytes) -> str:
    """The ErrorInfo reason of a gateway error body (a google.rpc.Status as JSON)."""
    try:
        body = json.loads(raw)
        for detail in body.get("details", []):
            if "reason" in detail:
                return str(detail["reason"])
    except (ValueError, AttributeError):
        pass
    return "?"


async def fill(make: Callable[[], Awaitable[None]], *, seconds: float, at_least: int,
               concurrency: int = 32) -> None:
    """Run `make` with `concurrency` tasks for `seconds`, and at least `at_least` times."""
    deadline = time.monotonic() + seconds
    made = 0

    async def worker() -> None:
        nonlocal made
        while made < at_least or time.monotonic() < deadline:
            made += 1
            await make()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
