"""The leads service as an operator meets it: a process, and grpcurl with no proto files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import TOKENS, ServiceProcess, environment

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
BEARER = f"authorization: Bearer {TOKENS['alice']}"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True,
                          check=False, timeout=30)


@pytest.fixture
def leads_process(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("leads", environment(database_url, tmp_path)).start()
    yield process
    assert process.terminate() == 0


def test_grpcurl_lists_the_services_through_reflection(leads_process: ServiceProcess) -> None:
    listed = grpcurl(leads_process.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {"crm.leads.v1.LeadsService", "grpc.health.v1.Health"}
    described = grpcurl(leads_process.target, "describe", "crm.leads.v1.LeadsService")
    assert "rpc UpdateLeadStatus" in described.stdout


def test_grpcurl_creates_and_moves_a_lead_and_a_retry_is_replayed(
    leads_process: ServiceProcess,
) -> None:
    target = leads_process.target
    create = ["-H", BEARER, "-H", "idempotency-key: grpcurl-create-1",
              "-d", '{"name": "Ada Lovelace", "phone": "+1 415 555 0123"}',
              target, "crm.leads.v1.LeadsService/CreateLead"]
    first = grpcurl(*create)
    assert first.returncode == 0, first.stderr
    lead = json.loads(first.stdout)
    assert (lead["phone"], lead["status"], lead["version"]) == ("+14155550123",
                                                                "LEAD_STATUS_NEW", "1")

    again = grpcurl("-v", *create)
    contents = again.stdout.split("Response contents:\n", 1)[1].split("\n\nResponse trailers")[0]
    assert json.loads(contents) == lead
    headers = again.stdout.split("Response headers received:", 1)[1]
    assert "idempotent-replayed: true" in headers.split("Response contents:")[0]

    moved = grpcurl("-H", BEARER, "-H", "idempotency-key: grpcurl-move-1",
                     "-d", json.dumps({"lead_id": lead["lead_id"],
                                       "status": "LEAD_STATUS_QUALIFIED"}),
                     target, "crm.leads.v1.LeadsService/UpdateLeadStatus")
    assert json.loads(moved.stdout)["status"] == "LEAD_STATUS_QUALIFIED"


def test_grpcurl_sees_the_rich_error_of_a_refusal(leads_process: ServiceProcess) -> None:
    refused = grpcurl("-H", BEARER, "-d", '{"lead_id": "missing"}', leads_process.target,
                      "crm.leads.v1.LeadsService/GetLead")
    assert refused.returncode != 0
    assert "NotFound" in refused.stderr and "LEAD_NOT_FOUND" in refused.stderr


def test_health_needs_no_token_but_every_rpc_does(leads_process: ServiceProcess) -> None:
    health = grpcurl(leads_process.target, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    denied = grpcurl("-d", "{}", leads_process.target, "crm.leads.v1.LeadsService/ListLeads")
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
