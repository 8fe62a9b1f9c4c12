"""How every service starts, serves and stops.

    python -m services.<name> [--port N] [--host H] [--workers N]    serve
    python -m services.<name> migrate                                apply migrations and exit

Workers. `--workers N` (PostgreSQL only) serves the port from N processes, so
that a service uses as many cores as it is given: the first process migrates,
then starts N workers that each bind the port with SO_REUSEPORT (the kernel
spreads connections over them; a gRPC channel stays on the worker its
connection reached). Each worker is a whole server: its own health service
(a probe reaches whichever worker its connection lands on), its own event
feed, database pool (N times CRM_DB_POOL_SIZE connections in all) and metrics,
on CRM_METRICS_PORT + its index (0, 1, …). SIGTERM or SIGINT to the first
process reaches every worker, and each drains as one server does; a worker
that exits on its own stops the others, and the first process exits with a
failure so that the supervisor (compose, Kubernetes) restarts the whole.

Start: migrations (under a lock), the event feed, the gRPC server with the call
interceptor, the standard health service, reflection, and housekeeping (purging
expired idempotency keys and events past retention). Stop (SIGTERM or SIGINT):
health turns NOT_SERVING, the server drains for CRM_SHUTDOWN_DRAIN_SECONDS so
load balancers look elsewhere, then stops taking calls; calls in flight get
CRM_SHUTDOWN_GRACE_SECONDS to finish and Subscribe streams end cleanly.

Health. The overall status ("") and the service's own name are SERVING while
the database answers: every CRM_HEALTH_PROBE_SECONDS a fresh connection runs
`SELECT 1`, and one that fails or takes longer than PROBE_TIMEOUT turns them
NOT_SERVING until a probe succeeds again, so load balancers and readiness
probes send calls to replicas that can serve them. LIVENESS ("liveness")
stays SERVING for as long as the process answers at all, so that a liveness
probe restarts a stuck process, never every replica of a database outage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.shared import logs, metrics, migrations, paging
from services.shared.config import DEFAULT_PORTS, ConfigError, Settings
from services.shared.db import Database, retrying
from services.shared.events import EventFeed, EventLog, purge_cutoff
from services.shared.idempotency import IdempotencyStore
from services.shared.interceptor import CallInterceptor
from services.shared.jwts import accepted_tokens
from services.shared.limits import StreamLimits
from services.shared.runtime import ServiceRuntime
from services.shared.schema import SharedTables
from services.shared.uow import EventMapper, KeptRows, Storage, UnitOfWork, Units

log = logging.getLogger(__name__)
U = TypeVar("U", bound=UnitOfWork)

# Requests and responses larger than this are refused by gRPC (RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 1024 * 1024
# The health service name that says only "this process answers" (liveness probes).
LIVENESS = "liveness"
# How long one database probe may take before it counts as failed.
PROBE_TIMEOUT = 3.0
# `--workers` beyond this is a typo, not a machine.
MAX_WORKERS = 64
# Linux's prctl(2) option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServiceSpec(Generic[U]):
    """What makes one service: its contract, tables, migrations and handlers."""

    name: str
    # The full proto service name, as in "crm.leads.v1.LeadsService".
    service_name: str
    tables: SharedTables
    migrations: Path
    # The service's unit of work, and how it maps its domain events to the log.
    uow_class: type[U]
    events: EventMapper
    # Builds the servicer from the runtime (and wires clients into it).
    build: Callable[[ServiceRuntime[U]], Awaitable[Any]]
    # The generated `add_<Service>Servicer_to_server`.
    register: Callable[[Any, grpc.aio.Server], None]


@dataclass
class RunningService(Generic[U]):
    spec: ServiceSpec[U]
    runtime: ServiceRuntime[U]
    servicer: Any
    server: grpc.aio.Server
    health: HealthServicer
    port: int
    # Everything `start` opened, closed last first by `stop`.
    resources: contextlib.AsyncExitStack
    metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Turn NOT_SERVING, drain, stop taking calls, let those in flight finish
        while streams end, then close everything `start` opened."""
        settings = self.runtime.settings
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(settings.shutdown_drain if drain is None else drain)
        stopping = asyncio.create_task(
            self.server.stop(settings.shutdown_grace if grace is None else grace)
        )
        await asyncio.sleep(0)  # no new calls from here on
        await self.runtime.storage.feed.close()
        await stopping
        await self.resources.aclose()


async def start(
    spec: ServiceSpec[U],
    settings: Settings,
    *,
    port: int | None = None,
    host: str | None = None,
    worker: int | None = None,
) -> RunningService[U]:
    """Start a service; `port=0` picks a free port (see `RunningService.port`).
    `worker`: this process's index among `--workers`, which share the port.

    Whatever a step opened is closed again if a later step fails.
    """
    if not settings.tokens:
        raise ConfigError("CRM_API_TOKENS is not set: no call could be authenticated")
    paging.configure(settings.page_token_secret.encode() if settings.page_token_secret
                     else paging.derived_key(settings.tokens))
    async with contextlib.AsyncExitStack() as resources:
        runtime = await _assemble(spec, settings, resources)
        resources.push_async_callback(_close_all, runtime.closers)
        servicer = await spec.build(runtime)
        server, health, bound = await _serve_grpc(spec, settings, servicer, port, host,
                                                  share_port=worker is not None)
        resources.push_async_callback(server.stop, 0)
        for task in (asyncio.create_task(_housekeeping(runtime), name="housekeeping"),
                     asyncio.create_task(watch_database(runtime, health,
                                                        ("", spec.service_name)),
                                         name="database-probe")):
            resources.push_async_callback(_cancelled, task)
        running = RunningService(spec, runtime, servicer, server, health, bound,
                                 resources.pop_all())
    if settings.metrics_port is not None:
        metrics_port = settings.metrics_port
        if worker is not None and metrics_port:
            metrics_port += worker
        metrics_server, _ = start_http_server(metrics_port, addr=settings.bind_host)
        running.resources.push_async_callback(asyncio.to_thread, metrics_server.shutdown)
        running.metrics_port = metrics_server.server_port
        log.info("metrics on :%s", running.metrics_port,
                 extra={"metrics_port": running.metrics_port})
    log.info("%s serving on %s:%s", spec.service_name, host or settings.bind_host, bound,
             extra={"port": bound, "database": runtime.storage.db.dialect,
                    "tls": settings.tls.serving,
                    **({} if worker is None else {"worker": worker})})
    return running


async def _assemble(spec: ServiceSpec[U], settings: Settings,
                    resources: contextlib.AsyncExitStack) -> ServiceRuntime[U]:
    """The database, migrated; the event log and its feed; the keys; the units of work."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size,
                  group_commit=settings.group_commit)
    resources.push_async_callback(db.dispose)
    await migrations.upgrade(db, spec.name, spec.migrations)
    postgres = not db.is_sqlite
    event_log = EventLog(spec.tables, channel=f"{spec.name}_events", postgres=postgres)
    feed = EventFeed(db, event_log, ring_size=settings.event_ring_size,
                     streams=StreamLimits.subscribe(settings.subscribe_max_per_principal,
                                                    settings.subscribe_max_streams))
    await feed.start()
    resources.push_async_callback(feed.close)
    metrics.SUBSCRIBERS.labels(spec.name).set_function(lambda: feed.subscribers)
    keys = IdempotencyStore(spec.tables, ttl_seconds=settings.idempotency_ttl, postgres=postgres)
    storage = Storage(service=spec.name, db=db, log=event_log, feed=feed, keys=keys,
                      rows=KeptRows(settings.kept_rows if postgres else 0))
    db.on_lost.append(storage.rows.clear)  # a failover may have lost what was kept
    units = Units(storage, functools.partial(spec.uow_class, events=spec.events))
    return ServiceRuntime(name=spec.name, settings=settings, storage=storage, units=units)


def pending_requests(max_streams: int) -> list[tuple[str, int]]:
    """grpc's bounds on calls not yet taken up by the server: at least its defaults,
    and room for every stream the process may hold."""
    return [("grpc.server.max_pending_requests", max(1000, max_streams)),
            ("grpc.server.max_pending_requests_hard_limit", max(3000, 2 * max_streams))]


async def _serve_grpc(
    spec: ServiceSpec[U], settings: Settings, servicer: Any, port: int | None, host: str | None,
    *, share_port: bool = False,
) -> tuple[grpc.aio.Server, HealthServicer, int]:
    """The gRPC server with the call interceptor, health and reflection, started."""
    server = grpc.aio.server(
        interceptors=[CallInterceptor(spec.name, spec.name, accepted_tokens(
            settings.tokens, settings.jwt, settings.service_principals))],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A second server on a taken port must fail, not share it, unless
            # it is one of `--workers`, which share it on purpose.
            ("grpc.so_reuseport", 1 if share_port else 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            # Calls that arrived before the process took them up (grpc's defaults,
            # 1000 and at most 3000, stall a burst of Subscribe streams: thousands of
            # clients coming back at once wait until cancelled); as many as the
            # process may hold streams.
            *pending_requests(settings.subscribe_max_streams),
        ],
    )
    spec.register(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [spec.service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    address = f"{host or settings.bind_host}:{DEFAULT_PORTS[spec.name] if port is None else port}"
    if settings.tls.serving:
        assert settings.tls.cert is not None and settings.tls.key is not None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls.key.read_bytes(), settings.tls.cert.read_bytes())]
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    for name in ("", spec.service_name, LIVENESS):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics.DATABASE_UP.labels(spec.name).set(1)
    return server, health, bound


async def _close_all(closers: list[Callable[[], Awaitable[None]]]) -> None:
    for close in reversed(closers):
        await close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def watch_database(runtime: ServiceRuntime[Any], health: HealthServicer,
                         names: tuple[str, ...]) -> None:
    """Turn `names` NOT_SERVING while the database cannot be reached, SERVING once it can."""
    interval = runtime.settings.health_probe_seconds
    up = metrics.DATABASE_UP.labels(runtime.name)
    reachable = True
    while True:
        await asyncio.sleep(interval)
        failure = ""
        try:
            await runtime.storage.db.ping(min(PROBE_TIMEOUT, max(interval, 1.0)))
        except Exception as error:
            failure = repr(error)[:300] or "no answer"
        answered = not failure
        if answered == reachable:
            continue
        reachable = answered
        up.set(1 if reachable else 0)
        status = (health_pb2.HealthCheckResponse.SERVING if reachable
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in names:
            await health.set(name, status)
        if reachable:
            log.info("the database answers again: health SERVING")
        else:
            log.warning("the database does not answer: health NOT_SERVING",
                        extra={"error": failure})


async def _housekeeping(runtime: ServiceRuntime[Any]) -> None:
    """Purge expired idempotency keys and events past the retention window."""
    settings = runtime.settings
    while True:
        await asyncio.sleep(settings.housekeeping_seconds)
        try:
            await purge_once(runtime)
        except Exception:
            log.warning("housekeeping failed; will try again", exc_info=True)


async def purge_once(runtime: ServiceRuntime[Any]) -> tuple[int, int]:
    """One round of housekeeping, over every org (in the system scope of
    services.shared.orgs); returns (keys purged, events purged)."""
    keys = events = 0
    storage = runtime.storage

    async def purge_keys() -> int:
        async with storage.db.transaction(write=True) as conn:
            n = await storage.keys.purge(conn)
            await conn.commit()
            return n

    while (n := await retrying(purge_keys, time_remaining=30)) > 0:
        keys += n
        if n < 1000:
            break

    async def purge_events() -> int:
        async with storage.db.transaction(write=True) as conn:
            n = await storage.log.purge(
                conn, older_than=purge_cutoff(runtime.settings.event_retention)
            )
            await conn.commit()
            return n

    events = await retrying(purge_events, time_remaining=30)
    if keys or events:
        log.info("housekeeping", extra={"keys_purged": keys, "events_purged": events})
    return keys, events


def main(spec: ServiceSpec[Any], argv: list[str] | None = None) -> None:
    """The command line of `python -m services.<name>`."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{spec.name}",
                                     description=f"Run the {spec.name} service.")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    parser.add_argument("--port", type=int, default=None,
                        help=f"gRPC port (default {DEFAULT_PORTS[spec.name]}; 0 picks a free one)")
    parser.add_argument("--host", default=None, help="address to bind (default CRM_BIND_HOST)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes serving the port together (SO_REUSEPORT; PostgreSQL "
                             "only): about one per core the service is given (default 1)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.workers > MAX_WORKERS:
        parser.error(f"--workers: from 1 to {MAX_WORKERS}")
    try:
        settings = Settings.from_env(spec.name)
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    logs.configure(spec.name, settings.log_level, settings.log_format)
    try:
        if args.command == "migrate":
            asyncio.run(_migrate(spec, settings))
        elif args.workers > 1 and args.worker is None:
            sys.exit(_supervise(spec, settings, args.workers, args.port, args.host))
        else:
            asyncio.run(_serve(spec, settings, args.port, args.host, args.worker))
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")


def _supervise(spec: ServiceSpec[Any], settings: Settings, workers: int, port: int | None,
               host: str | None) -> int:
    """Migrate, start `workers` processes on one port, pass them SIGTERM/SIGINT, and
    wait for them all; 0 if every one stopped cleanly when asked."""
    if settings.database_url.startswith("sqlite"):
        raise ConfigError("--workers needs PostgreSQL: SQLite has a single writer")
    asyncio.run(_migrate(spec, settings))
    host = host or settings.bind_host
    port = DEFAULT_PORTS[spec.name] if port is None else port
    reserved: socket.socket | None = None
    if port == 0:  # one free port for all: held (bound, not listening) until they bind it
        family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
        reserved = socket.socket(family, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, 0))
        port = reserved.getsockname()[1]
    children = [subprocess.Popen(
        [sys.executable, "-m", f"services.{spec.name}", "serve", "--port", str(port),
         "--host", host, "--worker", str(i)],
        preexec_fn=_stop_with_parent)  # noqa: PLW1509 (no threads run here yet)
        for i in range(workers)]
    stopping = False

    def stop(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%s: %d workers on port %s", spec.service_name, workers, port,
             extra={"workers": workers, "port": port, "pids": [c.pid for c in children]})
    failed = False
    try:
        for _ in children:
            pid, status = os.wait()
            if reserved is not None:
                reserved.close()
                reserved = None
            if not stopping:
                log.error("a worker exited on its own; stopping the others",
                          extra={"pid": pid, "status": os.waitstatus_to_exitcode(status)})
                failed = True
                stop()
            elif os.waitstatus_to_exitcode(status) != 0:
                failed = True
    finally:
        if reserved is not None:
            reserved.close()
    return 1 if failed else 0


def _stop_with_parent() -> None:
    """In a worker, before it runs: SIGTERM (drain and stop) if the first process dies,
    even by kill -9, so that no worker outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _migrate(spec: ServiceSpec[Any], settings: Settings) -> None:
    db = Database(settings.database_url, pool_size=1)
    try:
        await migrations.upgrade(db, spec.name, spec.migrations)
        log.info("migrated %s", spec.name)
    finally:
        await db.dispose()


async def _serve(spec: ServiceSpec[Any], settings: Settings, port: int | None,
                 host: str | None, worker: int | None = None) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    running = await start(spec, settings, port=port, host=host, worker=worker)
    # What starting made (modules, descriptors, the schema, the pools) lives as long
    # as the process: keep it out of the cyclic collector's full passes, which would
    # otherwise walk all of it again and again under load (CreateLead at c=32:
    # 3-6 % more calls a second).
    gc.freeze()
    try:
        await stop_requested.wait()
        log.info("stopping: draining, then letting calls in flight finish")
    finally:
        await running.stop()
        log.info("stopped")
