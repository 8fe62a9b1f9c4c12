"""`--workers N`: one port served by N processes (SO_REUSEPORT), each a whole
server with its own health and metrics; SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.shared.clients import open_channel
from tests.integration.conftest import create_lead
from tests.integration.test_subscribe import take
from tests.support.servers import ROOT, TOKENS, ServiceProcess, environment, wait_until

Stub = leads_pb2_grpc.LeadsServiceStub
CALLS = 24


def announced(process: ServiceProcess, message: str) -> list[dict[str, object]]:
    found = []
    for line in process.log_lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message in str(entry.get("message", "")):
            found.append(entry)
    return found


def created_on(metrics_port: object) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    found = re.search(r'crm_rpc_requests_total\{code="OK",method="CreateLead",service="leads"\} '
                      r"([0-9.]+)", text)
    return int(float(found.group(1))) if found else 0


async def test_workers_share_one_port_each_with_health_and_metrics_and_drain_together(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    env = environment(postgres_url, tmp_path, CRM_METRICS_PORT="0",
                      CRM_SHUTDOWN_DRAIN_SECONDS="0")
    server = ServiceProcess("leads", env, args=["--workers", "2"])
    await asyncio.to_thread(server.start)
    try:
        await wait_until(lambda: len(announced(server, "serving on")) == 2, within=30)
        workers = announced(server, "serving on")
        assert {w["port"] for w in workers} == {server.port}
        assert sorted(int(str(w["worker"])) for w in workers) == [0, 1]
        await wait_until(lambda: len(announced(server, "metrics on")) == 2, within=30)
        metrics_ports = [m["metrics_port"] for m in announced(server, "metrics on")]
        # A stream on one connection hears of leads created through every worker.
        watching = channel_for(server.target)
        stream = Stub(watching).Subscribe(pb.SubscribeRequest())
        await stream.read()
        # Each channel its own connection: the kernel spreads them over the workers.
        channels = [open_channel(server.target, token=TOKENS["alice"],
                                 options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CALLS)]
        try:
            created = await asyncio.gather(*(create_lead(Stub(c)) for c in channels))
            for channel in channels:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="crm.leads.v1.LeadsService"))
                assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for channel in channels:
                await channel.close()
        events = await take(stream, CALLS)
        assert {e.lead.lead_id for e in events} == {lead.lead_id for lead in created}
        counts = [await asyncio.to_thread(created_on, port) for port in metrics_ports]
        assert sum(counts) == CALLS and all(count > 0 for count in counts), counts
        # SIGTERM to the first process: every worker drains, streams end cleanly.
        assert await asyncio.to_thread(server.terminate) == 0
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() is grpc.StatusCode.OK
    finally:
        server.kill()


def test_workers_need_postgresql(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'leads.db'}", tmp_path)
    done = subprocess.run([sys.executable, "-m", "services.leads", "--port", "0",
                           "--workers", "2"], cwd=ROOT, env={**env}, capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode != 0
    assert "--workers needs PostgreSQL" in done.stderr
