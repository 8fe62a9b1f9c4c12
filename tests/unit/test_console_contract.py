"""The web console's status rules (`gateway/static/pipeline.js`) are the contract's
and the domain's: every status the console knows is a value of the contract's
enum, spelt as the /v1 JSON spells it, and every move it offers is one the
services' domain allows. Node.js runs the module; without it the test skips,
unless CI=true, where it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2

from services.bookings.domain import MOVES, AppointmentStatus
from services.leads.domain import PIPELINE, LeadStatus, allowed_moves
from services.messaging.domain import RANK, MessageStatus

MODULE = Path(__file__).resolve().parents[2] / "gateway" / "static" / "pipeline.js"

# Prints what pipeline.js exports, with nextStatuses of every lead status.
RUNNER = """\
import * as p from "./pipeline.mjs";
process.stdout.write(JSON.stringify({
  leadStatuses: p.LEAD_STATUSES, leadFlow: p.LEAD_FLOW, final: [...p.FINAL],
  labels: p.LEAD_LABELS,
  next: Object.fromEntries(p.LEAD_STATUSES.map((s) => [s, p.nextStatuses(s)])),
  appointmentMoves: p.APPOINTMENT_MOVES, messageRank: p.MESSAGE_RANK,
  breaker: p.BREAKER, directions: [p.OUTBOUND, p.INBOUND],
}));
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        reason = "Node.js (`node`) is not on PATH, so pipeline.js cannot be checked"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("pipeline_js")
    shutil.copy(MODULE, workdir / "pipeline.mjs")  # an ES module to Node as .mjs
    (workdir / "runner.mjs").write_text(RUNNER, encoding="utf-8")
    done = subprocess.run([node, str(workdir / "runner.mjs")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    exported: dict[str, Any] = json.loads(done.stdout)
    return exported


def contract(enum: Any) -> list[str]:
    """The values of a contract's enum but its zero one, in order."""
    return [value.name for value in enum.DESCRIPTOR.values if value.number]


def lead(status: LeadStatus) -> str:
    return leads_pb2.LeadStatus.Name(leads_pb2.LeadStatus.Value(f"LEAD_STATUS_{status.name}"))


def appointment(status: AppointmentStatus) -> str:
    return bookings_pb2.AppointmentStatus.Name(
        bookings_pb2.AppointmentStatus.Value(f"APPOINTMENT_STATUS_{status.name}"))


def test_the_console_knows_exactly_the_contracts_lead_statuses(console: dict[str, Any]) -> None:
    assert console["leadStatuses"] == contract(leads_pb2.LeadStatus)
    assert set(console["labels"]) == set(contract(leads_pb2.LeadStatus))


def test_the_console_offers_exactly_the_moves_the_domain_allows(console: dict[str, Any]) -> None:
    assert console["leadFlow"] == [lead(s) for s in PIPELINE]
    assert set(console["final"]) == {lead(s) for s in LeadStatus if s.final}
    assert console["next"] == {lead(s): [lead(t) for t in allowed_moves(s)] for s in LeadStatus}


def test_the_console_moves_appointments_as_the_domain_does(console: dict[str, Any]) -> None:
    assert set(console["appointmentMoves"]) == set(contract(bookings_pb2.AppointmentStatus))
    assert console["appointmentMoves"] == {
        appointment(s): [appointment(t) for t in moves] for s, moves in MOVES.items()}


def test_the_console_ranks_message_statuses_as_the_domain_does(console: dict[str, Any]) -> None:
    assert set(console["messageRank"]) == set(contract(messaging_pb2.MessageStatus))
    assert console["messageRank"] == {
        f"MESSAGE_STATUS_{s.name}": RANK[s] for s in MessageStatus}


def test_the_console_names_the_breaker_and_directions_as_the_contract(
    console: dict[str, Any],
) -> None:
    assert sorted(console["breaker"].values()) == sorted(contract(messaging_pb2.BreakerState))
    assert console["directions"] == contract(messaging_pb2.Direction)
