"""Drills across a real network: leads replicas and PostgreSQL on hosts of their
own (tests.support.netlab), the test's clients on the machine's side of the lab,
and iptables DROP rules for the partitions.

1. One replica cut off from PostgreSQL mid-load: its calls end UNAVAILABLE
   within their deadlines, the other replica keeps serving, clients that retry
   with their keys lose and duplicate nothing, and the cut-off replica's health
   is NOT_SERVING until it recovers by itself when the partition heals.
4. Two replicas cut off from PostgreSQL for 30 s while a third keeps writing:
   the Subscribe streams on both resume exactly (no event skipped or repeated,
   in log order) once the partition heals.
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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.shared.clients import idempotency, new_key
from tests.drills.conftest import report, service_on
from tests.support.netlab import Lab
from tests.support.postgres_cluster import PrivateCluster
from tests.support.servers import ServiceProcess, environment, wait_until

Stub = leads_pb2_grpc.LeadsServiceStub
Health = health_pb2.HealthCheckResponse
DEADLINE = 2.0
CUT_FOR = 5.0
LONG_CUT = 30.0


def lab_env(lab_postgres: PrivateCluster, tmp_path: Path, **extra: str) -> dict[str, str]:
    return environment(lab_postgres.url(), tmp_path, CRM_HEALTH_PROBE_SECONDS="0.5",
                       CRM_HEARTBEAT_SECONDS="1", **extra)


async def list_all(stub: Stub) -> list[pb.Lead]:
    leads: list[pb.Lead] = []
    token = ""
    while True:
        page = await stub.ListLeads(pb.ListLeadsRequest(page_size=200, page_token=token),
                                    timeout=10)
        leads += page.leads
        if not (token := page.next_page_token):
            return leads


async def test_a_replica_cut_off_from_postgres_answers_unavailable_in_time_and_recovers_alone(
    lab: Lab, lab_postgres: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    db = lab.hosts["db"]
    env = lab_env(lab_postgres, tmp_path, CRM_DB_POOL_SIZE="4")
    a = service_on(lab.host("leads-a"), "leads", env)
    b = service_on(lab.host("leads-b"), "leads", env)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    stubs = {"a": Stub(channel_for(a.target, retries=False)),
             "b": Stub(channel_for(b.target, retries=False))}
    health = health_pb2_grpc.HealthStub(channel_for(a.target))
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == Health.SERVING
    outcomes: Counter[str] = Counter()
    acknowledged: dict[str, str] = {}
    keys: list[str] = []
    slowest = 0.0
    stop = asyncio.Event()

    async def create(key: str, replica: str) -> str:
        nonlocal slowest
        started = time.monotonic()
        try:
            lead = await stubs[replica].CreateLead(
                pb.CreateLeadRequest(name=f"key {key}", phone="+14155550123"),
                metadata=idempotency(key), timeout=DEADLINE)
        except grpc.aio.AioRpcError as error:
            outcomes[f"{replica}:{error.code().name}"] += 1
            raise
        finally:
            slowest = max(slowest, time.monotonic() - started)
        outcomes[f"{replica}:OK"] += 1
        return lead.lead_id

    async def client(n: int) -> None:
        """New keys, balanced over both replicas; a failed call goes to the other."""
        while not stop.is_set():
            key = new_key()
            keys.append(key)
            first = len(keys) % 2
            attempt = 0
            while key not in acknowledged:
                try:
                    acknowledged[key] = await create(key, "ab"[(first + attempt) % 2])
                except grpc.aio.AioRpcError:
                    attempt += 1
                    await asyncio.sleep(0.05)

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    try:
        await wait_until(lambda: len(acknowledged) >= 40, within=30)
        lab.cut(lab.hosts["leads-a"], db)
        turned = await asyncio.wait_for(watch.read(), 15)
        assert turned.status == Health.NOT_SERVING
        # From here on, calls that were past the database when it was cut are answered.
        at_cut = Counter(outcomes)
        await asyncio.sleep(CUT_FOR)
        during = Counter(outcomes)
        during.subtract(at_cut)
        lab.heal()
        healed_at = time.monotonic()
        ok_on_a = outcomes["a:OK"]
        await wait_until(lambda: outcomes["a:OK"] > ok_on_a, within=30)
        recovery = time.monotonic() - healed_at
        assert (await asyncio.wait_for(watch.read(), 15)).status == Health.SERVING
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        watch.cancel()

        # No hang: a call cut off from the database is answered UNAVAILABLE in time.
        # A key whose call on a was cut mid-transaction stays held by that stranded
        # transaction, so its retry on b is IDEMPOTENCY_KEY_IN_USE (and retried).
        assert set(outcomes) <= {"a:OK", "b:OK", "a:UNAVAILABLE", "a:ABORTED", "b:ABORTED"}, \
            outcomes
        assert during["a:UNAVAILABLE"] > 0 and during["a:OK"] == 0
        assert during["b:OK"] > 0, "the other replica kept serving"
        leads = await list_all(stubs["b"])
        by_key = Counter(lead.name.removeprefix("key ") for lead in leads)
        assert len(acknowledged) == len(keys)
        assert set(by_key) == set(keys), "every key made a lead"
        assert {lead.lead_id for lead in leads} == set(acknowledged.values())
        duplicated = sum(n - 1 for n in by_key.values())
        assert duplicated == 0
        report("partition: one leads replica from PostgreSQL", keys=len(keys),
               calls=sum(outcomes.values()), effects=len(leads),
               unavailable_on_cut_replica=outcomes["a:UNAVAILABLE"],
               in_use_while_cut=outcomes["a:ABORTED"],
               ok_on_other_replica_while_cut=during["b:OK"],
               lost=len(set(acknowledged.values()) - {lead.lead_id for lead in leads}),
               duplicated=duplicated, deadline_exceeded=0,
               slowest_answer_seconds=round(slowest, 2),
               health_while_cut="NOT_SERVING", recovery_seconds=round(recovery, 2))
    finally:
        stop.set()
        for task in clients:
            task.cancel()
        for process in (a, b):
            process.kill()


async def test_subscribe_streams_on_replicas_cut_off_for_30_s_resume_exactly(
    lab: Lab, lab_postgres: PrivateCluster, tmp_path: Path,
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    db = lab.hosts["db"]
    env = lab_env(lab_postgres, tmp_path)
    hosts = [lab.host(f"leads-{n}") for n in "abc"]
    a, b, writer = (service_on(host, "leads", env) for host in hosts)
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in (a, b, writer)))
    writes = Stub(channel_for(writer.target))
    origin_stream = writes.Subscribe(pb.SubscribeRequest())
    origin = (await origin_stream.read()).cursor
    origin_stream.cancel()
    written: list[str] = []
    reconnects: Counter[str] = Counter()
    seen: dict[str, list[str]] = {"a": [], "b": []}
    stop = asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            lead = await writes.CreateLead(
                pb.CreateLeadRequest(name=f"w{len(written)}", phone="+14155550123"),
                metadata=idempotency(new_key()), timeout=10)
            written.append(lead.lead_id)
            await asyncio.sleep(0.1)

    async def subscribe(name: str, replica: ServiceProcess) -> None:
        """Read one replica's stream; when it ends, resume there from the last cursor."""
        stub = Stub(channel_for(replica.target, retries=False))
        cursor = origin
        while True:
            stream = stub.Subscribe(pb.SubscribeRequest(after_cursor=cursor))
            try:
                async for event in stream:
                    cursor = event.cursor
                    if event.type != "bookmark":
                        seen[name].append(event.lead_id)
            except grpc.aio.AioRpcError:
                pass
            finally:
                stream.cancel()
            reconnects[name] += 1
            await asyncio.sleep(0.2)

    writing = asyncio.create_task(write())
    readers = [asyncio.create_task(subscribe("a", a)), asyncio.create_task(subscribe("b", b))]
    try:
        await wait_until(lambda: min(len(s) for s in seen.values()) >= 10, within=30)
        for replica in hosts[:2]:
            lab.cut(replica, db)
        cut_from = len(written)
        await asyncio.sleep(LONG_CUT)
        written_while_cut = len(written) - cut_from
        behind = {name: len(written) - len(events) for name, events in seen.items()}
        lab.heal()
        healed_at = time.monotonic()
        target = len(written)
        caught_up: dict[str, float] = {}

        def both_caught_up() -> bool:
            for name, events in seen.items():
                if name not in caught_up and len(events) >= target:
                    caught_up[name] = time.monotonic() - healed_at
            return len(caught_up) == 2

        await wait_until(both_caught_up, within=60)
        stop.set()
        await writing
        await wait_until(lambda: all(len(s) >= len(written) for s in seen.values()), within=30)
        await asyncio.sleep(0.5)  # anything repeated after the last event would show now

        assert written_while_cut > 0
        assert all(n >= written_while_cut for n in behind.values()), "the cut replicas stalled"
        for name, events in seen.items():
            assert events == written, f"replica {name}: every event once, in log order"
        report("partition: two leads replicas from PostgreSQL for 30 s", events=len(written),
               written_while_cut=written_while_cut, subscribers=2,
               reconnects=dict(reconnects), missing=0, repeated=0,
               recovery_seconds={name: round(s, 2) for name, s in sorted(caught_up.items())})
    finally:
        stop.set()
        for task in (writing, *readers):
            task.cancel()
        for process in (a, b, writer):
            process.kill()
