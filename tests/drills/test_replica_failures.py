"""Drills: a replica killed mid-load; subscribers on every replica across reconnects;
SIGTERM during traffic."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.drills.conftest import report
from tests.support.servers import ServiceProcess, environment, wait_until

Stub = leads_pb2_grpc.LeadsServiceStub


async def started(count: int, env: dict[str, str]) -> list[ServiceProcess]:
    replicas = [ServiceProcess("leads", env) for _ in range(count)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
    return replicas


async def test_kill_9_mid_load_loses_no_acknowledged_write_and_duplicates_none(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    a, b = await started(2, environment(postgres_url, tmp_path))
    stubs = {"a": Stub(channel_for(a.target, retries=False)),
             "b": Stub(channel_for(b.target, retries=False))}
    keys = [new_key() for _ in range(120)]
    acknowledged: dict[str, str] = {}
    failures_then_retried = 0

    async def create(key: str, replica: str) -> str:
        lead = await stubs[replica].CreateLead(
            pb.CreateLeadRequest(name=f"key {key}", phone="+14155550123"),
            metadata=idempotency(key), timeout=5)
        return lead.lead_id

    async def client(mine: list[str]) -> None:
        nonlocal failures_then_retried
        for key in mine:
            try:
                acknowledged[key] = await create(key, "a")
            except grpc.aio.AioRpcError:
                failures_then_retried += 1
                while True:  # the same key, on the surviving replica
                    try:
                        acknowledged[key] = await create(key, "b")
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)

    try:
        clients = [asyncio.create_task(client(keys[i::6])) for i in range(6)]
        await wait_until(lambda: len(acknowledged) >= 30, within=30, interval=0.01)
        a.kill()
        killed_after = len(acknowledged)
        await asyncio.wait_for(asyncio.gather(*clients), 60)

        listed = []
        page = pb.ListLeadsResponse(next_page_token="start")
        token = ""
        while page.next_page_token:
            page = await stubs["b"].ListLeads(pb.ListLeadsRequest(page_size=200, page_token=token))
            listed += [lead.lead_id for lead in page.leads]
            token = page.next_page_token
        assert len(acknowledged) == len(keys)
        assert sorted(listed) == sorted(acknowledged.values()), "each key made exactly one lead"
        report("kill -9 mid-load", requests=len(keys) + failures_then_retried,
               acknowledged_before_kill=killed_after, retried_on_survivor=failures_then_retried,
               effects=len(listed), lost=len(set(acknowledged.values()) - set(listed)),
               duplicated=len(listed) - len(set(listed)))
    finally:
        for replica in (a, b):
            replica.kill()


async def test_subscribers_on_every_replica_see_every_event_once_in_order_across_reconnects(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    replicas = await started(3, environment(postgres_url, tmp_path))
    stubs = [Stub(channel_for(r.target)) for r in replicas]
    origin_stream = stubs[0].Subscribe(pb.SubscribeRequest())
    origin = (await origin_stream.read()).cursor
    origin_stream.cancel()
    writers_done = asyncio.Event()
    rng = random.Random(7)
    reconnects = 0

    async def writer(stub: Stub, n: int) -> None:
        for i in range(15):
            lead = await stub.CreateLead(pb.CreateLeadRequest(name=f"w{n}-{i}",
                                                              phone="+14155550123"),
                                         metadata=idempotency(new_key()))
            await stub.UpdateLeadStatus(
                pb.UpdateLeadStatusRequest(lead_id=lead.lead_id, status=pb.LEAD_STATUS_CONTACTED),
                metadata=idempotency(new_key()))

    async def subscriber(n: int, total: int) -> list[str]:
        """Reads until `total` events, hopping replicas from its saved cursor."""
        nonlocal reconnects
        cursor, seen = origin, []
        while len(seen) < total:
            stream = stubs[rng.randrange(3)].Subscribe(pb.SubscribeRequest(after_cursor=cursor))
            hop_at = time.monotonic() + rng.uniform(0.1, 0.6)
            try:
                while len(seen) < total and time.monotonic() < hop_at:
                    event = await asyncio.wait_for(stream.read(), 10)
                    cursor = event.cursor
                    if event.type != "bookmark":
                        seen.append(f"{event.type}/{event.lead_id}/{event.cursor}")
            finally:
                stream.cancel()
            reconnects += 1
        return seen

    try:
        total = 3 * 2 * 15 * 2
        readers = [asyncio.create_task(subscriber(n, total)) for n in range(6)]
        await asyncio.gather(*(writer(stubs[n % 3], n) for n in range(6)))
        writers_done.set()
        sequences = await asyncio.wait_for(asyncio.gather(*readers), 60)
        assert all(len(s) == total for s in sequences)
        assert all(s == sequences[0] for s in sequences), "one order, seen by all"
        assert len(set(sequences[0])) == total, "none repeated"
        report("subscribers across replicas", replicas=3, writers=6, subscribers=6,
               events=total, reconnects=reconnects, missing=0, repeated=0)
    finally:
        for replica in replicas:
            replica.kill()


async def test_sigterm_turns_health_not_serving_first_then_lets_calls_finish(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    env = environment(postgres_url, tmp_path, CRM_SHUTDOWN_DRAIN_SECONDS="1",
                      CRM_SHUTDOWN_GRACE_SECONDS="10")
    (replica,) = await started(1, env)
    channel = channel_for(replica.target)
    stub = Stub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stream = stub.Subscribe(pb.SubscribeRequest())
    await stream.read()
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            try:
                await stub.CreateLead(pb.CreateLeadRequest(name="t", phone="+14155550123"),
                                      metadata=idempotency(new_key()), timeout=5)
                outcomes.append("OK")
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
                return

    load = [asyncio.create_task(traffic()) for _ in range(4)]
    await asyncio.sleep(0.5)
    before = len(outcomes)
    replica.process.terminate()  # type: ignore[union-attr]
    turned = await asyncio.wait_for(watch.read(), 5)
    assert turned.status == health_pb2.HealthCheckResponse.NOT_SERVING
    not_serving_at = len(outcomes)
    ended = await asyncio.wait_for(stream.read(), 15)
    while ended is not grpc.aio.EOF and ended.type in ("bookmark", "lead.created"):
        ended = await asyncio.wait_for(stream.read(), 15)
    assert ended is grpc.aio.EOF and await stream.code() is grpc.StatusCode.OK
    stream_ended_at = len(outcomes)
    stop.set()
    await asyncio.gather(*load)
    code = await asyncio.to_thread(replica.process.wait, 20)  # type: ignore[union-attr]
    assert code == 0
    assert "INTERNAL" not in outcomes and "UNKNOWN" not in outcomes
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}
    report("SIGTERM during traffic", calls=len(outcomes), ok_before_term=before,
           ok_after_not_serving=outcomes[not_serving_at:stream_ended_at].count("OK"),
           refused_after_stop=len(outcomes) - outcomes.count("OK"), exit_code=code,
           stream_end="OK", health_first="NOT_SERVING")
