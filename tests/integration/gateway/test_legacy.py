"""The original API, unchanged: its routes, lowercase statuses and X-Idempotency-Key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import jsonschema
import pytest
from crm.messaging.v1 import messaging_pb2
from google.protobuf.message import Message

from gateway.app import RunningGateway
from gateway.legacy import REQUESTS
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import (
    Answer,
    FakeUpstream,
    aborting,
    create_lead,
    grpc_code,
    new_key,
    refusal,
    request,
)


async def legacy_post(session: aiohttp.ClientSession, path: str, body: Any,
                      key: str | None = "fresh") -> Answer:
    headers = {} if key is None else {"X-Idempotency-Key": new_key() if key == "fresh" else key}
    return await request(session, "POST", path, json_body=body, headers=headers)


async def test_one_lead_moves_with_a_lowercase_status_and_a_retry_is_replayed(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    key = new_key()
    body = {"leadId": lead["leadId"], "status": "proposal_sent"}
    moved = await legacy_post(api, "/api/leads/update-status", body, key)
    assert moved.status == 200, moved.body
    assert moved.body["success"] is True
    assert (moved.body["lead"]["leadId"], moved.body["lead"]["status"]) == (lead["leadId"],
                                                                            "proposal_sent")
    again = await legacy_post(api, "/api/leads/update-status", body, key)
    assert (again.status, again.body) == (200, moved.body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await request(api, "GET", f"/v1/leads/{lead['leadId']}")).body["version"] == "2"


async def test_several_leads_move_at_once_and_those_already_there_are_unchanged(
    api: aiohttp.ClientSession,
) -> None:
    one, two = await create_lead(api, name="One"), await create_lead(api, name="Two")
    await legacy_post(api, "/api/leads/update-status", {"leadId": two["leadId"],
                                                        "status": "contacted"})
    moved = await legacy_post(api, "/api/leads/update-status",
                              {"leadIds": [one["leadId"], two["leadId"]], "status": "contacted"})
    assert moved.status == 200, moved.body
    assert moved.body["success"] is True
    assert [(x["leadId"], x["status"]) for x in moved.body["updated"]] == [
        (one["leadId"], "contacted")]
    assert moved.body["unchanged"] == [two["leadId"]]


async def test_a_version_may_be_expected_as_the_original_api_allowed(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    stale = await legacy_post(api, "/api/leads/update-status",
                              {"leadId": lead["leadId"], "status": "won", "expectedVersion": 7})
    assert (stale.status, stale.body["reason"]) == (409, "VERSION_MISMATCH")


@pytest.mark.parametrize("expected", [0, 7, "7", "0007", 2**63 - 1, str(2**63 - 1), 7.0,
                                      "0" + "9" * 18])
async def test_every_expected_version_the_published_schema_admits_is_taken(
    api: aiohttp.ClientSession, expected: object,
) -> None:
    schema = REQUESTS["update_status"]["oneOf"][0]["properties"]["expectedVersion"]
    assert jsonschema.Draft202012Validator(schema).is_valid(expected)
    lead = await create_lead(api)
    stale = await legacy_post(api, "/api/leads/update-status",
                              {"leadId": lead["leadId"], "status": "won",
                               "expectedVersion": expected})
    assert (stale.status, stale.body["reason"]) == (409, "VERSION_MISMATCH"), stale.body


@pytest.mark.parametrize("expected", [-1, 2**63, 1.5, True, "", "7a", "-1", "²", "\uff11",
                                      str(2**63), "9" * 20])
async def test_an_expected_version_the_published_schema_refuses_is_a_400_naming_it(
    api: aiohttp.ClientSession, expected: object,
) -> None:
    schema = REQUESTS["update_status"]["oneOf"][0]["properties"]["expectedVersion"]
    assert not jsonschema.Draft202012Validator(schema).is_valid(expected)
    lead = await create_lead(api)
    refused = await legacy_post(api, "/api/leads/update-status",
                                {"leadId": lead["leadId"], "status": "won",
                                 "expectedVersion": expected})
    assert refused.status == 400, refused.body
    (violation,) = [d for d in refused.body["details"] if "fieldViolations" in d]
    assert [v["field"] for v in violation["fieldViolations"]] == ["expectedVersion"]


async def test_refusals_keep_the_v1_status_codes_in_the_original_shape(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    no_key = await legacy_post(api, "/api/leads/update-status",
                               {"leadId": lead["leadId"], "status": "won"}, key=None)
    assert no_key.status == 400
    assert no_key.body["success"] is False
    assert no_key.body["reason"] == "IDEMPOTENCY_KEY_MISSING"
    assert no_key.body["error"].startswith("idempotency-key")
    assert no_key.body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    unchanged = await legacy_post(api, "/api/leads/update-status",
                                  {"leadId": lead["leadId"], "status": "new"})
    assert (unchanged.status, unchanged.body["reason"]) == (409, "STATUS_UNCHANGED")
    assert set(unchanged.body) == {"success", "error", "reason", "details"}
    unknown = await legacy_post(api, "/api/leads/update-status",
                                {"leadId": lead["leadId"], "status": "promoted"})
    assert (unknown.status, unknown.body["reason"]) == (400, "INVALID_ARGUMENT")
    assert "new, contacted, qualified" in unknown.body["error"]
    both = await legacy_post(api, "/api/leads/update-status",
                             {"leadId": lead["leadId"], "leadIds": [lead["leadId"]],
                              "status": "won"})
    assert (both.status, both.body["success"]) == (400, False)
    missing = await legacy_post(api, "/api/leads/update-status",
                                {"leadId": "no-such-lead", "status": "won"})
    assert (missing.status, missing.body["reason"]) == (404, "LEAD_NOT_FOUND")
    large = await legacy_post(api, "/api/leads/update-status",
                              {"leadId": "x" * 70_000, "status": "won"})
    assert (large.status, large.body["reason"]) == (413, "BODY_TOO_LARGE")


async def test_the_original_api_needs_credentials_like_the_rest(
    gateway: RunningGateway, client: Client,
) -> None:
    refused = await legacy_post(client(gateway, who=None), "/api/leads/update-status",
                                {"leadId": "x", "status": "won"})
    assert (refused.status, refused.body["success"], refused.body["reason"]) == (
        401, False, "MISSING_CREDENTIALS")


async def test_an_appointment_is_confirmed_once_and_a_second_confirm_is_409(
    bookings_gateway: RunningGateway, client: Client,
) -> None:
    api = client(bookings_gateway)
    lead = await create_lead(api)
    start = datetime(2031, 5, 5, 9, tzinfo=UTC)
    booked = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
        "leadId": lead["leadId"], "agentId": "agent-legacy",
        "startTime": start.isoformat(), "endTime": (start + timedelta(hours=1)).isoformat()})
    assert booked.status == 200, booked.body
    appointment_id = booked.body["appointmentId"]
    confirmed = await legacy_post(api, "/api/bookings/confirm", {"appointmentId": appointment_id})
    assert confirmed.status == 200, confirmed.body
    assert confirmed.body["success"] is True
    assert confirmed.body["appointment"]["status"] == "confirmed"
    assert confirmed.body["appointment"]["confirmedBy"] == "alice"
    again = await legacy_post(api, "/api/bookings/confirm", {"appointmentId": appointment_id})
    assert (again.status, again.body["reason"]) == (409, "ALREADY_CONFIRMED")
    missing = await legacy_post(api, "/api/bookings/confirm", {})
    assert (missing.status, missing.body["details"][1]["fieldViolations"][0]["field"]) == (
        400, "appointmentId")


async def test_a_text_is_sent_and_the_history_lists_it_newest_first(
    messaging_gateway: RunningGateway, client: Client,
) -> None:
    api = client(messaging_gateway)
    lead = await create_lead(api)
    bodies = ["First text", "Second text"]
    for body in bodies:
        sent = await legacy_post(api, "/api/leads/send-sms",
                                 {"leadId": lead["leadId"], "message": body})
        assert sent.status == 200, sent.body
        assert sent.body["success"] is True
        assert sent.body["message"]["body"] == body
        assert sent.body["message"]["status"].islower()
        # Enum values as the original API wrote them, without the contract's prefix.
        assert (sent.body["message"]["direction"], sent.body["message"]["encoding"],
                sent.body["message"]["status"]) == ("OUTBOUND", "GSM_7", "delivered")
    history = await request(api, "GET", f"/api/leads/{lead['leadId']}/sms-history")
    assert history.status == 200
    assert history.body["success"] is True and history.body["truncated"] is False
    assert [m["body"] for m in history.body["messages"]] == bodies[::-1]


async def test_an_open_breaker_keeps_its_503_and_retry_after_in_the_original_shape(
    fake_gateway: RunningGateway, fake: FakeUpstream, client: Client,
) -> None:
    fake.script["messaging", "SendSms"] = aborting(refusal(
        grpc_code("UNAVAILABLE"), "PROVIDER_CIRCUIT_OPEN", "the SMS provider is failing",
        retry_after=4.5))
    refused = await legacy_post(client(fake_gateway), "/api/leads/send-sms",
                                {"leadId": "lead-1", "message": "Hello"})
    assert (refused.status, refused.headers["Retry-After"]) == (503, "5")
    assert refused.body["reason"] == "PROVIDER_CIRCUIT_OPEN"
    assert refused.body["error"] == "the SMS provider is failing"
    # The channel's retry policy tried again (UNAVAILABLE), always with the same key.
    calls = fake.calls("SendSms")
    assert len({c.metadata["idempotency-key"] for c in calls}) == 1
    assert {(c.request.lead_id, c.request.body) for c in calls} == {  # type: ignore[attr-defined]
        ("lead-1", "Hello")}


def paged_history(total: int, page: int) -> Any:
    async def list_messages(request_: Message, context: grpc.aio.ServicerContext) -> Message:
        wanted: Any = request_
        start = int(wanted.page_token or 0)
        size = min(page, wanted.page_size or page)
        end = min(total, start + size)
        return messaging_pb2.ListMessagesResponse(
            messages=[messaging_pb2.Message(message_id=f"m{i}", body=f"text {i}",
                                            status=messaging_pb2.MESSAGE_STATUS_DELIVERED)
                      for i in range(start, end)],
            next_page_token=str(end) if end < total else "",
        )

    return list_messages


async def test_the_history_follows_page_tokens_up_to_its_cap(
    start_gateway: StartGateway, fake: FakeUpstream, client: Client,
) -> None:
    fake.script["messaging", "ListMessages"] = paged_history(total=7, page=3)
    gateway = await start_gateway(CRM_MESSAGING_TARGET=fake.target)
    history = await request(client(gateway), "GET", "/api/leads/lead-1/sms-history")
    assert [m["messageId"] for m in history.body["messages"]] == [f"m{i}" for i in range(7)]
    assert history.body["messages"][0]["status"] == "delivered"
    assert history.body["truncated"] is False
    capped = await start_gateway(CRM_MESSAGING_TARGET=fake.target, CRM_LEGACY_HISTORY_MAX="5")
    fake.received.clear()
    short = await request(client(capped), "GET", "/api/leads/lead-1/sms-history")
    assert [m["messageId"] for m in short.body["messages"]] == [f"m{i}" for i in range(5)]
    assert short.body["truncated"] is True
    assert all(c.request.lead_id == "lead-1" for c in fake.calls("ListMessages"))  # type: ignore[attr-defined]
