"""Every /v1 route, transcoded from the contracts' annotations, against the real services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from gateway.app import RunningGateway
from tests.integration.gateway.conftest import Client
from tests.integration.gateway.support import Answer, create_lead, new_key, request


async def move(api: aiohttp.ClientSession, lead_id: str, status: str, key: str | None = None,
               **extra: Any) -> Answer:
    return await request(api, "POST", f"/v1/leads/{lead_id}:updateStatus",
                         json_body={"status": status, **extra}, key=key or new_key())


async def test_a_created_lead_comes_back_in_lower_camel_case_with_every_field(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api, name=" Ada Lovelace ", phone="(415) 555-0123")
    assert set(lead) == {"leadId", "name", "phone", "email", "status", "version", "createdBy",
                         "createdAt", "updatedAt", "phoneDisplay"}
    assert (lead["name"], lead["phone"], lead["status"], lead["version"]) == (
        "Ada Lovelace", "+14155550123", "LEAD_STATUS_NEW", "1")  # int64 as a string, enum by name
    assert lead["phoneDisplay"] == "+1 415-555-0123"
    assert lead["createdBy"] == "alice"
    datetime.fromisoformat(lead["createdAt"].replace("Z", "+00:00"))
    fetched = await request(api, "GET", f"/v1/leads/{lead['leadId']}")
    assert (fetched.status, fetched.body) == (200, lead)


async def test_list_leads_reads_filters_and_paging_from_the_query_in_either_spelling(
    api: aiohttp.ClientSession,
) -> None:
    first = await create_lead(api, name="First")
    second = await create_lead(api, name="Second")
    moved = await create_lead(api, name="Moved")
    assert (await move(api, moved["leadId"], "LEAD_STATUS_CONTACTED")).status == 200
    page = await request(api, "GET", "/v1/leads",
                         params={"status": "LEAD_STATUS_NEW", "pageSize": "1"})
    assert page.status == 200
    assert [x["leadId"] for x in page.body["leads"]] == [second["leadId"]]
    rest = await request(api, "GET", "/v1/leads", params={
        "status": "1", "page_size": "5", "page_token": page.body["nextPageToken"]})
    assert [x["leadId"] for x in rest.body["leads"]] == [first["leadId"]]
    assert rest.body["nextPageToken"] == ""  # unpopulated fields are still written
    everyone = await request(api, "GET", "/v1/leads")
    assert {x["leadId"] for x in everyone.body["leads"]} == {
        first["leadId"], second["leadId"], moved["leadId"]}


async def test_a_custom_method_moves_a_lead_and_the_audit_trail_names_the_caller_and_key(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    moved = await move(api, lead["leadId"], "LEAD_STATUS_CONTACTED", key="first-http-key",
                       expectedVersion="1")
    assert moved.status == 200
    assert (moved.body["status"], moved.body["version"]) == ("LEAD_STATUS_CONTACTED", "2")
    trail = await request(api, "GET", f"/v1/leads/{lead['leadId']}/statusChanges")
    assert trail.status == 200
    (change,) = trail.body["statusChanges"]
    assert change == {
        "leadId": lead["leadId"], "fromStatus": "LEAD_STATUS_NEW",
        "toStatus": "LEAD_STATUS_CONTACTED",
        "actor": "alice", "changedAt": change["changedAt"],
        "idempotencyKey": "first-http-key", "version": "2",
    }


async def test_the_path_variable_wins_over_the_same_field_in_the_body(
    api: aiohttp.ClientSession,
) -> None:
    target, other = await create_lead(api, name="Target"), await create_lead(api, name="Other")
    moved = await request(api, "POST", f"/v1/leads/{target['leadId']}:updateStatus",
                          json_body={"lead_id": other["leadId"], "status": "LEAD_STATUS_QUALIFIED"},
                          key=new_key())
    assert (moved.status, moved.body["leadId"]) == (200, target["leadId"])
    untouched = await request(api, "GET", f"/v1/leads/{other['leadId']}")
    assert untouched.body["status"] == "LEAD_STATUS_NEW"


async def test_a_batch_moves_leads_all_at_once_and_reports_those_already_there(
    api: aiohttp.ClientSession,
) -> None:
    one, two = await create_lead(api, name="One"), await create_lead(api, name="Two")
    await move(api, two["leadId"], "LEAD_STATUS_QUALIFIED")
    batch = await request(api, "POST", "/v1/leads:batchUpdateStatus", key=new_key(),
                          json_body={"lead_ids": [one["leadId"], two["leadId"]],
                                     "status": "LEAD_STATUS_QUALIFIED"})
    assert batch.status == 200, batch.body
    assert [x["leadId"] for x in batch.body["updatedLeads"]] == [one["leadId"]]
    assert batch.body["unchangedLeadIds"] == [two["leadId"]]


async def test_a_field_the_contract_does_not_have_is_refused_naming_it(
    api: aiohttp.ClientSession,
) -> None:
    refused = await request(api, "POST", "/v1/leads", key=new_key(),
                            json_body={"name": "Ada", "phone": "+14155550123", "nickname": "A"})
    assert (refused.status, refused.reason, refused.domain) == (400, "UNKNOWN_FIELD", "gateway")
    assert refused.body["code"] == 3
    (violation,) = refused.detail("BadRequest")["fieldViolations"]
    assert violation["field"] == "nickname"
    listed = await request(api, "GET", "/v1/leads")
    assert listed.body["leads"] == []


async def test_values_of_the_wrong_type_and_bad_json_are_refused_before_any_call(
    api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    wrong = await move(api, lead["leadId"], "PROMOTED")
    assert (wrong.status, wrong.reason) == (400, "INVALID_FIELD")
    assert wrong.detail("BadRequest")["fieldViolations"][0]["field"] == "status"
    version = await move(api, lead["leadId"], "LEAD_STATUS_WON", expectedVersion="soon")
    assert version.detail("BadRequest")["fieldViolations"][0]["field"] == "expectedVersion"
    shape = await request(api, "POST", "/v1/leads:batchUpdateStatus", key=new_key(),
                          json_body={"leadIds": lead["leadId"], "status": "LEAD_STATUS_WON"})
    assert (shape.status, shape.detail("BadRequest")["fieldViolations"][0]["field"]) == (
        400, "leadIds")
    async with api.post("/v1/leads", data=b"{not json", headers={
            "Idempotency-Key": new_key(), "Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert (await response.json())["details"][0]["reason"] == "INVALID_JSON"
    array = await request(api, "POST", "/v1/leads", json_body=[1, 2], key=new_key())
    assert (array.status, array.reason) == (400, "INVALID_JSON")
    assert (await request(api, "GET", f"/v1/leads/{lead['leadId']}")).body["version"] == "1"


async def test_unknown_or_malformed_query_parameters_are_refused_naming_them(
    api: aiohttp.ClientSession,
) -> None:
    cases = {
        "stauts=NEW": "stauts",
        "status=PROMOTED": "status",
        "pageSize=ten": "pageSize",
        "pageSize=1&pageSize=2": "pageSize",
    }
    for query, field in cases.items():
        refused = await request(api, "GET", f"/v1/leads?{query}")
        assert (refused.status, refused.reason) == (400, "INVALID_QUERY_PARAMETER"), query
        assert refused.detail("BadRequest")["fieldViolations"][0]["field"] == field
    body_route = await request(api, "POST", "/v1/leads?name=Ada", key=new_key(),
                               json_body={"name": "Ada", "phone": "+14155550123"})
    assert body_route.status == 400


async def test_routes_the_contract_does_not_have_are_404_and_wrong_methods_405(
    api: aiohttp.ClientSession,
) -> None:
    for path in ("/v1/nothing", "/v1/leads/some-id:promote", "/v1/leads/a/b"):
        missing = await request(api, "GET", path)
        assert (missing.status, missing.reason, missing.domain) == (
            404, "ROUTE_NOT_FOUND", "gateway"), path
        assert missing.body["code"] == 5
    wrong = await request(api, "DELETE", "/v1/leads")
    assert (wrong.status, wrong.reason) == (405, "METHOD_NOT_ALLOWED")
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    custom = await request(api, "GET", "/v1/leads:batchUpdateStatus")
    assert custom.status == 405


async def test_a_message_field_left_unset_is_written_as_null(
    bookings_gateway: RunningGateway, client: Client,
) -> None:
    api = client(bookings_gateway)
    lead = await create_lead(api)
    start = datetime(2031, 3, 3, 9, tzinfo=UTC)
    booked = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
        "leadId": lead["leadId"], "agentId": "agent-null",
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    })
    assert booked.status == 200, booked.body
    assert booked.body["confirmedAt"] is None and booked.body["cancelReason"] == ""
    assert booked.body["startTime"] == "2031-03-03T09:00:00Z"


async def test_every_bookings_route_answers_over_http(
    bookings_gateway: RunningGateway, client: Client,
) -> None:
    api = client(bookings_gateway)
    lead = await create_lead(api)
    start = datetime(2031, 4, 7, 9, tzinfo=UTC)

    def at(hours: float) -> str:
        return (start + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")

    booked = []
    for hours in (0, 2, 4):
        answer = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
            "leadId": lead["leadId"], "agentId": "agent-http", "startTime": at(hours),
            "endTime": at(hours + 1), "notes": "first call"})
        assert answer.status == 200, answer.body
        assert answer.body["status"] == "APPOINTMENT_STATUS_PENDING"
        booked.append(answer.body["appointmentId"])
    one, two, three = booked
    got = await request(api, "GET", f"/v1/appointments/{one}")
    assert (got.status, got.body["agentId"]) == (200, "agent-http")
    confirmed = await request(api, "POST", f"/v1/appointments/{one}:confirm", key=new_key())
    assert (confirmed.status, confirmed.body["status"], confirmed.body["confirmedBy"]) == (
        200, "APPOINTMENT_STATUS_CONFIRMED", "alice")
    cancelled = await request(api, "POST", f"/v1/appointments/{two}:cancel", key=new_key(),
                              json_body={"reason": "lead asked"})
    assert (cancelled.body["status"], cancelled.body["cancelReason"]) == (
        "APPOINTMENT_STATUS_CANCELLED", "lead asked")
    completed = await request(api, "POST", f"/v1/appointments/{one}:complete", key=new_key())
    assert completed.body["status"] == "APPOINTMENT_STATUS_COMPLETED"
    changes = await request(api, "GET", f"/v1/appointments/{one}/changes")
    assert [c["toStatus"] for c in changes.body["changes"]][-2:] == [
        "APPOINTMENT_STATUS_CONFIRMED", "APPOINTMENT_STATUS_COMPLETED"]
    listed = await request(api, "GET", "/v1/appointments", params=[
        ("leadId", lead["leadId"]), ("status", "APPOINTMENT_STATUS_PENDING"),
        ("windowStart", at(3)), ("window_end", at(10))])
    assert listed.status == 200, listed.body
    assert [a["appointmentId"] for a in listed.body["appointments"]] == [three]


async def test_every_messaging_route_answers_over_http(
    messaging_gateway: RunningGateway, client: Client,
) -> None:
    api = client(messaging_gateway)
    lead = await create_lead(api)
    sent = await request(api, "POST", "/v1/messages", key=new_key(),
                         json_body={"leadId": lead["leadId"], "body": "See you at 3pm"})
    assert sent.status == 200, sent.body
    assert (sent.body["leadId"], sent.body["direction"], sent.body["to"]) == (
        lead["leadId"], "DIRECTION_OUTBOUND", "+14155550123")
    got = await request(api, "GET", f"/v1/messages/{sent.body['messageId']}")
    assert (got.status, got.body["body"]) == (200, "See you at 3pm")
    history = await request(api, "GET", f"/v1/leads/{lead['leadId']}/messages")
    assert [m["messageId"] for m in history.body["messages"]] == [sent.body["messageId"]]
    provider = await request(api, "GET", "/v1/messaging/provider")
    assert provider.status == 200
    assert (provider.body["state"], provider.body["provider"]) == ("BREAKER_STATE_CLOSED",
                                                                   "console")
