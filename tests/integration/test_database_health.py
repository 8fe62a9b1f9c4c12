"""Health follows the database: NOT_SERVING while it cannot be reached, SERVING
again by itself once it can; the liveness name stays SERVING throughout, so a
liveness probe never restarts replicas for an outage that is not theirs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.leads.bootstrap import SPEC as LEADS
from services.shared.server import LIVENESS
from tests.support.postgres_cluster import PrivateCluster
from tests.support.servers import environment, start_in_process

Status = health_pb2.HealthCheckResponse


def database_up() -> float | None:
    return REGISTRY.get_sample_value("crm_database_up", {"service": "leads"})


async def test_health_is_not_serving_while_postgres_is_down_and_serving_once_it_is_back(
    private_cluster: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    env = environment(private_cluster.url(), tmp_path, CRM_HEALTH_PROBE_SECONDS="0.2")
    running = await start_in_process(LEADS, env)
    try:
        health = health_pb2_grpc.HealthStub(channel_for(running.target))
        overall = health.Watch(health_pb2.HealthCheckRequest(service=""))
        named = health.Watch(health_pb2.HealthCheckRequest(service=LEADS.service_name))
        for watch in (overall, named):
            assert (await watch.read()).status == Status.SERVING
        assert database_up() == 1

        await asyncio.to_thread(private_cluster.stop)
        for watch in (overall, named):
            assert (await asyncio.wait_for(watch.read(), 15)).status == Status.NOT_SERVING
        assert database_up() == 0
        alive = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
        assert alive.status == Status.SERVING

        await asyncio.to_thread(private_cluster.start)
        for watch in (overall, named):
            assert (await asyncio.wait_for(watch.read(), 15)).status == Status.SERVING
        assert database_up() == 1
        overall.cancel()
        named.cancel()
    finally:
        await running.stop(grace=1, drain=0)


async def test_shutting_down_turns_every_name_not_serving_and_the_probe_cannot_undo_it(
    private_cluster: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    env = environment(private_cluster.url(), tmp_path, CRM_HEALTH_PROBE_SECONDS="0.05")
    running = await start_in_process(LEADS, env)
    health = health_pb2_grpc.HealthStub(channel_for(running.target))
    watch = health.Watch(health_pb2.HealthCheckRequest(service=LIVENESS))
    assert (await watch.read()).status == Status.SERVING
    stopping = asyncio.create_task(running.stop(grace=1, drain=2.0))
    assert (await asyncio.wait_for(watch.read(), 5)).status == Status.NOT_SERVING
    # Probes keep succeeding while it drains; none of them turns it back.
    for _ in range(5):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == Status.NOT_SERVING
        await asyncio.sleep(0.05)
    await stopping
