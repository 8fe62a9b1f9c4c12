"""Protobuf messages ↔ JSON, as grpc-gateway maps them.

Reading: JSON objects (either spelling of a field name: `lead_id`, `leadId`), and
query strings — a repeated field by repeated keys (`?lead_ids=a&lead_ids=b`), a
nested one by dots (`?lead.name=…`), scalars, enums (by name or number) and
well-known types (`Timestamp` as RFC 3339, `Duration` as "1.5s", wrappers as
their value) written as grpc-gateway reads them. A field the message does not
have is refused — in the body and, unlike grpc-gateway, in the query too (a
misspelt filter must not silently list everything) — as is a value of the wrong
type or shape: 400 with a BadRequest naming the field and saying, in words, what
it expects (never the parser's own message). Integers are ASCII digits, in the
field's range, whether written as JSON numbers, strings or query values.

Writing: protobuf's `json_format`, lowerCamelCase, enums by name, int64 as
strings, and every field even when unset — an unset message as `null`, as
grpc-gateway's EmitUnpopulated does — so browsers see stable shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2
from multidict import MultiMapping

from gateway import contracts
from gateway.errors import GatewayError

Problems = list[tuple[str, str]]

# ASCII digits only (`\d` would take "٣"), and few enough to convert cheaply.
_INTEGER = re.compile(r"[-+]?[0-9]{1,20}")
_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse(data: dict[str, Any], message: Message) -> Message:
    """`data` (JSON, either spelling of names) into `message`; ParseError → 400."""
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, RecursionError) as error:
        descriptor: Any = message.DESCRIPTOR
        raise _parse_error(str(error), descriptor) from None
    return message


def check_fields(descriptor: Descriptor, data: Mapping[str, Any], prefix: str) -> Problems:
    """Fields of `data` the message does not have, and values of the wrong shape."""
    found: list[tuple[str, str]] = []
    for key, value in data.items():
        field = contracts.field_named(descriptor, key)
        if field is None:
            found.append((f"{prefix}{key}", f"{descriptor.full_name} has no such field"))
            continue
        found.extend(check_value(field, value, f"{prefix}{key}"))
    return found


def check_value(field: FieldDescriptor, value: Any, path: str) -> Problems:
    if value is None:
        return []
    if contracts.is_map(field):
        if not isinstance(value, dict):
            return [(path, "expected an object")]
        value_field = contracts.message_of(field).fields_by_name["value"]
        found: Problems = []
        if contracts.is_plain_message(value_field):
            for key, item in value.items():
                found.extend(check_value(value_field, item, f"{path}.{key}"))
        return found
    if field.is_repeated:
        if not isinstance(value, list):
            return [(path, "expected an array")]
        found = []
        if contracts.is_plain_message(field):
            for i, item in enumerate(value):
                found.extend(_check_message(field, item, f"{path}[{i}]"))
        return found
    if contracts.is_plain_message(field):
        return _check_message(field, value, path)
    if field.type in _RANGES and not _integer_in_range(field, value):
        return [(path, expected(field))]
    return []


def _integer_in_range(field: FieldDescriptor, value: Any) -> bool:
    """An integer field's JSON value: a number or a string of ASCII digits, in range."""
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            return False
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    low, high = _RANGES[field.type]
    return low <= value <= high and value == int(value)


def expected(field: FieldDescriptor) -> str:
    """What a field takes, in words."""
    if field.is_repeated and not contracts.is_map(field):
        return "expected an array"
    if contracts.is_message(field):
        name = contracts.type_name(field)
        if name == "google.protobuf.Timestamp":
            return "expected an RFC 3339 time with its offset, such as 2026-05-01T09:00:00Z"
        if name == "google.protobuf.Duration":
            return 'expected a duration in seconds, such as "1.5s"'
        value = contracts.message_of(field).fields_by_name.get("value")
        if name in contracts.SCALAR_LIKE and value is not None:
            return expected(value)
        return "expected an object"
    if field.type in _RANGES:
        low, high = _RANGES[field.type]
        return f"expected an integer from {low} to {high}"
    if field.type in contracts.FLOAT_TYPES:
        return "expected a number"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "expected true or false"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return f"expected one of {', '.join(v.name for v in contracts.enum_of(field).values)}"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "expected base64"
    return "expected a string"


def _check_message(field: FieldDescriptor, value: Any, path: str) -> Problems:
    if not isinstance(value, dict):
        return [(path, "expected an object")]
    return check_fields(contracts.message_of(field), value, f"{path}.")


def query_fields(descriptor: Descriptor, query: MultiMapping[str], bound: set[str]
                  ) -> dict[str, Any]:
    """The query string as JSON for `descriptor`, read as grpc-gateway reads it."""
    problems: Problems = []
    # Values by field path, whichever spelling of the names each key used.
    grouped: dict[tuple[str, ...], tuple[str, FieldDescriptor, list[str]]] = {}
    for key in dict.fromkeys(query):
        path = resolve_path(descriptor, key.split("."))
        if path is None:
            problems.append((key, f"{descriptor.full_name} has no such field"))
            continue
        field = path[-1]
        if path[0].name in bound:
            problems.append((key, "is bound by the path or the body, not the query"))
        elif contracts.is_map(field) or contracts.is_plain_message(field) or (
            contracts.is_message(field) and contracts.type_name(field) in contracts.FREE_FORM
        ):
            problems.append((key, "a message cannot be given in the query; name its fields"))
        else:
            names = tuple(f.name for f in path)
            grouped.setdefault(names, (key, field, []))[2].extend(query.getall(key))
    data: dict[str, Any] = {}
    for names, (key, field, values) in grouped.items():
        if not field.is_repeated and len(values) > 1:
            problems.append((key, "given more than once"))
            continue
        try:
            converted = [query_value(field, v) for v in values]
        except ValueError as error:
            problems.append((key, str(error)))
            continue
        set_json(data, descriptor, list(names),
                  converted if field.is_repeated else converted[0])
    raise_if_any(problems, "INVALID_QUERY_PARAMETER")
    return data


def query_value(field: FieldDescriptor, raw: str) -> Any:
    """One query-string or path value as the JSON value of `field`."""
    if contracts.is_message(field):
        name = contracts.type_name(field)
        if name in contracts.SCALAR_LIKE and "value" in contracts.message_of(field).fields_by_name:
            return query_value(contracts.message_of(field).fields_by_name["value"], raw)
        return raw  # Timestamp, Duration, FieldMask: their JSON is this string.
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        return _boolean(raw)
    if kind in _RANGES:
        if not _INTEGER.fullmatch(raw) or not _integer_in_range(field, raw):
            raise ValueError(expected(field))
        return int(raw)
    if kind in contracts.FLOAT_TYPES:
        return _number(raw)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field, raw)
    return raw


def _boolean(raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError("expected true or false")


def _number(raw: str) -> float | str:
    if raw in ("NaN", "Infinity", "-Infinity"):
        return raw
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _enum(field: FieldDescriptor, raw: str) -> int | str:
    if _INTEGER.fullmatch(raw):
        return int(raw)
    enum = contracts.enum_of(field)
    if raw not in enum.values_by_name:
        raise ValueError(f"expected one of {', '.join(v.name for v in enum.values)}")
    return raw


def resolve(descriptor: Descriptor, names: list[str]) -> FieldDescriptor | None:
    path = resolve_path(descriptor, names)
    return path[-1] if path else None


def resolve_path(descriptor: Descriptor, names: list[str]) -> list[FieldDescriptor] | None:
    """The fields a dotted path names (either spelling), through singular messages only."""
    path: list[FieldDescriptor] = []
    current = descriptor
    for i, name in enumerate(names):
        field = contracts.field_named(current, name)
        if field is None:
            return None
        path.append(field)
        if i < len(names) - 1:
            if field.is_repeated or not contracts.is_plain_message(field):
                return None
            current = contracts.message_of(field)
    return path or None


def set_json(data: dict[str, Any], descriptor: Descriptor, names: list[str], value: Any) -> None:
    """Set a value at a field path, under JSON names, whichever spelling `data` used."""
    current = data
    message = descriptor
    for i, name in enumerate(names):
        field = contracts.field_named(message, name)
        assert field is not None
        existing = current.pop(field.name, None) if field.name != field.json_name else None
        if i == len(names) - 1:
            current[field.json_name] = value
            return
        child = current.get(field.json_name, existing)
        if not isinstance(child, dict):
            child = {}
        current[field.json_name] = child
        current = child
        message = contracts.message_of(field)


def set_path(data: dict[str, Any], descriptor: Descriptor, names: list[str], raw: str) -> None:
    field = resolve(descriptor, names)
    assert field is not None  # checked when the routes were built
    try:
        value = query_value(field, raw)
    except ValueError as error:
        raise GatewayError.bad_field(".".join(names), str(error)) from None
    set_json(data, descriptor, names, value)


def merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_AT = re.compile(r" at (\w+)((?:\.\w+|\[\d+\])+)\.?$")


def _parse_error(text: str, descriptor: Descriptor) -> GatewayError:
    """json_format's ParseError as a BadRequest naming the field and what it expects.

    Its own words (Python's, often: "time data … does not match format …") are not
    passed on; only the field it names is.
    """
    names = _FAILED_FIELD.findall(text)
    if not names and (at := _AT.search(text)):
        names = [n for n in re.split(r"[.\[\]]+", at.group(2)) if n and not n.isdigit()]
    field = resolve(descriptor, names) if names else None
    if field is None:
        return GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_FIELD",
                            "a field has a value of the wrong type or shape")
    return GatewayError.bad_field(".".join(names), expected(field), reason="INVALID_FIELD")


def raise_if_any(problems: Problems, reason: str) -> None:
    if problems:
        raise _refused(problems, reason=reason)


def _refused(problems: Iterable[tuple[str, str]], *, reason: str) -> GatewayError:
    found = list(problems)
    message = "; ".join(f"{f}: {d}" for f, d in found)
    return GatewayError(code_pb2.INVALID_ARGUMENT, reason, message, violations=found)



# -- writing ------------------------------------------------------------------


def to_json(message: Message) -> dict[str, Any]:
    """A message as JSON: lowerCamelCase, enums by name, every field, unset messages null."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _fill_unset(message, data)
    return data


def _fill_unset(message: Message, data: dict[str, Any]) -> None:
    descriptor: Any = message.DESCRIPTOR
    field: FieldDescriptor
    for field in descriptor.fields:
        if not contracts.is_message(field) or contracts.is_map(field):
            continue
        if field.is_repeated:
            if contracts.is_plain_message(field):
                items = getattr(message, field.name)
                for item, written in zip(items, data.get(field.json_name, []), strict=False):
                    _fill_unset(item, written)
            continue
        if message.HasField(field.name):
            if contracts.is_plain_message(field):
                _fill_unset(getattr(message, field.name), data[field.json_name])
        elif field.containing_oneof is None:
            data[field.json_name] = None


