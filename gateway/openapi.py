"""`GET /openapi.json`: an OpenAPI 3.1 document made from the same descriptors as the routes.

Every annotated route appears with its path and query parameters, its request
body, its 200 response, every error status it can answer (each a
google.rpc.Status) and links to the operations its answer feeds; every message
is a component schema (full proto name): lowerCamelCase properties, enums as
string enums, 64-bit integers as strings, Timestamp as a date-time string,
Duration as a string such as "1.5s", `google.api.field_behavior` REQUIRED as
`required` (a required string is not empty, a required list not empty, a
required enum not UNSPECIFIED) and OUTPUT_ONLY as `readOnly`. Request messages
are exact: `additionalProperties: false` (the gateway refuses unknown fields),
enums by name or number as the gateway reads them, and the contracts' own
rules (crm.common.v1.FieldRules, which the services enforce: see
services.shared.rules) as maxLength, pattern, format, minimum, maxItems… A
message field the gateway writes as `null` when unset is nullable in messages
that are answered. The hand-made routes (the legacy API, /v1/events, /auth/*,
/webhooks/*, /healthz) are written out below.

Formats of this API that a regular expression cannot state ("phone", "sms-body",
"template-body", "page-token") are described in FORMATS, and so in each field's
description; a generator of test data registers a strategy for each
(tests/e2e/schemathesis_hooks.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2, status_pb2

from gateway import contracts
from gateway.legacy import REQUESTS
from gateway.transcoding import Binding
from services.messaging.templates import PLACEHOLDERS
from services.shared import rules

Schema = dict[str, Any]
REF = "#/components/schemas/"
STATUS = "google.rpc.Status"
ERROR = {"$ref": "#/components/responses/Error"}
# What any call can be answered: refused input, credentials, rights, a missing
# object, the gateway's limits (body size, media type, streams and failed
# logins), and the services being down or slow (gateway.errors maps each).
_ANY_CALL = ("400", "401", "403", "404", "413", "415", "429", "500", "501", "503", "504")
# And a call with an idempotency key: a conflict of state or a key in use
# (409), a key reused for another request (422).
_MUTATING = ("409", "422")
ERRORS = {status: ERROR for status in _ANY_CALL}
MUTATING_ERRORS = {status: ERROR for status in sorted((*_ANY_CALL, *_MUTATING))}
# What the formats of the contracts mean (crm.common.v1.FieldRules.format).
FORMATS = {
    "phone": "A phone number that can exist, in any common notation (+14155550123, "
             "(415) 555-0123); read in CRM_DEFAULT_REGION without a country code.",
    "sms-body": "Text that fits the configured number of SMS segments "
                "(CRM_SMS_MAX_SEGMENTS: 160 GSM-7 or 70 UCS-2 characters for one).",
    "template-body": "Text whose {placeholders} are among: "
                     + ", ".join(f"{{{name}}}" for name in PLACEHOLDERS) + ".",
    "page-token": "A nextPageToken of the same list with the same filters, as received; "
                  "empty for the first page.",
}


def _ref(name: str) -> Schema:
    return {"$ref": REF + name}


class _Schemas:
    """Component schemas of every message reachable from the routes."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}
        self.answered: set[str] = set()
        self._pending: list[tuple[Descriptor, bool]] = []

    def add(self, message: Descriptor, *, answered: bool) -> str:
        self._pending.append((message, answered))
        self._drain()
        return message.full_name

    def _drain(self) -> None:
        seen: set[tuple[str, bool]] = set()
        while self._pending:
            message, answered = self._pending.pop()
            key = (message.full_name, answered)
            if key in seen or (message.full_name in self.schemas
                               and (not answered or message.full_name in self.answered)):
                continue
            seen.add(key)
            if answered:
                self.answered.add(message.full_name)
            self.schemas[message.full_name] = self._message(message, answered)

    def _message(self, message: Descriptor, answered: bool) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.fields:
            schema = self.field(field, answered)
            if contracts.is_output_only(field):
                schema = {**schema, "readOnly": True}
            if contracts.is_required(field):
                required.append(field.json_name)
            elif not answered:
                # The gateway reads null as "not set", as grpc-gateway does.
                schema = _or_null(schema)
            properties[field.json_name] = schema
        found: Schema = {"type": "object", "title": message.name, "properties": properties}
        if required:
            found["required"] = required
        if not answered:
            found["additionalProperties"] = False
        return found

    def field(self, field: FieldDescriptor, answered: bool) -> Schema:
        if contracts.is_map(field):
            value = contracts.message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value, answered)}
        single = self.single(field, answered)
        if field.is_repeated:
            return _items_rules({"type": "array", "items": _not_null(single)}, field, answered)
        return single

    def single(self, field: FieldDescriptor, answered: bool) -> Schema:
        """One value of `field`; unset singular messages are null in answers."""
        nullable = answered and not field.is_repeated and field.containing_oneof is None
        if contracts.is_message(field):
            name = contracts.type_name(field)
            known = _well_known(name)
            if known is None:
                self._pending.append((contracts.message_of(field), answered))
                schema: Schema = _ref(name)
                return {"anyOf": [schema, {"type": "null"}]} if nullable else schema
            if nullable and "type" in known:
                return {**known, "type": [known["type"], "null"]}
            return known
        if answered:
            return _value_rules(scalar(field), field, answered=True)
        return _value_rules(request_scalar(field), field, answered=False)


def _or_null(schema: Schema) -> Schema:
    kinds = schema.get("type")
    if kinds is None:
        return {"anyOf": [schema, {"type": "null"}]}
    schema = {**schema, "type": [*(kinds if isinstance(kinds, list) else [kinds]), "null"]}
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    return schema


def _not_null(schema: Schema) -> Schema:
    if "anyOf" in schema:
        return dict(schema["anyOf"][0])
    kinds = schema.get("type")
    if isinstance(kinds, list) and "null" in kinds:
        left = [k for k in kinds if k != "null"]
        schema = {**schema, "type": left[0] if len(left) == 1 else left}
        if "enum" in schema:
            schema["enum"] = [v for v in schema["enum"] if v is not None]
    return schema


def _well_known(name: str) -> Schema | None:
    wrappers = {
        "google.protobuf.DoubleValue": {"type": "number"},
        "google.protobuf.FloatValue": {"type": "number"},
        "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
        "google.protobuf.UInt64Value": {"type": "string", "format": "uint64"},
        "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
        "google.protobuf.UInt32Value": {"type": "integer", "format": "uint32"},
        "google.protobuf.BoolValue": {"type": "boolean"},
        "google.protobuf.StringValue": {"type": "string"},
        "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
    }
    known: dict[str, Schema] = {
        "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
        "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
                                     "examples": ["1.5s"]},
        "google.protobuf.FieldMask": {"type": "string"},
        "google.protobuf.Empty": {"type": "object"},
        "google.protobuf.Struct": {"type": "object"},
        "google.protobuf.Value": {},
        "google.protobuf.ListValue": {"type": "array"},
        "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}},
                                "required": ["@type"], "additionalProperties": True},
        **wrappers,
    }
    return known.get(name)


def _value_rules(schema: Schema, field: FieldDescriptor, *, answered: bool) -> Schema:
    """One value with the contract's rules for it (crm.common.v1.FieldRules)."""
    found = rules.of_field(field)
    schema = dict(schema)
    if found.values:
        schema["enum"] = list(found.values)
    if answered:
        return schema
    if found.HasField("min_length"):
        schema["minLength"] = found.min_length
    elif (contracts.is_required(field) and schema.get("type") == "string"
          and not field.is_repeated):
        schema["minLength"] = 1
    if found.HasField("max_length"):
        schema["maxLength"] = found.max_length
    if found.pattern:
        schema["pattern"] = found.pattern
        schema["description"] = f"{rules.words(found.pattern).capitalize()}."
    if found.format:
        schema["format"] = found.format
        if found.format in FORMATS:
            schema["description"] = " ".join(filter(None, [FORMATS[found.format],
                                                           schema.get("description")]))
    if found.HasField("minimum"):
        schema["minimum"] = found.minimum
    if found.HasField("maximum"):
        schema["maximum"] = found.maximum
    return schema


def _items_rules(schema: Schema, field: FieldDescriptor, answered: bool) -> Schema:
    if answered:
        return schema
    found = rules.of_field(field)
    if found.HasField("min_items"):
        schema["minItems"] = found.min_items
    elif contracts.is_required(field):
        schema["minItems"] = 1
    if found.HasField("max_items"):
        schema["maxItems"] = found.max_items
    if found.unique_items:
        schema["uniqueItems"] = True
    if schema["items"].get("type") == "string" and not found.HasField("min_length"):
        schema["items"] = {**schema["items"], "minLength": 1}
    return schema


def _int64(low: int, high: int) -> Schema:
    """A 64-bit integer as the gateway reads it: a JSON number or a string of digits, in
    range (answers write it as a string)."""
    shorter = len(str(high)) - 1
    positive = f"[1-9][0-9]{{0,{shorter - 1}}}|{rules.at_most(str(high))}"
    pattern = f"^(0|{positive}" + (f"|-([1-9][0-9]{{0,{shorter - 1}}}|{rules.at_most(str(-low))})"
                                   if low < 0 else "") + ")$"
    return {"type": ["string", "integer"], "pattern": pattern, "minimum": low, "maximum": high}


def request_scalar(field: FieldDescriptor) -> Schema:
    """A value as the gateway reads it in a request: enums by name or by number,
    and a required enum never UNSPECIFIED (0); 64-bit integers as numbers or strings."""
    if field.type in contracts.INT64_TYPES:
        unsigned = field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
        return _int64(0, 2**64 - 1) if unsigned else _int64(-(2**63), 2**63 - 1)
    if field.type != FieldDescriptor.TYPE_ENUM:
        return scalar(field)
    values = [v for v in contracts.enum_of(field).values
              if not (contracts.is_required(field) and v.number == 0)]
    return {"type": ["string", "integer"],
            "enum": [v.name for v in values] + [v.number for v in values]}


def scalar(field: FieldDescriptor) -> Schema:
    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in contracts.enum_of(field).values]}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    if kind in contracts.INT64_TYPES:
        unsigned = kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
        return {"type": "string", "format": "uint64" if unsigned else "int64",
                "pattern": r"^[0-9]+$" if unsigned else r"^-?[0-9]+$"}
    if kind in contracts.INT32_TYPES:
        if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            return {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
        return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
    return {"type": "number", "format": "double" if kind == FieldDescriptor.TYPE_DOUBLE
            else "float"}


# -- operations ------------------------------------------------------------------


def _query_parameters(message: Descriptor, exclude: set[str], schemas: _Schemas,
                      prefix: str = "", depth: int = 0) -> list[Schema]:
    """The query parameters of a request without a body: every field not bound, dotted."""
    found: list[Schema] = []
    for field in message.fields:
        if not prefix and field.name in exclude:
            continue
        name = f"{prefix}{field.json_name}"
        if contracts.is_plain_message(field) and not field.is_repeated:
            if depth < 3:
                found.extend(_query_parameters(contracts.message_of(field), set(), schemas,
                                               f"{name}.", depth + 1))
            continue
        if contracts.is_map(field) or contracts.is_plain_message(field) or (
            contracts.is_message(field) and contracts.type_name(field) in contracts.FREE_FORM
        ):
            continue
        schema = _not_null(schemas.single(field, answered=False))
        if field.is_repeated:
            schema = {"type": "array", "items": schema}
        parameter: Schema = {"name": name, "in": "query", "schema": schema}
        if field.is_repeated:
            parameter.update(style="form", explode=True)
        if not prefix and contracts.is_required(field):
            parameter["required"] = True
        found.append(parameter)
    return found


def _operation(binding: Binding, schemas: _Schemas, operation_id: str) -> Schema:
    request = binding.method.input_type
    schemas.add(request, answered=False)
    output = schemas.add(binding.method.output_type, answered=True)
    parameters: list[Schema] = [
        {"name": path, "in": "path", "required": True,
         "schema": _path_schema(request, path, schemas)}
        for _, path in binding.path.variables
    ]
    if binding.mutating:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    operation: Schema = {
        "operationId": operation_id,
        "tags": [binding.method.containing_service.name],
        "summary": f"{binding.method.containing_service.full_name}.{binding.method.name}",
        "parameters": parameters,
        "responses": {"200": _ok(_response_schema(binding, output, schemas)),
                      **(MUTATING_ERRORS if binding.mutating else ERRORS)},
    }
    bound = binding.path_fields
    if binding.body == "*":
        body = schemas.schemas[request.full_name]
        if bound:
            body = {**body, "properties": {k: v for k, v in body["properties"].items()
                                           if _field_of(request, k) not in bound}}
            if "required" in body:
                body["required"] = [r for r in body["required"]
                                    if _field_of(request, r) not in bound]
                if not body["required"]:
                    del body["required"]
            body.pop("title", None)
        else:
            body = _ref(request.full_name)
        operation["requestBody"] = _json_body(body)
    elif binding.body:
        field = request.fields_by_name[binding.body]
        operation["requestBody"] = _json_body(_not_null(schemas.field(field, answered=False)))
        parameters.extend(_query_parameters(request, bound | {field.name}, schemas))
    else:
        parameters.extend(_query_parameters(request, bound, schemas))
    return operation


def _path_schema(request: Descriptor, path: str, schemas: _Schemas) -> Schema:
    """A path variable's value: the field's schema and rules, never empty, never '/' or ':'."""
    field: Any = request
    for name in path.split("."):
        field = contracts.message_of(field).fields_by_name[name] if not isinstance(
            field, Descriptor) else field.fields_by_name[name]
    schema = _not_null(schemas.single(field, answered=False))
    schema.pop("description", None)
    return {**schema, "minLength": 1}


def _field_of(message: Descriptor, json_name: str) -> str:
    field = contracts.field_named(message, json_name)
    return field.name if field is not None else json_name


def _response_schema(binding: Binding, output: str, schemas: _Schemas) -> Schema:
    if not binding.response_body:
        return _ref(output)
    field = binding.method.output_type.fields_by_name[binding.response_body]
    return schemas.field(field, answered=True)


def _json_body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(schema: Schema, description: str = "OK") -> Schema:
    return {
        "description": description,
        "headers": {
            "Idempotent-Replayed": {"$ref": "#/components/headers/IdempotentReplayed"},
            "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
        },
        "content": {"application/json": {"schema": schema}},
    }


# -- the hand-made routes ------------------------------------------------------------


def _legacy_paths() -> dict[str, Schema]:
    def legacy_ok(payload: dict[str, Schema]) -> Schema:
        return _ok({"type": "object", "required": ["success", *payload],
                    "properties": {"success": {"type": "boolean", "const": True}, **payload}})

    lowercase = {"type": "object", "additionalProperties": True,
                 "properties": {"status": {"type": "string"}}}
    errors = {status: {"$ref": "#/components/responses/LegacyError"}
              for status in sorted((*_ANY_CALL, *_MUTATING))}
    key = [{"$ref": "#/components/parameters/LegacyIdempotencyKey"}]

    def post(operation_id: str, summary: str, body: Schema, ok: Schema) -> Schema:
        return {"post": {"operationId": operation_id, "tags": ["legacy"], "summary": summary,
                         "parameters": key, "requestBody": _json_body(body),
                         "responses": {"200": ok, **errors}}}

    return {
        "/api/bookings/confirm": post(
            "legacy_confirm_appointment", "Confirm an appointment (ConfirmAppointment).",
            REQUESTS["confirm"], legacy_ok({"appointment": lowercase}),
        ),
        "/api/leads/send-sms": post(
            "legacy_send_sms", "Text a lead (SendSms).", REQUESTS["send_sms"],
            legacy_ok({"message": lowercase}),
        ),
        "/api/leads/{leadId}/sms-history": {"get": {
            "operationId": "legacy_sms_history", "tags": ["legacy"],
            "summary": "A lead's SMS history, newest first (ListMessages, every page).",
            "parameters": [{"name": "leadId", "in": "path", "required": True,
                            "schema": REQUESTS["send_sms"]["properties"]["leadId"]}],
            "responses": {"200": legacy_ok({"messages": {"type": "array", "items": lowercase},
                                            "truncated": {"type": "boolean"}}),
                          **{k: v for k, v in errors.items() if k not in _MUTATING}},
        }},
        "/api/leads/update-status": post(
            "legacy_update_status",
            "Move one lead (UpdateLeadStatus) or several, all or nothing "
            "(BatchUpdateLeadStatus).",
            REQUESTS["update_status"],
            _ok({"type": "object", "required": ["success"], "properties": {
                "success": {"type": "boolean", "const": True},
                "lead": lowercase,
                "updated": {"type": "array", "items": lowercase},
                "unchanged": {"type": "array", "items": {"type": "string"}},
            }}),
        ),
    }


def _event_types() -> dict[str, list[str]]:
    """Every service's event types, "bookmark" first, from its contract's Event.type."""
    return {service: list(rules.of_field(
                descriptor.file.message_types_by_name["Event"].fields_by_name["type"]).values)
            for service, descriptor in contracts.SERVICES.items()}


def _event_stream() -> Schema:
    """The stream as the sequence of its messages: each `event:` type with its `data`."""
    kinds: list[Schema] = []
    for service, types in _event_types().items():
        event = contracts.SERVICES[service].file.message_types_by_name["Event"]
        kinds.append({
            "type": "object", "title": f"An event of the {service} service",
            "required": ["event", "id", "data"],
            "properties": {"event": {"type": "string", "enum": types},
                           "id": {"$ref": REF + "gateway.EventId"},
                           "retry": {"type": "integer", "minimum": 0},
                           "data": _ref(event.full_name)}})
    services = list(contracts.SERVICES)
    kinds.append({
        "type": "object", "title": "The stream is live without services that do not answer",
        "required": ["event", "id", "data"],
        "properties": {"event": {"const": "bookmark"}, "id": {"$ref": REF + "gateway.EventId"},
                       "retry": {"type": "integer", "minimum": 0},
                       "data": {"type": "object", "required": ["type", "cursor", "unavailable"],
                                "properties": {"type": {"const": "bookmark"},
                                               "cursor": {"const": ""},
                                               "unavailable": {"type": "array", "items": {
                                                   "enum": services}}}}}})
    kinds.append({
        "type": "object", "title": "A service's cursor was past its retention: reload",
        "required": ["event", "id", "data"],
        "properties": {"event": {"const": "reset"}, "id": {"$ref": REF + "gateway.EventId"},
                       "data": {"type": "object", "required": ["service", "error"],
                                "properties": {"service": {"enum": services},
                                               "error": _ref(STATUS)}}}})
    return {"type": "array", "items": {"anyOf": kinds}, "description": (
        "Server-Sent Events, one after another: `event: <type>`, `id: <composite id>`, "
        "`data: <JSON>` (and `retry:` on the first). Each item here is one message, its "
        "`data` parsed; `: heartbeat` comments carry nothing.")}


def _events_path() -> Schema:
    def many(name: str, description: str, items: Schema) -> Schema:
        return {"name": name, "in": "query", "description": description, "style": "form",
                "explode": True, "schema": {"type": "array", "items": items}}

    id_schema = _path_schema(contracts.SERVICES["leads"].methods_by_name["GetLead"].input_type,
                             "lead_id", _Schemas())
    every = sorted({t for types in _event_types().values() for t in types if t != "bookmark"})
    one = "(" + "|".join(t.replace(".", "\\.") for t in every) + ")"

    return {"get": {
        "operationId": "events",
        "tags": ["events"],
        "summary": "Server-Sent Events from every service, resumable with Last-Event-ID.",
        "parameters": [
            many("lead_id", "only events of these leads", id_schema),
            many("appointment_id", "only events of these appointments (bookings only)",
                 id_schema),
            many("types", "only these event types (repeated or comma-separated)",
                 {"type": "string", "pattern": f"^{one}(,{one})*$"}),
            {"name": "last_event_id", "in": "query", "schema": _ref("gateway.EventId"),
             "description": "resume after this id, for clients that cannot send Last-Event-ID"},
            {"name": "Last-Event-ID", "in": "header", "schema": _ref("gateway.EventId"),
             "description": "resume after this id (EventSource sends it on reconnect)"},
        ],
        "responses": {
            "200": {"description": "The events, as they happen, until the client goes away",
                    "content": {"text/event-stream": {"schema": _event_stream()}}},
            **ERRORS,
        },
    }}


def _auth_paths() -> dict[str, Schema]:
    session = {"description": "The session", "content": {"application/json": {
        "schema": {"$ref": REF + "gateway.Session"}}}}
    return {
        "/auth/login": {"post": {
            "operationId": "auth_login", "tags": ["auth"], "security": [],
            "summary": "Exchange an API token or a JWT for a session cookie and a CSRF token "
                       "(a service principal is refused 403 ROLE_FORBIDS).",
            "requestBody": _json_body({"type": "object", "required": ["token"],
                                       "properties": {"token": {
                                           "type": "string", "pattern": "^[!-~]+$",
                                           "description": "A token of CRM_API_TOKENS, or a JWT"}}}),
            "responses": {"200": session, **ERRORS},
        }},
        "/auth/session": {"get": {
            "operationId": "auth_session", "tags": ["auth"], "security": [{"sessionCookie": []}],
            "summary": "The current session and its CSRF token.",
            "responses": {"200": session, **ERRORS},
        }},
        "/auth/logout": {"post": {
            # Logging out is always possible: without a session there is nothing to
            # end and the answer is the same 204 (and clears any stale cookie).
            "operationId": "auth_logout", "tags": ["auth"],
            "security": [{"sessionCookie": []}, {}],
            "summary": "End the session for good and clear its cookie (send X-CSRF-Token "
                       "with a live session); without a session, nothing to end: 204 all "
                       "the same.",
            "parameters": [{"$ref": "#/components/parameters/CsrfToken"}],
            "responses": {"204": {"description": "Logged out"}, **ERRORS},
        }},
    }


def _webhook_paths() -> dict[str, Schema]:
    def webhook(operation_id: str, summary: str, fields: dict[str, Schema], required: list[str],
                ok: tuple[str, Schema]) -> Schema:
        return {"post": {
            "operationId": operation_id, "tags": ["webhooks"], "security": [],
            "summary": summary,
            "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": True,
                            "schema": {"type": "string"}},
                           {"name": "I-Twilio-Idempotency-Token", "in": "header",
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": required, "properties": fields,
                    "additionalProperties": {"type": "string"}}}}},
            "responses": {ok[0]: ok[1], **ERRORS},
        }}

    text = {"type": "string"}
    return {
        "/webhooks/twilio/status": webhook(
            "twilio_status_callback", "Twilio's message status callback (RecordDeliveryStatus).",
            {"MessageSid": text, "MessageStatus": text, "ErrorCode": text, "ErrorMessage": text},
            ["MessageSid", "MessageStatus"], ("204", {"description": "Recorded"})),
        "/webhooks/twilio/inbound": webhook(
            "twilio_inbound_message", "An incoming text (ReceiveInboundMessage).",
            {"MessageSid": text, "From": text, "To": text, "Body": text},
            ["MessageSid", "From"],
            ("200", {"description": "Empty TwiML", "content": {
                "text/xml": {"schema": {"type": "string"}}}})),
    }


def _plain_paths() -> dict[str, Schema]:
    def get(operation_id: str, summary: str, media: str) -> Schema:
        return {"get": {"operationId": operation_id, "tags": ["operations"], "security": [],
                        "summary": summary, "responses": {"200": {
                            "description": "OK", "content": {media: {"schema": {}}}}}}}

    return {
        "/healthz": get("healthz", "The gateway is up.", "application/json"),
        "/openapi.json": get("openapi", "This document.", "application/json"),
    }


def _components(schemas: _Schemas) -> Schema:
    schemas.add(status_pb2.Status.DESCRIPTOR, answered=True)
    for detail in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                   error_details_pb2.PreconditionFailure, error_details_pb2.RetryInfo):
        schemas.add(detail.DESCRIPTOR, answered=True)
    for service in contracts.SERVICES.values():
        # Every message of the contracts, the events of /v1/events among them.
        for message in service.file.message_types_by_name.values():
            schemas.add(message, answered=not message.name.endswith("Request"))
    all_schemas = dict(sorted(schemas.schemas.items()))
    all_schemas["gateway.EventId"] = {
        "type": "string", "maxLength": 4096, "pattern": "^[A-Za-z0-9_-]*$",
        "description": "base64url of {\"leads\": <cursor>, \"bookings\": …, \"messaging\": …}"}
    all_schemas["gateway.Session"] = {
        "type": "object", "required": ["principal", "org", "role", "csrfToken", "expiresAt"],
        "properties": {"principal": {"type": "string"}, "org": {"type": "string"},
                       "role": {"type": "string", "enum": ["agent", "viewer", "admin"]},
                       "csrfToken": {"type": "string"},
                       "expiresAt": {"type": "string", "format": "date-time"}}}
    all_schemas["gateway.LegacyError"] = {
        "type": "object", "required": ["success", "error", "reason", "details"],
        "properties": {"success": {"type": "boolean", "const": False},
                       "error": {"type": "string"}, "reason": {"type": "string"},
                       "details": {"type": "array",
                                   "items": _well_known("google.protobuf.Any")}}}
    key_schema = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
    return {
        "schemas": all_schemas,
        "responses": {
            "Error": {"description": "A google.rpc.Status", "content": {
                "application/json": {"schema": _ref(STATUS)}}},
            "LegacyError": {"description": "A refusal, in the original API's shape", "content": {
                "application/json": {"schema": _ref("gateway.LegacyError")}}},
        },
        "parameters": {
            "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": True,
                               "description": "One key per logical call; retries reuse it "
                                              "(X-Idempotency-Key is accepted too).",
                               "schema": key_schema},
            "LegacyIdempotencyKey": {"name": "X-Idempotency-Key", "in": "header",
                                     "required": True, "schema": key_schema},
            "CsrfToken": {"name": "X-CSRF-Token", "in": "header", "schema": {"type": "string"},
                          "description": "Required with the session cookie on every request "
                                         "that is not GET or HEAD."},
        },
        "headers": {
            "IdempotentReplayed": {"description": "`true` when the stored outcome of an earlier "
                                                  "call with this key was replayed",
                                   "schema": {"type": "string", "enum": ["true"]}},
            "RequestId": {"description": "The request's id, as sent or made",
                          "schema": {"type": "string"}},
        },
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "A token from CRM_API_TOKENS"},
            "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "crm_session",
                              "description": "From POST /auth/login (__Host-crm_session "
                                             "over https); send X-CSRF-Token on writes"},
        },
    }


def _links(source: Binding, targets: list[tuple[Binding, str]]) -> dict[str, Schema]:
    """Where an answer leads: every route whose path variables its fields fill (the
    lead's id of a created lead to GET /v1/leads/{lead_id}, to :updateStatus…), and a
    list's next page."""
    found: dict[str, Schema] = {}
    if source.response_body:
        return found
    output = source.method.output_type
    request = source.method.input_type
    for target, operation_id in targets:
        variables = [path for _, path in target.path.variables]
        if target is source:
            if "next_page_token" in output.fields_by_name and "page_token" in (
                    request.fields_by_name):
                parameters = {path: f"$request.path.{path}" for path in variables}
                parameters["pageToken"] = "$response.body#/nextPageToken"
                found["nextPage"] = {"operationId": operation_id, "parameters": parameters,
                                     "description": "The next page of the same list."}
            continue
        if not variables:
            # A create that names an object the answer holds (POST /v1/appointments
            # and POST /v1/messages take a lead's id).
            ids = [f for f in target.method.input_type.fields if f.name.endswith("_id")
                   and contracts.is_required(f) and f.name in output.fields_by_name
                   and target.body == "*"]
            if ids and target.method.input_type.full_name != request.full_name:
                found[operation_id] = {"operationId": operation_id, "requestBody": {
                    f.json_name: f"$response.body#/{output.fields_by_name[f.name].json_name}"
                    for f in ids}}
            continue
        if any("." in path or path not in output.fields_by_name
               or output.fields_by_name[path].is_repeated for path in variables):
            continue
        parameters = {path: f"$response.body#/{output.fields_by_name[path].json_name}"
                      for path in variables}
        found[operation_id] = {"operationId": operation_id, "parameters": parameters}
    return found


def sms_capacity(max_segments: int) -> int:
    """The longest GSM-7 text that fits `max_segments` (services.messaging.segments)."""
    return min(160 if max_segments == 1 else 153 * max_segments, 1600)


def _fit_sms(schema: Any, capacity: int) -> None:
    """Every "sms-body" string at most `capacity` characters long."""
    if isinstance(schema, dict):
        if schema.get("format") == "sms-body":
            schema["maxLength"] = min(schema.get("maxLength", capacity), capacity)
        for value in schema.values():
            _fit_sms(value, capacity)
    elif isinstance(schema, list):
        for value in schema:
            _fit_sms(value, capacity)


def _link_legacy(paths: dict[str, Schema]) -> None:
    """The original API's calls take the ids the /v1 creates answer."""
    def link(path: str, **more: Schema) -> None:
        paths[path]["post"]["responses"]["200"].setdefault("links", {}).update(more)

    lead = "$response.body#/leadId"
    link("/v1/leads", legacy_update_status={"operationId": "legacy_update_status",
                                            "requestBody": {"leadId": lead}},
         legacy_send_sms={"operationId": "legacy_send_sms", "requestBody": {"leadId": lead}},
         legacy_sms_history={"operationId": "legacy_sms_history",
                             "parameters": {"leadId": lead}})
    link("/v1/appointments", legacy_confirm_appointment={
        "operationId": "legacy_confirm_appointment",
        "requestBody": {"appointmentId": "$response.body#/appointmentId"}})


def document(bindings: Iterable[Binding], public_url: str, *,
             sms_max_segments: int = 1) -> dict[str, Any]:
    """The document; `sms_max_segments` is CRM_SMS_MAX_SEGMENTS, which sets how long
    a text may be (its GSM-7 capacity: longer plain text is refused)."""
    schemas = _Schemas()
    paths: dict[str, Schema] = {}
    used: dict[str, int] = {}
    named: list[tuple[Binding, str]] = []
    for binding in bindings:
        base = f"{binding.method.containing_service.name}_{binding.method.name}"
        used[base] = used.get(base, 0) + 1
        operation_id = base if used[base] == 1 else f"{base}_{used[base]}"
        named.append((binding, operation_id))
    for binding, operation_id in named:
        item = paths.setdefault(binding.path.openapi_path, {})
        operation = _operation(binding, schemas, operation_id)
        links = _links(binding, named)
        if links:
            operation["responses"]["200"]["links"] = links
        item[binding.verb.lower()] = operation
    paths["/v1/events"] = _events_path()
    paths.update(_legacy_paths())
    _link_legacy(paths)
    paths.update(_auth_paths())
    paths.update(_webhook_paths())
    paths.update(_plain_paths())
    found = {
        "openapi": "3.1.0",
        "info": {
            "title": "Closed Loop gateway",
            "version": "1",
            "description": "HTTP/JSON for the leads, bookings and messaging services, "
                           "transcoded from their gRPC contracts. Errors are google.rpc.Status.",
        },
        "servers": [{"url": public_url}],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "paths": paths,
        "components": _components(schemas),
    }
    _fit_sms(found, sms_capacity(sms_max_segments))
    return found
