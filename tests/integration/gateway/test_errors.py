"""The error table of gateway.errors, row by row, over HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2
from google.protobuf.message import Message

from gateway.app import RunningGateway
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import (
    FakeUpstream,
    aborting,
    create_lead,
    grpc_code,
    new_key,
    refusal,
    request,
)
from tests.support.servers import wait_until

SEND = {"leadId": "lead-1", "body": "See you at 3pm"}


async def test_a_mutating_call_without_a_key_is_400_key_missing(
    api: aiohttp.ClientSession,
) -> None:
    refused = await request(api, "POST", "/v1/leads",
                            json_body={"name": "Ada", "phone": "+14155550123"})
    assert (refused.status, refused.reason, refused.domain) == (
        400, "IDEMPOTENCY_KEY_MISSING", "leads")
    assert refused.body["code"] == grpc_code("INVALID_ARGUMENT")
    assert refused.detail("BadRequest")["fieldViolations"][0]["field"] == "idempotency-key"


async def test_the_same_key_with_another_request_is_422_key_reused(
    api: aiohttp.ClientSession,
) -> None:
    key = new_key()
    await create_lead(api, key=key)
    refused = await request(api, "POST", "/v1/leads", key=key,
                            json_body={"name": "Someone Else", "phone": "+14155550199"})
    assert (refused.status, refused.reason) == (422, "IDEMPOTENCY_KEY_REUSED")


async def test_a_key_still_in_use_is_409(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    fake.script["leads", "CreateLead"] = aborting(refusal(
        grpc_code("ABORTED"), "IDEMPOTENCY_KEY_IN_USE", "a call with this key is still running"))
    refused = await request(client(fake_gateway), "POST", "/v1/leads", key=new_key(),
                            json_body={"name": "Ada", "phone": "+14155550123"})
    assert (refused.status, refused.reason, refused.body["code"]) == (
        409, "IDEMPOTENCY_KEY_IN_USE", grpc_code("ABORTED"))


async def test_a_concurrent_duplicate_is_409_in_use_or_the_same_answer_replayed(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    """Two presses at once with one key: the second finds the first still running."""
    running: set[str] = set()
    finish = asyncio.Event()

    async def create(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        key = dict(context.invocation_metadata())["idempotency-key"]
        if key in running:
            return await aborting(refusal(grpc_code("ABORTED"), "IDEMPOTENCY_KEY_IN_USE",
                                          "still running"))(request_, context)
        running.add(key)
        await finish.wait()
        return leads_pb2.Lead(lead_id="lead-1", name="Ada")

    fake.script["leads", "CreateLead"] = create
    api, key = client(fake_gateway), new_key()
    body = {"name": "Ada", "phone": "+14155550123"}
    first = asyncio.create_task(request(api, "POST", "/v1/leads", key=key, json_body=body))
    await wait_until(lambda: key in running)  # the first press is being served
    second = await request(api, "POST", "/v1/leads", key=key, json_body=body)
    assert (second.status, second.reason) == (409, "IDEMPOTENCY_KEY_IN_USE")
    finish.set()
    assert (await first).status == 200


async def test_state_conflicts_are_409_with_their_reason(api: aiohttp.ClientSession) -> None:
    lead = await create_lead(api)
    path = f"/v1/leads/{lead['leadId']}:updateStatus"
    same = await request(api, "POST", path, json_body={"status": "LEAD_STATUS_NEW"}, key=new_key())
    assert (same.status, same.reason, same.body["code"]) == (
        409, "STATUS_UNCHANGED", grpc_code("FAILED_PRECONDITION"))
    won = await request(api, "POST", path, json_body={"status": "LEAD_STATUS_WON"}, key=new_key())
    assert won.status == 200
    back = await request(api, "POST", path, json_body={"status": "LEAD_STATUS_NEW"}, key=new_key())
    assert (back.status, back.reason) == (409, "INVALID_STATUS_TRANSITION")


async def test_a_refused_batch_is_409_naming_every_offending_lead(
    api: aiohttp.ClientSession,
) -> None:
    one, two = await create_lead(api, name="One"), await create_lead(api, name="Two")
    for lead in (one, two):
        await request(api, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                      json_body={"status": "LEAD_STATUS_LOST"}, key=new_key())
    refused = await request(api, "POST", "/v1/leads:batchUpdateStatus", key=new_key(),
                            json_body={"leadIds": [one["leadId"], two["leadId"]],
                                       "status": "LEAD_STATUS_WON"})
    assert (refused.status, refused.reason) == (409, "INVALID_STATUS_TRANSITION")
    subjects = {v["subject"] for v in refused.detail("PreconditionFailure")["violations"]}
    assert subjects == {f"leads/{one['leadId']}", f"leads/{two['leadId']}"}


async def test_a_stale_expected_version_is_409_version_mismatch(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    path = f"/v1/leads/{lead['leadId']}:updateStatus"
    await request(api, "POST", path, json_body={"status": "LEAD_STATUS_CONTACTED"}, key=new_key())
    stale = await request(api, "POST", path, key=new_key(),
                          json_body={"status": "LEAD_STATUS_QUALIFIED", "expectedVersion": 1})
    assert (stale.status, stale.reason, stale.body["code"]) == (
        409, "VERSION_MISMATCH", grpc_code("ABORTED"))


async def test_an_open_breaker_is_503_with_retry_after_rounded_up_from_the_retry_info(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    fake.script["messaging", "SendSms"] = aborting(refusal(
        grpc_code("UNAVAILABLE"), "PROVIDER_CIRCUIT_OPEN", "the SMS provider is failing",
        domain="messaging", retry_after=2.2))
    refused = await request(client(fake_gateway), "POST", "/v1/messages", key=new_key(),
                            json_body=SEND)
    assert (refused.status, refused.reason, refused.domain) == (
        503, "PROVIDER_CIRCUIT_OPEN", "messaging")
    assert refused.headers["Retry-After"] == "3"
    assert refused.detail("RetryInfo")["retryDelay"] == "2.200s"
    assert refused.body["message"] == "the SMS provider is failing"


async def test_without_credentials_or_with_a_bad_token_it_is_401(
    gateway: RunningGateway, client: Client,
) -> None:
    nobody = await request(client(gateway, who=None), "GET", "/v1/leads")
    assert (nobody.status, nobody.reason) == (401, "MISSING_CREDENTIALS")
    assert nobody.headers["WWW-Authenticate"].startswith("Bearer")
    forged = await request(client(gateway, who=None), "GET", "/v1/leads",
                           headers={"Authorization": "Bearer not-a-token-of-ours-at-all"})
    assert (forged.status, forged.reason) == (401, "INVALID_TOKEN")


async def test_an_unknown_lead_is_404_with_the_services_reason(
    api: aiohttp.ClientSession,
) -> None:
    missing = await request(api, "GET", "/v1/leads/no-such-lead")
    assert (missing.status, missing.reason, missing.domain) == (404, "LEAD_NOT_FOUND", "leads")
    assert missing.body["details"][0]["metadata"] == {"lead_id": "no-such-lead"}


async def test_a_body_over_the_limit_is_413_as_a_status(
    api: aiohttp.ClientSession, leads_server: RunningService,
) -> None:
    refused = await request(api, "POST", "/v1/leads", key=new_key(),
                            json_body={"name": "x" * (70 * 1024), "phone": "+14155550123"})
    assert (refused.status, refused.reason, refused.domain) == (413, "BODY_TOO_LARGE", "gateway")
    assert refused.body["code"] == grpc_code("RESOURCE_EXHAUSTED")
    assert (await request(api, "GET", "/v1/leads")).body["leads"] == []


async def test_an_upstream_cancel_is_499_and_a_slow_one_504(
    start_gateway: StartGateway, fake: FakeUpstream, client: Client,
) -> None:
    gateway = await start_gateway(CRM_LEADS_TARGET=fake.target,
                                  CRM_GATEWAY_DEADLINE_SECONDS="0.3")

    async def slow(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        await asyncio.Event().wait()  # never answers: only the gateway's deadline ends it
        return leads_pb2.Lead()

    fake.script["leads", "GetLead"] = slow
    fake.script["leads", "ListLeads"] = aborting(refusal(grpc_code("CANCELLED"), "CANCELLED",
                                                         "the call was cancelled"))
    api = client(gateway)
    # The upstream never answers: a 504 at all is the gateway's deadline ending it.
    late = await request(api, "GET", "/v1/leads/lead-1")
    assert (late.status, late.body["code"]) == (504, grpc_code("DEADLINE_EXCEEDED"))
    cancelled = await request(api, "GET", "/v1/leads")
    assert (cancelled.status, cancelled.body["code"]) == (499, grpc_code("CANCELLED"))


async def test_an_upstream_that_is_down_is_503_at_once_never_500_or_a_hang(
    gateway: RunningGateway, client: Client,
) -> None:
    down = await request(client(gateway), "GET", "/v1/messaging/provider")
    assert (down.status, down.reason, down.domain) == (503, "UPSTREAM_UNAVAILABLE", "gateway")
    assert down.headers["Retry-After"] == "1"
    assert down.detail("ErrorInfo")["metadata"] == {"service": "messaging"}


async def test_codes_without_a_row_of_their_own_map_as_grpc_gateway_maps_them(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    expected = {"ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNKNOWN": 500,
                "DATA_LOSS": 500}
    api = client(fake_gateway)
    for code, status in expected.items():
        fake.script["messaging", "GetProviderStatus"] = aborting(
            refusal(grpc_code(code), code, f"a {code}"))
        answer = await request(api, "GET", "/v1/messaging/provider")
        assert (answer.status, answer.body["code"], answer.body["message"]) == (
            status, grpc_code(code), f"a {code}"), code


async def test_a_success_from_the_fake_is_transcoded_too(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    async def status(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        return messaging_pb2.ProviderStatus(provider="twilio",
                                            state=messaging_pb2.BREAKER_STATE_OPEN, sent_count=12)

    fake.script["messaging", "GetProviderStatus"] = status
    answer = await request(client(fake_gateway), "GET", "/v1/messaging/provider")
    assert answer.status == 200
    assert (answer.body["state"], answer.body["sentCount"], answer.body["openedAt"]) == (
        "BREAKER_STATE_OPEN", "12", None)
