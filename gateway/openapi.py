"""`GET /openapi.json`: an OpenAPI 3.1 document made from the same descriptors as the routes.

Every annotated route appears with its path and query parameters, its request
body, its 200 response and google.rpc.Status for 4XX and 5XX; every message is a
component schema (full proto name): lowerCamelCase properties, enums as string
enums, 64-bit integers as strings, Timestamp as a date-time string, Duration as
a string such as "1.5s", `google.api.field_behavior` REQUIRED as `required` and
OUTPUT_ONLY as `readOnly`. A message field the gateway writes as `null` when
unset is nullable in messages that are answered. The hand-made routes (the
legacy API, /v1/events, /auth/*, /webhooks/*, /healthz, /metrics) are written
out below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2, status_pb2

from gateway import contracts
from gateway.legacy import STATUSES
from gateway.transcoding import Binding

Schema = dict[str, Any]
REF = "#/components/schemas/"
STATUS = "google.rpc.Status"
ERRORS = {"4XX": {"$ref": "#/components/responses/Error"},
          "5XX": {"$ref": "#/components/responses/Error"}}
ID_PATTERN = "^[^/:]+$"


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
            properties[field.json_name] = schema
            if contracts.is_required(field):
                required.append(field.json_name)
        found: Schema = {"type": "object", "title": message.name, "properties": properties}
        if required:
            found["required"] = required
        return found

    def field(self, field: FieldDescriptor, answered: bool) -> Schema:
        if contracts.is_map(field):
            value = contracts.message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value, answered)}
        single = self.single(field, answered)
        if field.is_repeated:
            return {"type": "array", "items": _not_null(single)}
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
        return scalar(field)


def _not_null(schema: Schema) -> Schema:
    if "anyOf" in schema:
        return dict(schema["anyOf"][0])
    if isinstance(schema.get("type"), list):
        return {**schema, "type": schema["type"][0]}
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
        "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d{1,9})?s$",
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
         "schema": {"type": "string", "pattern": ID_PATTERN}}
        for _, path in binding.path.variables
    ]
    if binding.mutating:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    operation: Schema = {
        "operationId": operation_id,
        "tags": [binding.method.containing_service.name],
        "summary": f"{binding.method.containing_service.full_name}.{binding.method.name}",
        "parameters": parameters,
        "responses": {"200": _ok(_response_schema(binding, output, schemas)), **ERRORS},
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

    lead_status = {"type": "string", "enum": list(STATUSES)}
    lowercase = {"type": "object", "additionalProperties": True,
                 "properties": {"status": {"type": "string"}}}
    errors = {"4XX": {"$ref": "#/components/responses/LegacyError"},
              "5XX": {"$ref": "#/components/responses/LegacyError"}}
    key = [{"$ref": "#/components/parameters/LegacyIdempotencyKey"}]

    def post(operation_id: str, summary: str, body: Schema, ok: Schema) -> Schema:
        return {"post": {"operationId": operation_id, "tags": ["legacy"], "summary": summary,
                         "parameters": key, "requestBody": _json_body(body),
                         "responses": {"200": ok, **errors}}}

    return {
        "/api/bookings/confirm": post(
            "legacy_confirm_appointment", "Confirm an appointment (ConfirmAppointment).",
            {"type": "object", "required": ["appointmentId"],
             "properties": {"appointmentId": {"type": "string", "minLength": 1}}},
            legacy_ok({"appointment": lowercase}),
        ),
        "/api/leads/send-sms": post(
            "legacy_send_sms", "Text a lead (SendSms).",
            {"type": "object", "required": ["leadId", "message"],
             "properties": {"leadId": {"type": "string", "minLength": 1},
                            "message": {"type": "string", "minLength": 1}}},
            legacy_ok({"message": lowercase}),
        ),
        "/api/leads/{leadId}/sms-history": {"get": {
            "operationId": "legacy_sms_history", "tags": ["legacy"],
            "summary": "A lead's SMS history, newest first (ListMessages, every page).",
            "parameters": [{"name": "leadId", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[^/]+$"}}],
            "responses": {"200": legacy_ok({"messages": {"type": "array", "items": lowercase},
                                            "truncated": {"type": "boolean"}}), **errors},
        }},
        "/api/leads/update-status": post(
            "legacy_update_status",
            "Move one lead (UpdateLeadStatus) or several, all or nothing "
            "(BatchUpdateLeadStatus).",
            {"oneOf": [
                {"type": "object", "required": ["leadId", "status"],
                 "properties": {"leadId": {"type": "string", "minLength": 1},
                                "status": lead_status,
                                "expectedVersion": {"type": "integer", "minimum": 1}}},
                {"type": "object", "required": ["leadIds", "status"],
                 "properties": {"leadIds": {"type": "array", "minItems": 1,
                                            "items": {"type": "string", "minLength": 1}},
                                "status": lead_status}},
            ]},
            _ok({"type": "object", "required": ["success"], "properties": {
                "success": {"type": "boolean", "const": True},
                "lead": lowercase,
                "updated": {"type": "array", "items": lowercase},
                "unchanged": {"type": "array", "items": {"type": "string"}},
            }}),
        ),
    }


def _events_path() -> Schema:
    def many(name: str, description: str) -> Schema:
        return {"name": name, "in": "query", "description": description, "style": "form",
                "explode": True, "schema": {"type": "array", "items": {"type": "string"}}}

    return {"get": {
        "operationId": "events",
        "tags": ["events"],
        "summary": "Server-Sent Events from every service, resumable with Last-Event-ID.",
        "parameters": [
            many("lead_id", "only events of these leads"),
            many("appointment_id", "only events of these appointments (bookings only)"),
            many("types", "only these event types (repeated or comma-separated)"),
            {"name": "last_event_id", "in": "query", "schema": {"type": "string"},
             "description": "resume after this id, for clients that cannot send Last-Event-ID"},
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
             "description": "resume after this id (EventSource sends it on reconnect)"},
        ],
        "responses": {
            "200": {"description": "event: <type>, id: <composite id>, data: <Event JSON>",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **ERRORS,
        },
    }}


def _auth_paths() -> dict[str, Schema]:
    session = {"description": "The session", "content": {"application/json": {
        "schema": {"$ref": REF + "gateway.Session"}}}}
    return {
        "/auth/login": {"post": {
            "operationId": "auth_login", "tags": ["auth"], "security": [],
            "summary": "Exchange an API token for a session cookie and a CSRF token.",
            "requestBody": _json_body({"type": "object", "required": ["token"],
                                       "properties": {"token": {"type": "string"}}}),
            "responses": {"200": session, **ERRORS},
        }},
        "/auth/session": {"get": {
            "operationId": "auth_session", "tags": ["auth"], "security": [{"sessionCookie": []}],
            "summary": "The current session and its CSRF token.",
            "responses": {"200": session, **ERRORS},
        }},
        "/auth/logout": {"post": {
            "operationId": "auth_logout", "tags": ["auth"], "security": [{"sessionCookie": []}],
            "summary": "Clear the session cookie (send X-CSRF-Token).",
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
        "/metrics": get("metrics", "Prometheus metrics.", "text/plain"),
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
    all_schemas["gateway.Session"] = {
        "type": "object", "required": ["principal", "csrfToken", "expiresAt"],
        "properties": {"principal": {"type": "string"}, "csrfToken": {"type": "string"},
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


def document(bindings: Iterable[Binding], public_url: str) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, Schema] = {}
    used: dict[str, int] = {}
    for binding in bindings:
        base = f"{binding.method.containing_service.name}_{binding.method.name}"
        used[base] = used.get(base, 0) + 1
        operation_id = base if used[base] == 1 else f"{base}_{used[base]}"
        item = paths.setdefault(binding.path.openapi_path, {})
        item[binding.verb.lower()] = _operation(binding, schemas, operation_id)
    paths["/v1/events"] = _events_path()
    paths.update(_legacy_paths())
    paths.update(_auth_paths())
    paths.update(_webhook_paths())
    paths.update(_plain_paths())
    return {
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
