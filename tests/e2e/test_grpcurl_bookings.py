"""The bookings service as an operator meets it: processes, and grpcurl with no proto files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_grpcurl import BEARER, grpcurl
from tests.support.servers import ServiceProcess, environment

SERVICE = "crm.bookings.v1.BookingsService"


@pytest.fixture
def processes(database_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess,
                                                                   ServiceProcess]]:
    """The leads and bookings processes, bookings asking leads about leads."""
    env = environment(database_url, tmp_path)
    leads = ServiceProcess("leads", env).start()
    bookings = None
    try:
        bookings = ServiceProcess("bookings", {**env, "CRM_LEADS_TARGET": leads.target}).start()
        yield leads, bookings
    finally:
        if bookings is not None:
            assert bookings.terminate() == 0
        assert leads.terminate() == 0


def call(target: str, method: str, body: dict[str, object], key: str) -> dict[str, object]:
    done = grpcurl("-H", BEARER, "-H", f"idempotency-key: {key}", "-d", json.dumps(body),
                   target, method)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_grpcurl_finds_the_service_and_confirms_an_appointment_and_a_retry_is_replayed(
    processes: tuple[ServiceProcess, ServiceProcess],
) -> None:
    leads, bookings = processes
    listed = grpcurl(bookings.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {SERVICE, "grpc.health.v1.Health"}
    assert "rpc ConfirmAppointment" in grpcurl(bookings.target, "describe", SERVICE).stdout
    health = grpcurl(bookings.target, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}

    lead = call(leads.target, "crm.leads.v1.LeadsService/CreateLead",
                {"name": "Ada Lovelace", "phone": "+1 415 555 0123"}, "grpcurl-lead-1")
    booked = call(bookings.target, f"{SERVICE}/CreateAppointment", {
        "lead_id": lead["lead_id"], "agent_id": "agent-7",
        "start_time": "2031-03-03T09:00:00Z", "end_time": "2031-03-03T09:30:00Z",
    }, "grpcurl-book-1")
    assert (booked["status"], booked["version"], booked["start_time"]) == (
        "APPOINTMENT_STATUS_PENDING", "1", "2031-03-03T09:00:00Z")

    body = json.dumps({"appointment_id": booked["appointment_id"]})
    confirm = ["-H", BEARER, "-H", "idempotency-key: grpcurl-confirm-1", "-d", body,
               bookings.target, f"{SERVICE}/ConfirmAppointment"]
    first = grpcurl(*confirm)
    assert first.returncode == 0, first.stderr
    confirmed = json.loads(first.stdout)
    assert (confirmed["status"], confirmed["confirmed_by"], confirmed["version"]) == (
        "APPOINTMENT_STATUS_CONFIRMED", "alice", "2")
    assert "confirmed_at" in confirmed

    again = grpcurl("-v", *confirm)
    assert again.returncode == 0, again.stderr
    headers, contents = again.stdout.split("Response headers received:", 1)[1].split(
        "Response contents:", 1)
    assert "idempotent-replayed: true" in headers
    assert json.loads(contents.split("\n\nResponse trailers")[0]) == confirmed


def test_grpcurl_sees_slot_taken_naming_the_confirmed_appointment(
    processes: tuple[ServiceProcess, ServiceProcess],
) -> None:
    leads, bookings = processes
    lead = call(leads.target, "crm.leads.v1.LeadsService/CreateLead",
                {"name": "Grace Hopper", "phone": "+1 415 555 0100"}, "grpcurl-lead-2")
    slot = {"lead_id": lead["lead_id"], "agent_id": "agent-9",
            "start_time": "2031-03-03T10:00:00Z", "end_time": "2031-03-03T11:00:00Z"}
    first = call(bookings.target, f"{SERVICE}/CreateAppointment", slot, "grpcurl-book-2")
    second = call(bookings.target, f"{SERVICE}/CreateAppointment", slot, "grpcurl-book-3")
    call(bookings.target, f"{SERVICE}/ConfirmAppointment",
         {"appointment_id": first["appointment_id"]}, "grpcurl-confirm-2")
    refused = grpcurl("-H", BEARER, "-H", "idempotency-key: grpcurl-confirm-3",
                      "-d", json.dumps({"appointment_id": second["appointment_id"]}),
                      bookings.target, f"{SERVICE}/ConfirmAppointment")
    assert refused.returncode != 0
    assert "FailedPrecondition" in refused.stderr and "SLOT_TAKEN" in refused.stderr
    assert str(first["appointment_id"]) in refused.stderr
