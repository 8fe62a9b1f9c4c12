"""Round-robin over every replica behind one target, and past a dead one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from tests.support.servers import ServiceProcess, environment, wait_until


def served(replica: ServiceProcess, rpc: str) -> int:
    """How many calls of `rpc` this replica's access log shows."""
    count = 0
    for line in replica.log_lines:
        try:
            count += json.loads(line).get("rpc") == rpc
        except json.JSONDecodeError:
            continue
    return count


async def test_a_channel_spreads_calls_over_replicas_and_skips_one_that_dies(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    env = environment(postgres_url, tmp_path)
    a, b = ServiceProcess("leads", env), ServiceProcess("leads", env)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        # A target with several addresses, as dns:/// resolves a replicated service.
        stub = leads_pb2_grpc.LeadsServiceStub(
            channel_for(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"))
        for _ in range(20):
            await stub.ListLeads(pb.ListLeadsRequest(), timeout=5)
        # Every call's access log line reaches our reader.
        await wait_until(lambda: served(a, "ListLeads") + served(b, "ListLeads") == 20)
        assert served(a, "ListLeads") >= 5 and served(b, "ListLeads") >= 5
        a.kill()
        for _ in range(20):  # every call still answered: the survivor takes them
            await stub.ListLeads(pb.ListLeadsRequest(), timeout=5)
    finally:
        a.kill()
        b.kill()
