"""A second gRPC implementation: Node.js grpc-js with nothing but protos/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import google.api
import grpc_tools
import pytest

from tests.support.servers import ROOT, TOKENS, ServiceProcess, environment

INTEROP = ROOT / "tests" / "interop"
NODE = shutil.which("node")


@pytest.fixture
def leads_process(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("leads", environment(database_url, tmp_path)).start()
    yield process
    process.terminate()


def node_client(target: str) -> dict[str, object]:
    if NODE is None or not (INTEROP / "node_modules" / "@grpc" / "grpc-js").is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Node.js and tests/interop/node_modules are required (make test installs)")
        pytest.skip("Node.js or tests/interop/node_modules missing (make test installs them)")
    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    done = subprocess.run(
        [NODE, "client.mjs"], cwd=INTEROP, capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "TARGET": target, "TOKEN": TOKENS["alice"],
             "PROTO_PATHS": f"{ROOT / 'protos'}:{googleapis}:{well_known}"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_grpc_js_creates_retries_moves_and_subscribes_like_any_client(
    leads_process: ServiceProcess,
) -> None:
    seen = node_client(leads_process.target)
    created, retried = seen["created"], seen["retried"]
    assert isinstance(created, dict) and isinstance(retried, dict)
    assert retried == created, "the retry with the same key got the stored response"
    assert (seen["first_header"], seen["replayed_header"]) == (None, "true")
    assert (created["phone"], created["status"], created["version"]) == (
        "+14155550199", "LEAD_STATUS_NEW", "1")

    events = seen["events"]
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["bookmark", "lead.status_changed", "lead.status_changed"]
    assert [e["to_status"] for e in events[1:]] == ["LEAD_STATUS_CONTACTED",
                                                    "LEAD_STATUS_QUALIFIED"]
    assert seen["resumed"] == [
        {**events[1], "type": "bookmark", "head_cursor": events[2]["cursor"], "to_status": None,
         "lead_id": ""},
        events[2],
    ]
    refused = seen["refused"]
    assert isinstance(refused, dict) and refused["code"] == 9  # FAILED_PRECONDITION
    assert "cannot move from qualified to new" in refused["details"]
    fetched = seen["fetched"]
    assert isinstance(fetched, dict)
    assert (fetched["status"], fetched["version"]) == ("LEAD_STATUS_QUALIFIED", "3")
