"""The limits /openapi.json publishes are the ones the services enforce.

Both read the contracts' `crm.common.v1.rules`; these tests hold the document's
numbers to the validators' constants, and the document's patterns to what the
validators accept, value by value.
"""

from __future__ import annotations

import re
from typing import Any

from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

import services.bookings.messages as bookings_messages
import services.leads.messages as leads_messages
import services.messaging.messages as messaging_messages
from gateway import openapi, transcoding
from services.bookings import domain as bookings
from services.leads import domain as leads
from services.messaging import domain as messaging
from services.messaging import templates
from services.shared import paging, phones, rules, validation

DOCUMENT = openapi.document(transcoding.bindings(), "http://127.0.0.1:8080")
SCHEMAS = DOCUMENT["components"]["schemas"]


def prop(message: str, field: str) -> dict[str, Any]:
    schema: dict[str, Any] = SCHEMAS[message]["properties"][field]
    kinds = schema.get("type")
    return {**schema, "type": next(k for k in kinds if k != "null")} if isinstance(
        kinds, list) else schema


def query(path: str, name: str) -> dict[str, Any]:
    parameters = DOCUMENT["paths"][path]["get"]["parameters"]
    found: dict[str, Any] = next(p["schema"] for p in parameters if p.get("name") == name)
    return found


def test_the_documents_limits_are_the_validators() -> None:
    assert prop("crm.leads.v1.CreateLeadRequest", "name")["maxLength"] == leads.MAX_NAME_LENGTH
    assert prop("crm.leads.v1.CreateLeadRequest", "email")["maxLength"] == leads.MAX_EMAIL_LENGTH
    assert prop("crm.leads.v1.CreateLeadRequest", "phone")["maxLength"] == (
        phones.MAX_INPUT_LENGTH)
    assert prop("crm.leads.v1.BatchUpdateLeadStatusRequest", "leadIds")["maxItems"] == (
        leads.MAX_BATCH_SIZE)
    assert prop("crm.bookings.v1.CreateAppointmentRequest", "agentId")["maxLength"] == (
        bookings.MAX_AGENT_ID_LENGTH)
    assert prop("crm.bookings.v1.CreateAppointmentRequest", "leadId")["maxLength"] == (
        validation.MAX_ID_LENGTH)
    assert prop("crm.bookings.v1.CreateAppointmentRequest", "notes")["maxLength"] == (
        bookings.MAX_NOTES_LENGTH)
    assert prop("crm.bookings.v1.CancelAppointmentRequest", "reason")["maxLength"] == (
        bookings.MAX_REASON_LENGTH)
    assert prop("crm.messaging.v1.SaveMessageTemplateRequest", "name")["maxLength"] == (
        templates.MAX_NAME_LENGTH)
    assert prop("crm.messaging.v1.SaveMessageTemplateRequest", "body")["maxLength"] == (
        templates.MAX_BODY_LENGTH)
    # A text's length: one segment of GSM-7 under the default CRM_SMS_MAX_SEGMENTS, and
    # never more than the services' absolute limit whatever the setting.
    assert prop("crm.messaging.v1.SendSmsRequest", "body")["maxLength"] == 160
    assert rules.of(messaging_pb2.SendSmsRequest, "body").max_length == (
        messaging.MAX_BODY_CHARACTERS)
    assert all(openapi.sms_capacity(n) <= messaging.MAX_BODY_CHARACTERS
               for n in range(messaging.MIN_SEGMENTS, messaging.MAX_SEGMENTS + 1))
    for path in ("/v1/leads", "/v1/appointments", "/v1/messageTemplates"):
        assert query(path, "pageSize")["minimum"] == 0
        assert query(path, "pageToken")["maxLength"] == paging.MAX_TOKEN_LENGTH
    for service, known in (("leads", leads_messages.EVENT_TYPES),
                           ("bookings", bookings_messages.EVENT_TYPES),
                           ("messaging", messaging_messages.EVENT_TYPES)):
        assert prop(f"crm.{service}.v1.Event", "type")["enum"] == ["bookmark", *known]


def test_every_pattern_is_stated_in_words_and_reads_alike_in_python_and_ecma() -> None:
    patterns = {value for value in _walk(DOCUMENT, "pattern")}
    contract_patterns = {rules.of(leads_pb2.GetLeadRequest, "lead_id").pattern,
                         leads.NAME.pattern, leads.EMAIL.pattern}
    assert contract_patterns <= patterns
    for pattern in contract_patterns:
        assert not rules.words(pattern).startswith("text matching"), pattern
    for pattern in patterns:
        re.compile(pattern)
        # \s, \d, \w and friends mean different things in ECMA-262 and Python.
        assert not re.search(r"(?<!\\)\\[sSdDwWbB]", pattern), pattern


def _walk(value: Any, key: str) -> list[Any]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == key] + [
            x for v in value.values() for x in _walk(v, key)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v, key)]
    return []


TEXT = st.one_of(st.text(max_size=80), st.sampled_from(
    ["lead-1", "a b", "a/b", "a:b", "ü", "\u3000", " x ", "x\ty", "a@b.co", " a@b.co",
     "a@b", "\x85", "Ada\x7f", "\ufeffAda", "x" * 65, "x" * 64]))


@settings(max_examples=300, deadline=None)
@given(value=TEXT)
def test_the_patterns_accept_what_the_services_accept(value: str) -> None:
    ident = prop("crm.leads.v1.GetLeadRequest", "leadId")
    in_document = (ident["minLength"] <= len(value) <= ident["maxLength"]
                   and re.fullmatch(ident["pattern"], value) is not None)
    assert in_document == (validation.id_problem(value) is None)

    name = prop("crm.leads.v1.CreateLeadRequest", "name")
    in_document = (len(value) <= name["maxLength"]
                   and re.fullmatch(name["pattern"], value) is not None)
    assert in_document == (value.strip() != "" and rules.problem(leads.NAME, value) is None)
    email = prop("crm.leads.v1.CreateLeadRequest", "email")
    if re.fullmatch(email["pattern"], value) and value:
        assert value == value.strip() and "@" in value
