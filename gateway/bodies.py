"""Request bodies, read within the gateway's limit (413 beyond it, as a google.rpc.Status).

JSON is read strictly and within bounds: UTF-8 (or the other encodings RFC 8259
allows), no NaN or Infinity, numbers of at most MAX_NUMBER_DIGITS digits, and
nesting at most MAX_DEPTH deep. A form is read in its declared charset; one that
is not valid in it, or a charset nobody knows, is 400 INVALID_FORM.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from google.rpc import code_pb2
from multidict import MultiDict

from gateway.errors import GatewayError, Refused, body_too_large


def _too_large(request: web.Request) -> Refused:
    return Refused(body_too_large(request.client_max_size))


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise _too_large(request)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None


MAX_DEPTH = 32
MAX_NUMBER_DIGITS = 40
_NUMBER = re.compile(rf"-?[0-9]{{1,{MAX_NUMBER_DIGITS}}}")


def _number(raw: str) -> int:
    if not _NUMBER.fullmatch(raw):
        raise ValueError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(raw)


def _float(raw: str) -> float:
    if len(raw) > 2 * MAX_NUMBER_DIGITS:
        raise ValueError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    value = float(raw)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number is too large")
    return value


def _constant(raw: str) -> Any:
    raise ValueError(f"{raw} is not JSON (send it as the string \"{raw}\")")


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (0 for a scalar), counted without
    recursion, and no further than MAX_DEPTH + 1."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        pending.extend((child, level + 1) for child in children)
    return deepest


def loads(raw: bytes | str) -> Any:
    """JSON within the bounds above; ValueError, worded for people, if it is not."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode(json.detect_encoding(raw))
        except UnicodeDecodeError as error:
            raise ValueError(f"it is not valid UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(raw, parse_int=_number, parse_float=_float,
                           parse_constant=_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno}, column {error.colno}") from None
    except RecursionError:
        raise ValueError(f"it is nested more than {MAX_DEPTH} deep") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"it is nested more than {MAX_DEPTH} deep")
    return value


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as error:
        raise GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_JSON",
                           f"the body is not JSON: {error}") from None


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body (an empty body reads as `{}`)."""
    if not body.strip():
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_JSON",
                           "the body must be a JSON object")
    return value


async def read_json_object(request: web.Request) -> dict[str, Any]:
    return json_object(await read_body(request))


async def read_form(request: web.Request) -> MultiDict[str]:
    """A form-encoded body's fields (files, which no caller here sends, are dropped)."""
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise _too_large(request)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except LookupError:
        raise GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_FORM",
                           "the body's charset is not one this gateway knows; send UTF-8"
                           ) from None
    except ValueError:  # UnicodeDecodeError among them
        raise GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_FORM",
                           "the body is not valid in its charset") from None
    return MultiDict((key, value) for key, value in form.items() if isinstance(value, str))
