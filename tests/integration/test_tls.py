"""gRPC over TLS: a server with CRM_TLS_CERT/KEY, callers trusting CRM_TLS_CA."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from crm.bookings.v1 import bookings_pb2, bookings_pb2_grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.bootstrap import SPEC as LEADS
from services.shared.clients import idempotency, new_key, open_channel
from services.shared.protos import timestamp
from services.shared.server import RunningService
from tests.support.servers import TOKENS, environment, start_in_process


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
async def tls_services(
    new_database: object, tmp_path: Path, certificate: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    cert, key = certificate
    tls = {"CRM_TLS_CERT": str(cert), "CRM_TLS_KEY": str(key), "CRM_TLS_CA": str(cert)}
    leads = await start_in_process(LEADS, environment(new_database("leads"), tmp_path, **tls))  # type: ignore[operator]
    bookings = await start_in_process(BOOKINGS, environment(
        new_database("bookings"), tmp_path, CRM_LEADS_TARGET=leads.target, **tls))  # type: ignore[operator]
    yield leads, bookings
    await bookings.stop(grace=1, drain=0)
    await leads.stop(grace=1, drain=0)


async def test_services_serve_and_call_each_other_over_tls(
    tls_services: tuple[RunningService, RunningService], certificate: tuple[Path, Path]
) -> None:
    leads, bookings = tls_services
    cert, _ = certificate
    async with open_channel(leads.target, token=TOKENS["alice"], tls_ca=cert) as channel:
        lead = await leads_pb2_grpc.LeadsServiceStub(channel).CreateLead(
            pb.CreateLeadRequest(name="Ada", phone="+14155550123"),
            metadata=idempotency(new_key()))
    async with open_channel(bookings.target, token=TOKENS["alice"], tls_ca=cert) as channel:
        start = datetime(2030, 1, 7, 9, tzinfo=UTC)
        booked = await bookings_pb2_grpc.BookingsServiceStub(channel).CreateAppointment(
            bookings_pb2.CreateAppointmentRequest(
                lead_id=lead.lead_id, agent_id="agent-1", start_time=timestamp(start),
                end_time=timestamp(start + timedelta(hours=1))),
            metadata=idempotency(new_key()))
    assert booked.lead_id == lead.lead_id  # bookings asked leads over TLS


async def test_a_plaintext_caller_is_not_served(
    tls_services: tuple[RunningService, RunningService],
) -> None:
    leads, _ = tls_services
    async with open_channel(leads.target, token=TOKENS["alice"],
                            options=[("grpc.enable_retries", 0)]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await leads_pb2_grpc.LeadsServiceStub(channel).ListLeads(pb.ListLeadsRequest(),
                                                                     timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
