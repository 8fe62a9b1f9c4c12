"""Schemathesis against the gateway's own /openapi.json, with the real services behind it.

Every operation the document describes is called with data generated from it,
valid and invalid: no answer may be a server error, every answer must match
the document, and every refusal of the /v1 API must be a google.rpc.Status.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import openapi, transcoding
from tests.support.servers import TOKENS, ServiceProcess, environment

# Streams never end, and webhooks answer 403 to anything not signed by Twilio.
SKIPPED = ("/v1/events",)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    env = environment("", root, CRM_LOG_LEVEL="WARNING")
    started: list[ServiceProcess] = []
    targets: dict[str, str] = {}
    try:
        for name in ("leads", "bookings", "messaging"):
            service_env = {**env, **targets,
                           "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{root / name}.db"}
            started.append(ServiceProcess(name, service_env).start())
            targets[f"CRM_{name.upper()}_TARGET"] = started[-1].target
        gateway = ServiceProcess("gateway", {**env, **targets}, module="gateway").start()
        started.append(gateway)
        yield f"http://127.0.0.1:{gateway.port}"
    finally:
        for process in started:
            process.kill()


# The very document /openapi.json serves, built without a server to ask.
schema = schemathesis.openapi.from_dict(
    openapi.document(transcoding.bindings(), "http://127.0.0.1:8080")
).exclude(path=list(SKIPPED))


def google_rpc_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """A /v1 refusal is a google.rpc.Status: code, message, details with an ErrorInfo."""
    if response.status_code < 400 or not case.path.startswith("/v1/"):
        return None
    body = response.json()
    assert isinstance(body.get("code"), int) and body["code"] > 0, body
    assert isinstance(body.get("message"), str), body
    types = [d.get("@type", "") for d in body.get("details", [])]
    assert any(t.endswith("google.rpc.ErrorInfo") for t in types), body
    return True


def test_the_served_document_is_the_one_tested(gateway_url: str) -> None:
    served = json.loads(urllib.request.urlopen(f"{gateway_url}/openapi.json", timeout=10).read())
    assert served == openapi.document(transcoding.bindings(), "http://127.0.0.1:8080")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_the_document_allows_makes_the_gateway_fail(case: Any, gateway_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    if case.method.upper() != "GET":
        headers["Idempotency-Key"] = uuid.uuid4().hex
    case.call_and_validate(
        base_url=gateway_url,
        headers=headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance, google_rpc_status],
    )
