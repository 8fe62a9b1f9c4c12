"""What headers carry upstream and back, and the headers every response carries."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import grpc
from crm.leads.v1 import leads_pb2
from google.protobuf.message import Message

from gateway.app import CONTENT_SECURITY_POLICY, RunningGateway
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import FakeUpstream, create_lead, new_key, request
from tests.support.servers import TOKENS

SECURITY = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def echo_lead(request_: Message, context: grpc.aio.ServicerContext) -> Message:
    return leads_pb2.Lead(lead_id="lead-1", name="Ada")


async def test_authorization_idempotency_key_and_request_id_travel_as_metadata(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    fake.script["leads", "CreateLead"] = echo_lead
    api = client(fake_gateway)
    body = {"name": "Ada", "phone": "+14155550123"}
    first = await request(api, "POST", "/v1/leads", json_body=body,
                          headers={"Idempotency-Key": "key-one", "X-Request-Id": "req-123"})
    second = await request(api, "POST", "/v1/leads", json_body=body,
                           headers={"X-Idempotency-Key": "key-two"})
    assert first.status == second.status == 200
    one, two = fake.calls("CreateLead")
    assert one.metadata["authorization"] == f"Bearer {TOKENS['alice']}"
    assert (one.metadata["idempotency-key"], one.metadata["x-request-id"]) == ("key-one",
                                                                               "req-123")
    assert first.headers["X-Request-Id"] == "req-123"
    assert two.metadata["idempotency-key"] == "key-two"
    assert re.fullmatch(r"[0-9a-f]{32}", second.headers["X-Request-Id"])
    assert two.metadata["x-request-id"] == second.headers["X-Request-Id"]


async def test_two_different_keys_at_once_or_an_unprintable_one_are_refused_here(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    api = client(fake_gateway)
    both = await request(api, "POST", "/v1/leads", json_body={},
                         headers={"Idempotency-Key": "a", "X-Idempotency-Key": "b"})
    assert (both.status, both.reason, both.domain) == (400, "IDEMPOTENCY_KEY_INVALID", "gateway")
    assert fake.received == []


async def test_a_replayed_call_says_so_in_idempotent_replayed(
    api: aiohttp.ClientSession,
) -> None:
    key = new_key()
    body = {"name": "Grace Hopper", "phone": "+14155550100"}
    first = await request(api, "POST", "/v1/leads", json_body=body,
                          headers={"X-Idempotency-Key": key})
    again = await request(api, "POST", "/v1/leads", json_body=body, key=key)
    assert first.status == again.status == 200
    assert again.body == first.body
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_a_replayed_refusal_says_so_too(api: aiohttp.ClientSession) -> None:
    lead = await create_lead(api)
    path, key = f"/v1/leads/{lead['leadId']}:updateStatus", new_key()
    first = await request(api, "POST", path, json_body={"status": "LEAD_STATUS_NEW"}, key=key)
    again = await request(api, "POST", path, json_body={"status": "LEAD_STATUS_NEW"}, key=key)
    assert first.status == again.status == 409
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_every_response_carries_the_security_headers_and_api_ones_no_store(
    start_gateway: StartGateway, client: Client, tmp_path: Path,
) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>CRM</title>")
    gateway = await start_gateway()
    api = client(gateway)
    for method, path in [("GET", "/"), ("GET", "/v1/leads"), ("GET", "/v1/nowhere"),
                         ("POST", "/v1/leads"), ("GET", "/openapi.json"), ("GET", "/healthz"),
                         ("GET", "/static/missing.js"), ("POST", "/webhooks/twilio/status")]:
        answer = await request(api, method, path)
        for name, value in SECURITY.items():
            assert answer.headers.get(name) == value, (path, name)
        assert "X-Request-Id" in answer.headers
        if path != "/":
            assert answer.headers["Cache-Control"] == "no-store", path
        if answer.status >= 400:
            assert answer.headers["Content-Type"].startswith("application/json"), path
            assert "code" in answer.body and "details" in answer.body, path


async def test_https_deployments_also_get_strict_transport_security(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway(CRM_PUBLIC_URL="https://crm.example.com")
    answer = await request(client(gateway), "GET", "/healthz")
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = await start_gateway(CRM_PUBLIC_URL="http://127.0.0.1:8080")
    assert "Strict-Transport-Security" not in (
        await request(client(plain), "GET", "/healthz")).headers
