"""What operators meet: bad bytes on the wire, metrics, request ids in the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared import logs
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.integration.conftest import create_lead
from tests.support.rpc import refusal
from tests.support.servers import TOKENS, environment, start_in_process

AUTH = (("authorization", f"Bearer {TOKENS['alice']}"),)


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x08" * 3])
async def test_malformed_protobuf_bytes_are_a_clear_invalid_argument_not_a_crash(
    leads_server: RunningService, garbage: bytes
) -> None:
    async with grpc.aio.insecure_channel(leads_server.target) as channel:
        raw = channel.unary_unary("/crm.leads.v1.LeadsService/GetLead")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await raw(garbage, metadata=AUTH)
    refused = refusal(failed.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                              "MALFORMED_REQUEST")
    async with grpc.aio.insecure_channel(leads_server.target) as channel:
        stub = leads_pb2_grpc.LeadsServiceStub(channel)
        assert (await stub.ListLeads(pb.ListLeadsRequest(), metadata=AUTH)).leads == []


async def test_an_oversized_message_is_refused_by_size_and_the_server_carries_on(
    leads_server: RunningService,
) -> None:
    async with grpc.aio.insecure_channel(
        leads_server.target, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as channel:
        stub = leads_pb2_grpc.LeadsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.CreateLead(pb.CreateLeadRequest(name="x" * (2 * 1024 * 1024)),
                                  metadata=AUTH + idempotency(new_key()))
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.ListLeads(pb.ListLeadsRequest(), metadata=AUTH)).leads == []


@pytest.fixture
async def measured(database_url: str, tmp_path: Path) -> AsyncIterator[RunningService]:
    running = await start_in_process(LEADS, environment(database_url, tmp_path,
                                                        CRM_METRICS_PORT="0"))
    yield running
    await running.stop(grace=1, drain=0)


async def test_metrics_count_calls_replays_events_and_subscribers(
    measured: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(measured.target))
    stream = stub.Subscribe(pb.SubscribeRequest())
    await stream.read()
    key = new_key()
    await create_lead(stub, key=key)
    await create_lead(stub, key=key)
    url = f"http://127.0.0.1:{measured.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    stream.cancel()
    for line in (
        'crm_rpc_requests_total{code="OK",method="CreateLead",service="leads"}',
        'crm_idempotent_replays_total{method="CreateLead",service="leads"}',
        'crm_rpc_duration_seconds_bucket{le="0.1",method="CreateLead",service="leads"}',
        'crm_events_written_total{service="leads"}',
        'crm_subscribers{service="leads"} 1.0',
    ):
        assert line in text, line


async def test_every_access_log_line_carries_the_request_id_and_never_the_token(
    leads: leads_pb2_grpc.LeadsServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    formatter = logs.JsonFormatter("leads")
    with caplog.at_level(logging.INFO, logger="crm.access"):
        await leads.CreateLead(pb.CreateLeadRequest(name="Ada", phone="+14155550123"),
                               metadata=idempotency(new_key(), ("x-request-id", "req-42")))
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "crm.access"]
    (line,) = [x for x in lines if x.get("rpc") == "CreateLead"]
    assert (line["request_id"], line["principal"], line["code"]) == ("req-42", "alice", "OK")
    assert TOKENS["alice"] not in json.dumps(lines)
