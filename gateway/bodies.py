"""Request bodies, read within the gateway's limit (413 beyond it, as a google.rpc.Status)."""

from __future__ import annotations

import json
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


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
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
    return MultiDict((key, value) for key, value in form.items() if isinstance(value, str))
