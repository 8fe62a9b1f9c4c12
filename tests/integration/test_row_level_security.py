"""PostgreSQL keeps the orgs apart too: row-level security, FORCEd, on every table.

The services run as an ordinary role (tests.support.databases.SERVICE_ROLE: no
superuser, no BYPASSRLS; superusers ignore row-level security even when it is
FORCEd). Two orgs write through the real services; then the test connects as
that same role and "forgets" the filter on purpose: a raw SELECT of every table
sees one org's rows, and none without an org; a write cannot reach the other org.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from crm.bookings.v1 import bookings_pb2 as bpb
from crm.bookings.v1 import bookings_pb2_grpc
from crm.leads.v1 import leads_pb2 as lpb
from crm.leads.v1 import leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as mpb
from crm.messaging.v1 import messaging_pb2_grpc

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.bootstrap import SPEC as LEADS
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from services.shared.server import RunningService
from tests.integration.bookings.conftest import at
from tests.support import databases
from tests.support.servers import environment, start_in_process

ORGS = {"default": "alice", "acme": "carol@acme"}
NUMBERS = {"default": "+14155550100", "acme": "+14155550200"}
PHONE = "+14155550123"
# Tables whose rows are no org's: the event log's head (a counter every org moves).
NO_ORG = {"leads_event_log", "bookings_event_log", "messaging_event_log"}


@pytest.fixture
async def services(postgres_url: str, tmp_path: Path,
                   channel_for: Callable[..., grpc.aio.Channel]
                   ) -> AsyncIterator[dict[str, RunningService]]:
    """The three services on one database, as SERVICE_ROLE, each org's data written."""
    env = environment(postgres_url, tmp_path)
    running: dict[str, RunningService] = {"leads": await start_in_process(LEADS, env)}
    extra = {"CRM_LEADS_TARGET": running["leads"].target,
             "CRM_SMS_FROM_NUMBERS": ",".join(f"{o}:{n}" for o, n in NUMBERS.items())}
    try:
        running["bookings"] = await start_in_process(BOOKINGS, {**env, **extra})
        running["messaging"] = await start_in_process(MESSAGING, {**env, **extra})
        for org, who in ORGS.items():
            await _write(running, channel_for, org, who)
        yield running
    finally:
        for server in reversed(running.values()):
            await server.stop(grace=1, drain=0)


async def _write(running: dict[str, RunningService], channel_for: Callable[..., Any],
                 org: str, who: str) -> None:
    """One of everything in `org`: a lead moved, an appointment confirmed, a text out
    and a STOP in, a template."""
    leads = leads_pb2_grpc.LeadsServiceStub(channel_for(running["leads"].target, who))
    bookings = bookings_pb2_grpc.BookingsServiceStub(channel_for(running["bookings"].target, who))
    messaging = messaging_pb2_grpc.MessagingServiceStub(
        channel_for(running["messaging"].target, who))
    gateway = messaging_pb2_grpc.MessagingServiceStub(
        channel_for(running["messaging"].target, "gateway"))
    lead = await leads.CreateLead(lpb.CreateLeadRequest(name=f"Ada of {org}", phone=PHONE),
                                  metadata=idempotency(new_key()))
    await leads.UpdateLeadStatus(lpb.UpdateLeadStatusRequest(
        lead_id=lead.lead_id, status=lpb.LEAD_STATUS_CONTACTED), metadata=idempotency(new_key()))
    booked = await bookings.CreateAppointment(bpb.CreateAppointmentRequest(
        lead_id=lead.lead_id, agent_id="agent-1", start_time=timestamp(at(0)),
        end_time=timestamp(at(1))), metadata=idempotency(new_key()))
    await bookings.ConfirmAppointment(bpb.ConfirmAppointmentRequest(
        appointment_id=booked.appointment_id), metadata=idempotency(new_key()))
    await messaging.SendSms(mpb.SendSmsRequest(lead_id=lead.lead_id, body="Hello"),
                            metadata=idempotency(new_key()))
    await messaging.SaveMessageTemplate(mpb.SaveMessageTemplateRequest(name="Hi", body="Hi"),
                                        metadata=idempotency(new_key()))
    await gateway.ReceiveInboundMessage(mpb.ReceiveInboundMessageRequest(
        from_number=PHONE, to=NUMBERS[org], body="STOP", provider_message_id=f"SM-{org}"),
        metadata=idempotency(new_key()))


def _tables(conn: psycopg.Connection[Any]) -> list[tuple[str, bool, bool]]:
    return [(name, bool(enabled), bool(forced)) for name, enabled, forced in conn.execute(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
        "AND relname NOT LIKE '%alembic_version' ORDER BY relname").fetchall()]


async def test_the_services_role_is_bound_by_row_level_security(
    services: dict[str, RunningService], postgres_url: str,
) -> None:
    with psycopg.connect(databases.libpq_url(postgres_url), autocommit=True) as conn:
        role = conn.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
                            "WHERE rolname = current_user").fetchone()
        assert role == (databases.SERVICE_ROLE, False, False)
        owners = {row[0] for row in conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert owners == {databases.SERVICE_ROLE}  # FORCE is what binds the owner
        tables = _tables(conn)
    assert len(tables) == 16
    assert [name for name, enabled, forced in tables if not (enabled and forced)] == []


async def test_a_query_that_forgets_its_filter_sees_one_org(
    services: dict[str, RunningService], postgres_url: str,
) -> None:
    with psycopg.connect(databases.libpq_url(postgres_url)) as conn:
        tables = [name for name, _, _ in _tables(conn)]
        conn.rollback()
        for org in ORGS:
            conn.execute("SELECT set_config('crm.org', %s, true)", (org,))
            for table in tables:
                if table in NO_ORG:
                    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
                    continue
                seen = [row[0] for row in conn.execute(f"SELECT org FROM {table}").fetchall()]
                assert seen, f"{table}: nothing of {org} is visible"
                assert set(seen) == {org}, f"{table} as {org}: {sorted(set(seen))}"
            conn.rollback()  # the setting is the transaction's: gone with it
        for table in tables:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        conn.rollback()


async def test_a_write_cannot_reach_another_org(
    services: dict[str, RunningService], postgres_url: str,
) -> None:
    with psycopg.connect(databases.libpq_url(postgres_url)) as conn:
        conn.execute("SELECT set_config('crm.org', 'acme', true)")
        renamed = conn.execute("UPDATE leads SET name = 'Renamed'").rowcount
        assert renamed == 1  # acme's one lead, not default's
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "INSERT INTO message_templates (template_id, name, body, created_by, created_at,"
                " updated_by, updated_at, version, org) VALUES ('t-x', 'x', 'x', 'carol', now(),"
                " 'carol', now(), 1, 'default')")
        conn.rollback()
    with psycopg.connect(databases.admin_url(postgres_url)) as admin:
        names = {row[0] for row in admin.execute("SELECT name FROM leads").fetchall()}
    assert names == {"Ada of default", "Ada of acme"}  # the update was rolled back, too
