"""The system's original HTTP API, kept unchanged for its existing browser code.

It is served by calling the same RPCs as /v1 (ConfirmAppointment, SendSms,
ListMessages, UpdateLeadStatus, BatchUpdateLeadStatus), with the same headers
(`Authorization` or the session cookie + `X-CSRF-Token`, `X-Idempotency-Key` —
or `Idempotency-Key` — required on every POST, `X-Request-Id`,
`Idempotent-Replayed`) and the same HTTP statuses as /v1. Objects are the /v1
JSON objects (lowerCamelCase, every field present), except that enum values
go without the contract's prefix (`"direction": "OUTBOUND"`, not
`"DIRECTION_OUTBOUND"`) and `status` is lowercase, as the original API wrote
them. Unknown body fields are ignored, as the original API ignored them. The
request bodies are the JSON Schemas of REQUESTS below, which /openapi.json
publishes as they are.

    POST /api/bookings/confirm        {"appointmentId": "…"}
      200 {"success": true, "appointment": {…, "status": "confirmed"}}

    POST /api/leads/send-sms          {"leadId": "…", "message": "See you at 3pm"}
      200 {"success": true, "message": {…, "status": "queued"}}

    GET  /api/leads/{leadId}/sms-history
      200 {"success": true, "messages": [{…}, …], "truncated": false}
          both directions, newest first; page tokens are followed up to
          CRM_LEGACY_HISTORY_MAX messages (1000), and `truncated` says whether
          older ones were left out.

    POST /api/leads/update-status     {"leadId": "…", "status": "contacted",
                                       "expectedVersion": 3 (optional; a whole
                                       number, or a string of digits)}
      200 {"success": true, "lead": {…, "status": "contacted"}}
    POST /api/leads/update-status     {"leadIds": ["…", "…"], "status": "lost"}
      200 {"success": true, "updated": [{lead}, …], "unchanged": ["<leadId>", …]}
          all or nothing; leads already in the status are `unchanged`.

    statuses: the contract's LeadStatus values, lowercase and without their prefix:
              new, contacted, qualified, proposal_sent, negotiating, won, lost
              (any case is accepted)

Refusals have the HTTP status the /v1 API would give (gateway.errors) and the body

    {"success": false, "error": "<message>", "reason": "<REASON>",
     "details": [<the google.rpc.Status details: ErrorInfo, BadRequest, …>]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2
from google.protobuf.message import Message

from gateway import contracts
from gateway.bodies import read_json_object
from gateway.config import Settings
from gateway.errors import GatewayError, Refusal, Refused, status_json
from gateway.json_mapping import to_json
from gateway.sessions import Sessions
from gateway.upstream import Answer, Upstreams, metadata_for
from services.shared import rules
from services.shared.protos import enum_prefix, short_names

# The lead statuses as the original API writes them ("proposal_sent"), from the contract.
_LEAD_STATUS = {name.lower(): number
                for number, name in short_names(leads_pb2.LeadStatus.DESCRIPTOR).items()}
STATUSES = tuple(_LEAD_STATUS)
PAGE = 200
MAX_VERSION = 2**63 - 1

Schema = dict[str, Any]


def _string(rule: rules.FieldRules, format_: str = "") -> Schema:
    """A string as the contract's rules for the field it is passed to describe it."""
    schema: Schema = {"type": "string", "minLength": 1, "maxLength": rule.max_length,
                      "pattern": rule.pattern}
    if format_ or rule.format:
        schema["format"] = format_ or rule.format
    return schema


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_ID: Schema = _string(rules.of(leads_pb2.GetLeadRequest, "lead_id"))
_MESSAGE: Schema = _string(rules.of(messaging_pb2.SendSmsRequest, "body"))
_BATCH = rules.of(leads_pb2.BatchUpdateLeadStatusRequest, "lead_ids")
# Any case: "lost", "LOST", "Lost".
_STATUS: Schema = {"type": "string", "examples": list(STATUSES),
                   "pattern": f"^({'|'.join(_any_case(s) for s in STATUSES)})$"}
_EXPECTED_VERSION: Schema = {"oneOf": [
    {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
    # Up to 19 digits (leading zeros too), at most MAX_VERSION.
    {"type": "string",
     "pattern": f"^([0-9]{{1,18}}|0[0-9]{{18}}|{rules.at_most(str(MAX_VERSION))})$"},
]}
# The request bodies the handlers below read: what /openapi.json publishes.
REQUESTS: dict[str, Schema] = {
    "confirm": {"type": "object", "required": ["appointmentId"],
                "properties": {"appointmentId": _ID}},
    "send_sms": {"type": "object", "required": ["leadId", "message"],
                 "properties": {"leadId": _ID, "message": _MESSAGE}},
    "update_status": {"oneOf": [
        {"type": "object", "required": ["leadId", "status"], "not": {"required": ["leadIds"]},
         "properties": {"leadId": _ID, "status": _STATUS, "expectedVersion": _EXPECTED_VERSION}},
        {"type": "object", "required": ["leadIds", "status"], "not": {"required": ["leadId"]},
         "properties": {"leadIds": {"type": "array", "minItems": 1,
                                    "maxItems": _BATCH.max_items,
                                    "uniqueItems": _BATCH.unique_items, "items": _ID},
                        "status": _STATUS}},
    ]},
}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def legacy_error(refused: Refusal) -> web.Response:
    details = status_json(refused.status).get("details", [])
    body = {"success": False, "error": refused.status.message, "reason": refused.reason,
            "details": details}
    return web.Response(status=refused.http_status, text=json.dumps(body),
                        content_type="application/json", headers=refused.headers)


def _answering_legacy_errors(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Refused as refused:
            return legacy_error(refused.refusal)

    return handle


def legacy_json(message: Message) -> dict[str, Any]:
    """A /v1 object as the original API wrote it: enum values without the
    contract's prefix, `status` lowercase."""
    value = to_json(message)
    for field in message.DESCRIPTOR.fields:
        written = value.get(field.json_name)
        if field.enum_type is not None and isinstance(written, str):
            value[field.json_name] = written.removeprefix(enum_prefix(field.enum_type))
    if isinstance(value.get("status"), str):
        value["status"] = value["status"].lower()
    return value


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise GatewayError.bad_field(name, "required: a non-empty string")
    return value


def _status(body: dict[str, Any]) -> int:
    value = body.get("status")
    if not isinstance(value, str) or value.lower() not in _LEAD_STATUS:
        raise GatewayError.bad_field("status", f"must be one of {', '.join(STATUSES)}")
    return _LEAD_STATUS[value.lower()]


def _expected_version(body: dict[str, Any]) -> int | None:
    """`expectedVersion`, as _EXPECTED_VERSION describes it; None if absent."""
    value = body.get("expectedVersion")
    if value is None:
        return None
    # ASCII digits, few enough to convert (int() refuses 4,300 and more with a 500);
    # and 3.0, which is the integer 3 in JSON.
    if (isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value)) or (
            isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise GatewayError.bad_field("expectedVersion",
                                     "must be a whole number (or a string of digits) "
                                     f"from 0 to {MAX_VERSION}")
    return value


class LegacyApi:
    def __init__(self, settings: Settings, upstreams: Upstreams, sessions: Sessions) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.sessions = sessions

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/bookings/confirm", _answering_legacy_errors(self.confirm),
                     name="legacy.confirm"),
            web.post("/api/leads/send-sms", _answering_legacy_errors(self.send_sms),
                     name="legacy.send_sms"),
            web.get("/api/leads/{leadId}/sms-history", _answering_legacy_errors(self.history),
                    name="legacy.sms_history", allow_head=False),
            web.post("/api/leads/update-status", _answering_legacy_errors(self.update_status),
                     name="legacy.update_status"),
        ]

    async def _call(self, request: web.Request, service: str, rpc: str, message: Message
                    ) -> Answer:
        caller = await self.sessions.caller(request)
        method = contracts.SERVICES[service].methods_by_name[rpc]
        return await self.upstreams.call(service, method, message,
                                         metadata_for(request, caller.authorization))

    async def confirm(self, request: web.Request) -> web.Response:
        await self.sessions.caller(request)
        body = await read_json_object(request)
        message = bookings_pb2.ConfirmAppointmentRequest(
            appointment_id=_text(body, "appointmentId"))
        answer = await self._call(request, "bookings", "ConfirmAppointment", message)
        appointment = legacy_json(answer.response)
        return web.json_response({"success": True, "appointment": appointment},
                                 headers=answer.headers)

    async def send_sms(self, request: web.Request) -> web.Response:
        await self.sessions.caller(request)
        body = await read_json_object(request)
        message = messaging_pb2.SendSmsRequest(lead_id=_text(body, "leadId"),
                                               body=_text(body, "message"))
        answer = await self._call(request, "messaging", "SendSms", message)
        sent = legacy_json(answer.response)
        return web.json_response({"success": True, "message": sent}, headers=answer.headers)

    async def history(self, request: web.Request) -> web.Response:
        lead_id = request.match_info["leadId"]
        messages: list[dict[str, Any]] = []
        token = ""
        while True:
            wanted = min(PAGE, self.settings.history_max - len(messages))
            page: Any = (await self._call(
                request, "messaging", "ListMessages",
                messaging_pb2.ListMessagesRequest(lead_id=lead_id, page_size=wanted,
                                                  page_token=token),
            )).response
            messages.extend(legacy_json(m) for m in page.messages)
            token = page.next_page_token
            if not token or len(messages) >= self.settings.history_max:
                break
        return web.json_response({"success": True, "messages": messages,
                                  "truncated": bool(token)})

    async def update_status(self, request: web.Request) -> web.Response:
        await self.sessions.caller(request)
        body = await read_json_object(request)
        if ("leadId" in body) == ("leadIds" in body):
            raise GatewayError.bad_field("leadId", "send either leadId or leadIds")
        status = _status(body)
        if "leadId" in body:
            single = leads_pb2.UpdateLeadStatusRequest(lead_id=_text(body, "leadId"),
                                                       status=status)  # type: ignore[arg-type]
            expected = _expected_version(body)
            if expected is not None:
                single.expected_version = expected
            answer = await self._call(request, "leads", "UpdateLeadStatus", single)
            lead = legacy_json(answer.response)
            return web.json_response({"success": True, "lead": lead}, headers=answer.headers)
        ids = body["leadIds"]
        if not isinstance(ids, list) or not ids or not all(
            isinstance(i, str) and i for i in ids
        ):
            raise GatewayError.bad_field("leadIds", "required: a non-empty list of lead ids")
        batch = leads_pb2.BatchUpdateLeadStatusRequest(lead_ids=ids,
                                                       status=status)  # type: ignore[arg-type]
        answer = await self._call(request, "leads", "BatchUpdateLeadStatus", batch)
        result: Any = answer.response
        return web.json_response(
            {"success": True,
             "updated": [legacy_json(lead) for lead in result.updated_leads],
             "unchanged": list(result.unchanged_lead_ids)},
            headers=answer.headers,
        )
