"""How every service starts, serves and stops.

    python -m services.<name> [--port N] [--host H]     serve
    python -m services.<name> migrate                   apply migrations and exit

Start: migrations (under a lock), the event feed, the gRPC server with the call
interceptor, the standard health service, reflection, and housekeeping (purging
expired idempotency keys and events past retention). Stop (SIGTERM or SIGINT):
health turns NOT_SERVING, the server drains for CRM_SHUTDOWN_DRAIN_SECONDS so
load balancers look elsewhere, then stops taking calls; calls in flight get
CRM_SHUTDOWN_GRACE_SECONDS to finish and Subscribe streams end cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.shared import logs, metrics, migrations
from services.shared.config import DEFAULT_PORTS, ConfigError, Settings
from services.shared.db import Database, retrying
from services.shared.events import EventFeed, EventLog, purge_cutoff
from services.shared.idempotency import IdempotencyStore
from services.shared.interceptor import CallInterceptor, Tokens
from services.shared.runtime import ServiceRuntime
from services.shared.schema import SharedTables
from services.shared.uow import UnitOfWork

log = logging.getLogger(__name__)

# Requests and responses larger than this are refused by gRPC (RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServiceSpec:
    """What makes one service: its contract, tables, migrations and handlers."""

    name: str
    # The full proto service name, as in "crm.leads.v1.LeadsService".
    service_name: str
    tables: SharedTables
    migrations: Path
    uow_class: type[UnitOfWork]
    # Builds the servicer from the runtime (and wires clients into it).
    build: Callable[[ServiceRuntime], Awaitable[Any]]
    # The generated `add_<Service>Servicer_to_server`.
    register: Callable[[Any, grpc.aio.Server], None]


@dataclass
class RunningService:
    spec: ServiceSpec
    runtime: ServiceRuntime
    server: grpc.aio.Server
    health: HealthServicer
    port: int
    metrics_port: int | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        settings = self.runtime.settings
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(settings.shutdown_drain if drain is None else drain)
        stopping = asyncio.create_task(
            self.server.stop(settings.shutdown_grace if grace is None else grace)
        )
        await asyncio.sleep(0)  # no new calls from here on
        await self.runtime.feed.close()
        await stopping
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in reversed(self.closers):
            await close()
        await self.runtime.db.dispose()


async def start(
    spec: ServiceSpec,
    settings: Settings,
    *,
    port: int | None = None,
    host: str | None = None,
) -> RunningService:
    """Start a service; `port=0` picks a free port (see `RunningService.port`)."""
    if not settings.tokens:
        raise ConfigError("CRM_API_TOKENS is not set: no call could be authenticated")
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    await migrations.upgrade(db, spec.name, spec.migrations)
    event_log = EventLog(spec.tables, channel=f"{spec.name}_events", postgres=not db.is_sqlite)
    feed = EventFeed(db, event_log, ring_size=settings.event_ring_size)
    await feed.start()
    runtime = ServiceRuntime(
        name=spec.name,
        domain=spec.name,
        settings=settings,
        db=db,
        log=event_log,
        feed=feed,
        idempotency=IdempotencyStore(
            spec.tables, ttl_seconds=settings.idempotency_ttl, postgres=not db.is_sqlite
        ),
        uow_class=spec.uow_class,
    )
    metrics.SUBSCRIBERS.labels(spec.name).set_function(lambda: feed.subscribers)
    servicer = await spec.build(runtime)

    server = grpc.aio.server(
        interceptors=[CallInterceptor(spec.name, spec.name, Tokens(settings.tokens))],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A second server on a taken port must fail, not share it.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
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
    for name in ("", spec.service_name):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)

    running = RunningService(spec, runtime, server, health, bound)
    running.tasks.append(asyncio.create_task(_housekeeping(runtime), name="housekeeping"))
    running.closers.extend(runtime.parts.get("closers", []))
    if settings.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.bind_host)
        running.closers.append(_shutdown_http(metrics_server))
        running.metrics_port = metrics_server.server_port
        log.info("metrics on :%s", running.metrics_port,
                 extra={"metrics_port": running.metrics_port})
    log.info("%s serving on %s", spec.service_name, address.rsplit(":", 1)[0] + f":{bound}",
             extra={"port": bound, "database": db.dialect, "tls": settings.tls.serving})
    return running


def _shutdown_http(server: Any) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        await asyncio.to_thread(server.shutdown)

    return close


async def _housekeeping(runtime: ServiceRuntime) -> None:
    """Purge expired idempotency keys and events past the retention window."""
    settings = runtime.settings
    while True:
        await asyncio.sleep(settings.housekeeping_seconds)
        try:
            await purge_once(runtime)
        except Exception:
            log.warning("housekeeping failed; will try again", exc_info=True)


async def purge_once(runtime: ServiceRuntime) -> tuple[int, int]:
    """One round of housekeeping; returns (keys purged, events purged)."""
    keys = events = 0

    async def purge_keys() -> int:
        async with runtime.db.transaction(write=True) as conn:
            n = await runtime.idempotency.purge(conn)
            await conn.commit()
            return n

    while (n := await retrying(purge_keys, time_remaining=30)) > 0:
        keys += n
        if n < 1000:
            break

    async def purge_events() -> int:
        async with runtime.db.transaction(write=True) as conn:
            n = await runtime.log.purge(
                conn, older_than=purge_cutoff(runtime.settings.event_retention)
            )
            await conn.commit()
            return n

    events = await retrying(purge_events, time_remaining=30)
    if keys or events:
        log.info("housekeeping", extra={"keys_purged": keys, "events_purged": events})
    return keys, events


def main(spec: ServiceSpec, argv: list[str] | None = None) -> None:
    """The command line of `python -m services.<name>`."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{spec.name}",
                                     description=f"Run the {spec.name} service.")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    parser.add_argument("--port", type=int, default=None,
                        help=f"gRPC port (default {DEFAULT_PORTS[spec.name]}; 0 picks a free one)")
    parser.add_argument("--host", default=None, help="address to bind (default CRM_BIND_HOST)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(spec.name)
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    logs.configure(spec.name, settings.log_level)
    try:
        if args.command == "migrate":
            asyncio.run(_migrate(spec, settings))
        else:
            asyncio.run(_serve(spec, settings, args.port, args.host))
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")


async def _migrate(spec: ServiceSpec, settings: Settings) -> None:
    db = Database(settings.database_url, pool_size=1)
    try:
        await migrations.upgrade(db, spec.name, spec.migrations)
        log.info("migrated %s", spec.name)
    finally:
        await db.dispose()


async def _serve(spec: ServiceSpec, settings: Settings, port: int | None, host: str | None) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    running = await start(spec, settings, port=port, host=host)
    try:
        await stop_requested.wait()
        log.info("stopping: draining, then letting calls in flight finish")
    finally:
        await running.stop()
        log.info("stopped")
