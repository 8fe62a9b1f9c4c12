"""Drill: PostgreSQL restarted mid-load.

While it is down the services answer UNAVAILABLE, promptly (never INTERNAL,
never a hang past the caller's deadline); once it is back they recover by
themselves within seconds, with no restart, and no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.drills.conftest import report
from tests.support.postgres_cluster import PrivateCluster
from tests.support.servers import ServiceProcess, environment, wait_until

DEADLINE = 2.0
DOWN_FOR = 3.0


async def test_services_answer_unavailable_while_postgres_is_down_and_recover_alone(
    private_cluster: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    env = environment(private_cluster.url(), tmp_path, CRM_DB_POOL_SIZE="4")
    replicas = [ServiceProcess("leads", env), ServiceProcess("leads", env)]
    for replica in replicas:
        await asyncio.to_thread(replica.start)
    stubs = [leads_pb2_grpc.LeadsServiceStub(channel_for(r.target, retries=False))
             for r in replicas]
    outcomes: Counter[str] = Counter()
    acknowledged: list[str] = []
    slowest = 0.0
    first_ok_after: dict[int, float] = {}
    restarted_at: float | None = None
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal slowest
        stub = stubs[n % 2]
        while not stop.is_set():
            started = time.monotonic()
            try:
                lead = await stub.CreateLead(
                    pb.CreateLeadRequest(name=f"load {n}", phone="+14155550123"),
                    metadata=idempotency(new_key()), timeout=DEADLINE)
                acknowledged.append(lead.lead_id)
                outcomes["OK"] += 1
                if restarted_at is not None and n % 2 not in first_ok_after:
                    first_ok_after[n % 2] = time.monotonic() - restarted_at
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)
                continue
            slowest = max(slowest, time.monotonic() - started)

    try:
        clients = [asyncio.create_task(client(n)) for n in range(8)]
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_cluster.stop)
        await asyncio.sleep(DOWN_FOR)
        down = dict(outcomes)
        await asyncio.to_thread(private_cluster.start)
        restarted_at = time.monotonic()
        await wait_until(lambda: len(first_ok_after) == 2, within=20)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)

        # Never INTERNAL, and never a hang: a hang would be DEADLINE_EXCEEDED.
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
        assert down.get("UNAVAILABLE", 0) > 0
        recovery = max(first_ok_after.values())
        assert recovery < 10.0
        found = 0
        for lead_id in acknowledged:
            await stubs[0].GetLead(pb.GetLeadRequest(lead_id=lead_id), timeout=5)
            found += 1
        report("postgres restart", requests=sum(outcomes.values()), ok=outcomes["OK"],
               unavailable=outcomes["UNAVAILABLE"], other=sum(outcomes.values()) - outcomes["OK"]
               - outcomes["UNAVAILABLE"], acknowledged=len(acknowledged), lost=len(acknowledged)
               - found, recovery_seconds=round(recovery, 2), slowest_answer=round(slowest, 2))
    finally:
        for replica in replicas:
            replica.kill()
