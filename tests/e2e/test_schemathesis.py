"""Schemathesis, run as an outside team runs it, against the gateway's own /openapi.json.

`schemathesis run --checks all` with its defaults (positive and negative data,
every phase: examples, coverage, fuzzing, and the stateful phase that follows
the document's links from a created lead to its appointments, messages…) and a
bearer token, with the real services behind the gateway. Zero failures: a
deviation is a bug in the document or in the server. The run is bounded
(MAX_EXAMPLES per operation, one worker, a fixed seed so a failure reproduces).

tests/e2e/schemathesis_hooks.py teaches the run what the document says in words
and JSON Schema cannot check (its formats, one idempotency key per call, page
tokens as received, appointment times from now on) and adds one check of ours:
every /v1 refusal is a google.rpc.Status. /v1/events is left out: a stream never
ends; test_every_event_of_the_stream_is_one_the_document_describes reads it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from gateway import openapi, transcoding
from tests.support.servers import ROOT, TOKENS

MAX_EXAMPLES = 25
SEED = 20261202
AUTHORIZATION = f"Bearer {TOKENS['alice']}"


def _get(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": AUTHORIZATION})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_served_document_is_the_one_the_contracts_make(gateway_url: str) -> None:
    served = _get(f"{gateway_url}/openapi.json")
    assert served == openapi.document(transcoding.bindings(), "http://127.0.0.1:8080")


def test_schemathesis_run_checks_all_finds_no_deviation(gateway_url: str, tmp_path: Path
                                                        ) -> None:
    report = tmp_path / "junit.xml"
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run",
         f"{gateway_url}/openapi.json", "--checks", "all",
         "--header", f"Authorization: {AUTHORIZATION}",
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
         "--exclude-path", "/v1/events", "--generation-database", "none",
         "--report", "junit", "--report-junit-path", str(report), "--no-color"],
        cwd=ROOT, env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks"},
        capture_output=True, text=True, timeout=900, check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-30000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):  # each ran, and passed
        assert re.search(rf"^ *✅ +{phase} \(in ", output, re.M), output[-5000:]
    assert re.search(r"^ *Scenarios: +[1-9]", output, re.M), output[-5000:]
    # Every operation but the stream was tested (schemathesis does not count the
    # operation that serves the document it reads).
    selected, total = map(int, re.findall(r"Operations: +(\d+) selected / (\d+) total",
                                          output)[0])
    assert (selected, total) == (total - 1, total) and total >= 30, output[-5000:]
    assert f"Tested: {selected}" in output, output[-5000:]
    assert re.search(r"\d+ generated, \d+ passed", output), output[-5000:]


def test_every_event_of_the_stream_is_one_the_document_describes(gateway_url: str) -> None:
    document = _get(f"{gateway_url}/openapi.json")
    stream = document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]
    # The items' $refs point into the document: resolve them there.
    registry: Registry[Any] = Registry().with_resource("urn:doc",
                                                       DRAFT202012.create_resource(document))
    item = json.loads(json.dumps(stream["items"]).replace('"#/components',
                                                          '"urn:doc#/components'))
    validator = jsonschema.Draft202012Validator(item, registry=registry)
    events: list[dict[str, Any]] = []
    got_lead = threading.Event()

    def read() -> None:
        request = urllib.request.Request(f"{gateway_url}/v1/events?types=lead.created",
                                         headers={"Authorization": AUTHORIZATION})
        with urllib.request.urlopen(request, timeout=30) as answer:
            message: dict[str, Any] = {}
            for raw in answer:
                line = raw.decode().rstrip("\n")
                if not line:
                    if message:
                        events.append(message)
                        if message.get("event") == "lead.created":
                            got_lead.set()
                            return
                    message = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    message[name] = json.loads(value) if name == "data" else (
                        int(value) if name == "retry" else value)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not events and reader.is_alive():  # the stream is live: its first bookmark came
        reader.join(0.05)
    created = urllib.request.Request(
        f"{gateway_url}/v1/leads", method="POST",
        data=json.dumps({"name": "Ada", "phone": "+14155550123"}).encode(),
        headers={"Authorization": AUTHORIZATION, "Content-Type": "application/json",
                 "Idempotency-Key": uuid.uuid4().hex})
    urllib.request.urlopen(created, timeout=10).close()
    assert got_lead.wait(30), events
    assert events[0]["event"] == "bookmark"
    for event in events:
        validator.validate(event)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[-1], "data": {**events[-1]["data"], "lead": "not a lead"}})
