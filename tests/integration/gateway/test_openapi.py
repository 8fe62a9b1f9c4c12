"""/openapi.json: every route, made from the contracts, loadable by schemathesis, and true."""

from __future__ import annotations

from typing import Any

import aiohttp
import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2

from gateway.app import RunningGateway
from gateway.transcoding import bindings
from tests.integration.gateway.conftest import Client
from tests.integration.gateway.support import create_lead, new_key, request

HAND_MADE = {
    ("get", "/v1/events"), ("post", "/api/bookings/confirm"), ("post", "/api/leads/send-sms"),
    ("get", "/api/leads/{leadId}/sms-history"), ("post", "/api/leads/update-status"),
    ("post", "/auth/login"), ("get", "/auth/session"), ("post", "/auth/logout"),
    ("post", "/webhooks/twilio/status"), ("post", "/webhooks/twilio/inbound"),
    ("get", "/healthz"),
}


@pytest.fixture
async def document(api: aiohttp.ClientSession) -> dict[str, Any]:
    answer = await request(api, "GET", "/openapi.json")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    return dict(answer.body)


def conforms(document: dict[str, Any], schema: str, instance: Any) -> None:
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{schema}",
                                             "components": document["components"]})
    validator.validate(instance)


async def test_every_annotated_route_and_every_hand_made_one_is_listed(
    document: dict[str, Any],
) -> None:
    assert document["openapi"] == "3.1.0"
    listed = {(verb, path) for path, item in document["paths"].items() for verb in item}
    for binding in bindings():
        verb, path = binding.verb.lower(), binding.path.openapi_path
        assert (verb, path) in listed, binding.name
        operation = document["paths"][path][verb]
        in_path = {p["name"] for p in operation["parameters"] if p.get("in") == "path"}
        assert in_path == {field for _, field in binding.path.variables}
        assert ("requestBody" in operation) == bool(binding.body)
        # Every error status it can answer, each a google.rpc.Status; 409 and 422 (a
        # conflict, a key reused) only where an idempotency key is sent.
        errors = {s: r for s, r in operation["responses"].items() if s >= "400"}
        assert all(r == {"$ref": "#/components/responses/Error"} for r in errors.values())
        assert {"400", "401", "403", "404", "429", "500", "503", "504"} <= set(errors)
        assert ({"409", "422"} <= set(errors)) == binding.mutating
    assert ("post", "/v1/leads/{lead_id}:updateStatus") in listed
    assert ("post", "/v1/leads:batchUpdateStatus") in listed
    assert listed >= HAND_MADE
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "A token from CRM_API_TOKENS"}


async def test_schemas_follow_the_json_mapping_and_field_behaviour(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    lead = schemas["crm.leads.v1.Lead"]["properties"]
    assert lead["version"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$",
                               "readOnly": True}
    assert lead["createdAt"]["format"] == "date-time" and lead["createdAt"]["readOnly"]
    assert lead["status"]["type"] == "string"
    assert "LEAD_STATUS_NEGOTIATING" in lead["status"]["enum"]
    assert schemas["crm.leads.v1.CreateLeadRequest"]["required"] == ["name", "phone"]
    reset = schemas["crm.messaging.v1.ProviderStatus"]["properties"]["resetTimeout"]
    assert reset["type"] == ["string", "null"] and reset["pattern"].endswith("s$")
    assert "google.rpc.Status" in schemas and "crm.bookings.v1.Event" in schemas
    for file in (leads_pb2, bookings_pb2, messaging_pb2):
        for name in file.DESCRIPTOR.message_types_by_name:
            assert f"{file.DESCRIPTOR.package}.{name}" in schemas
    list_leads = document["paths"]["/v1/leads"]["get"]["parameters"]
    assert {p["name"] for p in list_leads} == {"status", "pageSize", "pageToken", "phone"}
    batch = document["paths"]["/v1/leads:batchUpdateStatus"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in batch["parameters"]


async def test_schemathesis_loads_it_and_can_make_a_request_for_every_operation(
    document: dict[str, Any],
) -> None:
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(bindings()) + len(HAND_MADE) + 1  # and /openapi.json
    for operation in operations:
        assert one_case(operation.as_strategy()).operation is operation


def one_case(strategy: Any) -> Any:
    """One generated case (no shrinking: any case proves the operation can be fuzzed)."""
    found: list[Any] = []

    @hypothesis.given(strategy)
    @hypothesis.settings(max_examples=1, phases=[hypothesis.Phase.generate], database=None,
                         deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
    def draw(case: Any) -> None:
        found.append(case)

    draw()
    return found[0]


async def test_real_answers_conform_to_the_document(
    document: dict[str, Any], api: aiohttp.ClientSession,
) -> None:
    lead = await create_lead(api)
    conforms(document, "crm.leads.v1.Lead", lead)
    moved = await request(api, "POST", f"/v1/leads/{lead['leadId']}:updateStatus",
                          json_body={"status": "LEAD_STATUS_CONTACTED"}, key=new_key())
    conforms(document, "crm.leads.v1.Lead", moved.body)
    trail = await request(api, "GET", f"/v1/leads/{lead['leadId']}/statusChanges")
    conforms(document, "crm.leads.v1.ListStatusChangesResponse", trail.body)
    refused = await request(api, "GET", "/v1/leads/no-such-lead")
    conforms(document, "google.rpc.Status", refused.body)
    with pytest.raises(ValueError):
        conforms(document, "crm.leads.v1.Lead", {**lead, "version": 2})


async def test_appointments_conform_too(bookings_gateway: RunningGateway, client: Client,
                                        document: dict[str, Any]) -> None:
    api = client(bookings_gateway)
    lead = await create_lead(api)
    booked = await request(api, "POST", "/v1/appointments", key=new_key(), json_body={
        "leadId": lead["leadId"], "agentId": "agent-doc", "startTime": "2031-07-07T09:00:00Z",
        "endTime": "2031-07-07T10:00:00Z"})
    assert booked.status == 200, booked.body
    conforms(document, "crm.bookings.v1.Appointment", booked.body)
