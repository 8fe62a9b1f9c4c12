"""HTTP/JSON ↔ gRPC, driven by the contracts' `google.api.http` annotations.

Every method of the three services that carries an annotation (and each of its
`additional_bindings`) becomes one route, served by one generic handler, as
grpc-gateway would serve it:

- the path template's variables match `[^/:]+` (a `{name=**}` variable may span
  segments), so custom methods such as `/v1/leads/{lead_id}:updateStatus` and
  `/v1/leads:batchUpdateStatus` route apart from `/v1/leads/{lead_id}`;
- `body: "*"`: the JSON body is the request (an empty body is `{}`), and the
  query must be empty; `body: "<field>"`: the JSON body is that field and the
  query fills the rest; no body: the query fills every field the path does not
  bind (gateway.json_mapping says how values are read and written);
- path variables win over the body's copy of the same field;
- `response_body: "<field>"` answers that field of the response alone.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.api import annotations_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from multidict import MultiMapping

from gateway import contracts
from gateway.bodies import json_object, parse_json, read_body
from gateway.json_mapping import (
    check_fields,
    check_value,
    merge,
    parse,
    query_fields,
    raise_if_any,
    resolve,
    set_path,
    to_json,
)
from gateway.sessions import Sessions
from gateway.upstream import Upstreams, metadata_for

SEGMENT = "[^/:]+"
MULTI_SEGMENT = "[^/:]+(?:/[^/:]+)*"
_VARIABLE = re.compile(r"\{([^{}=]+)(?:=([^{}]*))?\}")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Template:
    """A parsed path template: the aiohttp route pattern and the variables it binds."""

    template: str
    # What aiohttp matches, as in "/v1/leads/{v0:[^/:]+}:updateStatus".
    pattern: str
    # (aiohttp variable, request field path), as in ("v0", "lead_id").
    variables: tuple[tuple[str, str], ...]
    # The OpenAPI path, as in "/v1/leads/{lead_id}:updateStatus".
    openapi_path: str


@dataclass(frozen=True)
class Binding:
    """One HTTP route of one RPC."""

    service: str
    method: MethodDescriptor
    verb: str
    path: Template
    body: str
    response_body: str

    @property
    def full_method(self) -> str:
        return contracts.full_method(self.method)

    @property
    def name(self) -> str:
        return f"{self.method.containing_service.name}.{self.method.name}"

    @property
    def mutating(self) -> bool:
        from google.protobuf import descriptor_pb2

        level = self.method.GetOptions().idempotency_level
        return level != descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS

    @property
    def path_fields(self) -> set[str]:
        """The top-level request fields the path binds."""
        return {path.split(".")[0] for _, path in self.path.variables}

    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)


def bindings(services: Mapping[str, Any] = contracts.SERVICES) -> list[Binding]:
    """Every annotated route of the services, in contract order."""
    found: list[Binding] = []
    for service, descriptor in services.items():
        for method in descriptor.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            for each in [rule, *rule.additional_bindings]:
                found.append(_binding(service, method, each))
    return found


def _binding(service: str, method: MethodDescriptor, rule: Any) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{method.full_name}: an http rule without a pattern")
    if kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = kind.upper(), getattr(rule, kind)
    parsed = parse_template(template)
    request = method.input_type
    for _, field_path in parsed.variables:
        field = resolve(request, field_path.split("."))
        if field is None or field.is_repeated or contracts.is_message(field):
            raise ValueError(f"{method.full_name}: path variable {field_path!r} must name a "
                             "singular scalar field of the request")
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise ValueError(f"{method.full_name}: body {rule.body!r} is not a field of the request")
    return Binding(service, method, verb, parsed, rule.body, rule.response_body)


def parse_template(template: str) -> Template:
    """Parse an HttpRule path template (`/v1/{name=shelves/*}/books:verb`)."""
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with /")
    path, verb = _split_verb(template)
    pattern: list[str] = []
    openapi: list[str] = []
    variables: list[tuple[str, str]] = []
    position = 0
    for match in _VARIABLE.finditer(path):
        literal = path[position:match.start()]
        pattern.append(_literal_pattern(literal, len(variables)))
        openapi.append(literal)
        field_path, segments = match.group(1).strip(), match.group(2)
        if not _FIELD_PATH.match(field_path):
            raise ValueError(f"path template {template!r}: bad field path {field_path!r}")
        name = f"v{len(variables)}"
        variables.append((name, field_path))
        pattern.append(f"{{{name}:{_segments_regex(segments or '*')}}}")
        openapi.append(f"{{{field_path}}}")
        position = match.end()
    rest = path[position:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"path template {template!r}: unbalanced braces")
    pattern.append(_literal_pattern(rest, len(variables)))
    openapi.append(rest)
    suffix = f":{verb}" if verb else ""
    return Template(template, "".join(pattern) + suffix, tuple(variables),
                    "".join(openapi) + suffix)


def _split_verb(template: str) -> tuple[str, str]:
    depth = 0
    colon = -1
    for i, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ":" and depth == 0:
            colon = i
    if colon < 0 or "/" in template[colon:]:
        return template, ""
    return template[:colon], template[colon + 1:]


def _segments_regex(segments: str) -> str:
    parts = []
    for segment in segments.split("/"):
        if segment == "*":
            parts.append(SEGMENT)
        elif segment == "**":
            parts.append(MULTI_SEGMENT)
        elif segment:
            parts.append(re.escape(segment))
        else:
            raise ValueError(f"empty segment in {segments!r}")
    return "/".join(parts)


def _literal_pattern(literal: str, taken: int) -> str:
    """Literal text of a template; bare `*` and `**` segments match anything, unbound."""
    out = []
    for i, segment in enumerate(literal.split("/")):
        if segment in ("*", "**"):
            out.append(f"{{_w{taken}_{i}:{SEGMENT if segment == '*' else MULTI_SEGMENT}}}")
        else:
            out.append(segment)
    return "/".join(out)


# -- requests -------------------------------------------------------------------


def request_from(
    binding: Binding,
    path_values: Mapping[str, str],
    query: MultiMapping[str],
    body: bytes,
) -> Message:
    """The request message of one HTTP request to `binding`."""
    descriptor = binding.method.input_type
    data: dict[str, Any] = {}
    if binding.body == "*":
        if query:
            raise_if_any([(key, "this route takes its fields in the JSON body")
                          for key in dict.fromkeys(query)], "INVALID_QUERY_PARAMETER")
        data = json_object(body)
        raise_if_any(check_fields(descriptor, data, ""), "UNKNOWN_FIELD")
    else:
        bound = set(binding.path_fields)
        if binding.body:
            field = descriptor.fields_by_name[binding.body]
            bound.add(field.name)
            value = parse_json(body) if body.strip() else None
            if value is not None:
                raise_if_any(check_value(field, value, field.json_name), "UNKNOWN_FIELD")
                data[field.json_name] = value
        merge(data, query_fields(descriptor, query, bound))
    for variable, field_path in binding.path.variables:
        set_path(data, descriptor, field_path.split("."), path_values[variable])
    return parse(data, binding.request_class()())


# -- responses ------------------------------------------------------------------


def response_json(binding: Binding, response: Message) -> Any:
    if not binding.response_body:
        return to_json(response)
    field = response.DESCRIPTOR.fields_by_name[binding.response_body]
    return to_json(response).get(field.json_name)


# -- serving --------------------------------------------------------------------


class Transcoder:
    """Serves every binding with one generic handler: HTTP in → RPC → HTTP out."""

    def __init__(self, upstreams: Upstreams, sessions: Sessions,
                 routes: Iterable[Binding] | None = None) -> None:
        self.upstreams = upstreams
        self.sessions = sessions
        self.bindings = list(bindings() if routes is None else routes)

    def routes(self) -> list[web.RouteDef]:
        found: list[web.RouteDef] = []
        seen: dict[str, int] = {}
        for binding in self.bindings:
            count = seen[binding.name] = seen.get(binding.name, 0) + 1
            name = binding.name if count == 1 else f"{binding.name}.binding{count}"
            found.append(web.route(binding.verb, binding.path.pattern, self._handler(binding),
                                   name=name))
        return found

    def _handler(self, binding: Binding) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.serve(binding, request)

        return handle

    async def serve(self, binding: Binding, request: web.Request) -> web.Response:
        caller = await self.sessions.caller(request)
        body = await read_body(request) if binding.body else b""
        message = request_from(binding, request.match_info, request.query, body)
        answer = await self.upstreams.call(
            binding.service, binding.method, message,
            metadata_for(request, caller.authorization),
        )
        return web.json_response(response_json(binding, answer.response), headers=answer.headers)
