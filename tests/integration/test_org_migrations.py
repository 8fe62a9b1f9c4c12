"""The org migrations on databases that already hold data: every existing row
goes to the org `default`, where the services find it, and no other org sees it.
On PostgreSQL the tables come out under row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.bootstrap import SPEC as LEADS
from services.leads.domain import LeadNotFound
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared import migrations
from services.shared.auth import Caller
from services.shared.db import Database
from services.shared.server import RunningService
from tests.support import databases
from tests.support.servers import environment, start_in_process

# The last revision of each service before orgs, and the tables of each.
BEFORE_ORGS = {"leads": "0002", "bookings": "0001", "messaging": "0002"}
TABLES = {
    "leads": ["leads", "lead_status_changes", "leads_events", "leads_idempotency_keys"],
    "bookings": ["appointments", "appointment_changes", "bookings_events",
                 "bookings_idempotency_keys"],
    "messaging": ["messages", "recipients", "message_templates", "messaging_events",
                  "messaging_idempotency_keys"],
}
SPECS = {"leads": LEADS, "bookings": BOOKINGS, "messaging": MESSAGING}
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LEAD_ID = "0b5f0f3e-6c1a-4c35-9d8e-000000000001"
APPOINTMENT_ID = "0b5f0f3e-6c1a-4c35-9d8e-000000000002"
MESSAGE_ID = "0b5f0f3e-6c1a-4c35-9d8e-000000000003"
TEMPLATE_ID = "0b5f0f3e-6c1a-4c35-9d8e-000000000004"
PHONE = "+14155550123"


def _rows(service: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows as the service wrote them before orgs, one in every table."""
    event = {"position": 1, "occurred_at": WHEN, "type": "created", "actor": "alice",
             "lead_id": LEAD_ID, "subject_id": None, "payload": b"\x00"}
    key = {"principal": "alice", "method": "/m/Create", "key": "k-1", "fingerprint": "f",
           "state": "done", "code": 0, "response": b"", "resource_id": None,
           "created_at": WHEN, "expires_at": datetime(2099, 1, 1, tzinfo=UTC)}
    shared = [(f"{service}_events", event), (f"{service}_idempotency_keys", key)]
    if service == "leads":
        return [("leads", {"lead_id": LEAD_ID, "name": "Ada", "phone": PHONE,
                           "email": "ada@example.com", "status": "contacted", "version": 2,
                           "created_by": "alice", "created_at": WHEN, "updated_at": WHEN}),
                ("lead_status_changes", {"lead_id": LEAD_ID, "from_status": "new",
                                         "to_status": "contacted", "actor": "alice",
                                         "changed_at": WHEN, "idempotency_key": "k-0",
                                         "version": 2}), *shared]
    if service == "bookings":
        return [("appointments", {
            "appointment_id": APPOINTMENT_ID, "lead_id": LEAD_ID, "agent_id": "agent-1",
            "start_time": WHEN, "end_time": WHEN.replace(hour=13), "notes": "",
            "status": "confirmed", "version": 2, "created_by": "alice", "created_at": WHEN,
            "updated_at": WHEN, "confirmed_by": "alice", "confirmed_at": WHEN,
            "cancelled_by": "", "cancelled_at": None, "cancel_reason": "",
            "completed_by": "", "completed_at": None}),
                ("appointment_changes", {
                    "appointment_id": APPOINTMENT_ID, "from_status": "pending",
                    "to_status": "confirmed", "actor": "alice", "changed_at": WHEN,
                    "idempotency_key": "k-0", "reason": "", "version": 2}), *shared]
    return [("messages", {
        "message_id": MESSAGE_ID, "lead_id": LEAD_ID, "direction": "outbound", "to_phone": PHONE,
        "from_phone": "", "body": "Hi", "segments": 1, "encoding": "GSM_7", "status": "delivered",
        "provider": "console", "provider_message_id": "SM1", "error_code": 0,
        "error_message": "", "handoff": "accepted", "created_by": "alice", "created_at": WHEN,
        "updated_at": WHEN, "version": 3}),
            ("recipients", {"phone": PHONE, "opted_out": True, "keyword": "STOP",
                            "changed_at": WHEN}),
            ("message_templates", {"template_id": TEMPLATE_ID, "name": "Hello", "body": "Hi",
                                   "created_by": "alice", "created_at": WHEN,
                                   "updated_by": "alice", "updated_at": WHEN, "version": 1}),
            *shared]


async def _populate(db: Database, service: str) -> None:
    async with db.transaction(write=True) as conn:
        for table, row in _rows(service):
            names = ", ".join(row)
            values = ", ".join(f":{name}" for name in row)
            await conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), row)
        await conn.execute(text(f"UPDATE {service}_event_log SET head = 1"))
        await conn.commit()


async def _orgs_of(url: str, table: str) -> list[str]:
    """Every row's org, read past row-level security (the administrator, on PostgreSQL)."""
    admin = Database(url if url.startswith("sqlite") else _admin(url), pool_size=1)
    try:
        async with admin.transaction(write=False) as conn:
            return [row[0] for row in await conn.execute(text(f"SELECT org FROM {table}"))]
    finally:
        await admin.dispose()


def _admin(url: str) -> str:
    return "postgresql+psycopg://" + databases.admin_url(url).partition("://")[2]


@pytest.fixture
async def migrated(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, RunningService]]:
    """Every service's database as it was before orgs, holding data, then started:
    the services migrate it themselves."""
    db = Database(database_url, pool_size=1)
    try:
        for service, revision in BEFORE_ORGS.items():
            await migrations.upgrade(db, service, SPECS[service].migrations, revision)
            await _populate(db, service)
    finally:
        await db.dispose()
    env = environment(database_url, tmp_path)
    running = {name: await start_in_process(spec, env) for name, spec in SPECS.items()}
    yield running
    for server in running.values():
        await server.stop(grace=1, drain=0)


@pytest.mark.parametrize("service", sorted(TABLES))
async def test_existing_rows_go_to_the_default_org(
    migrated: dict[str, RunningService], database_url: str, service: str,
) -> None:
    for table in TABLES[service]:
        assert await _orgs_of(database_url, table) == ["default"], table


async def test_the_services_find_existing_rows_in_default_and_only_there(
    migrated: dict[str, RunningService],
) -> None:
    default, acme = Caller("alice"), Caller("alice", org="acme")

    async def lead_as(caller: Caller) -> Any:
        async def get(uow: Any) -> Any:
            async with uow.for_caller(caller, read_only=True):
                return await uow.leads.get(LEAD_ID)
        return await migrated["leads"].runtime.units.attempt(get, time_remaining=10)

    assert (await lead_as(default)).version == 2
    with pytest.raises(LeadNotFound):
        await lead_as(acme)

    async def consent_as(caller: Caller) -> bool:
        async def get(uow: Any) -> bool:
            async with uow.for_caller(caller, read_only=True):
                return bool((await uow.recipients.get(PHONE, now=WHEN)).opted_out)
        return bool(await migrated["messaging"].runtime.units.attempt(get,
                                                                       time_remaining=10))

    assert await consent_as(default) is True
    assert await consent_as(acme) is False

    async def appointments_as(caller: Caller) -> list[Any]:
        from services.bookings.service import Filter

        async def find(uow: Any) -> list[Any]:
            async with uow.for_caller(caller, read_only=True):
                return list(await uow.appointments.find(Filter(), None, 10))
        return list(await migrated["bookings"].runtime.units.attempt(find, time_remaining=10))

    assert [a.appointment_id for a in await appointments_as(default)] == [APPOINTMENT_ID]
    assert await appointments_as(acme) == []


async def test_a_key_stored_before_orgs_is_the_default_orgs(
    migrated: dict[str, RunningService],
) -> None:
    from services.shared.idempotency import Key

    store = migrated["leads"].runtime.storage.keys
    key = Key("/m/Create", "k-1", "f")

    async def peek(caller: Caller) -> Any:
        async def read(uow: Any) -> Any:
            async with uow.for_caller(caller, read_only=True):
                return await uow.keys.peek(key)
        return await migrated["leads"].runtime.units.attempt(read, time_remaining=10)

    assert await peek(Caller("alice")) is not None
    assert await peek(Caller("alice", org="acme")) is None
    assert store is not None


@pytest.mark.postgres_only
async def test_on_postgresql_every_table_comes_out_under_forced_row_level_security(
    migrated: dict[str, RunningService], database_url: str,
) -> None:
    admin = Database(_admin(database_url), pool_size=1)
    try:
        async with admin.transaction(write=False) as conn:
            rows = (await conn.execute(text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
                "AND relname NOT LIKE '%alembic_version'"))).all()
    finally:
        await admin.dispose()
    expected = {t for tables in TABLES.values() for t in tables} | {
        f"{s}_event_log" for s in TABLES}
    assert {r.relname for r in rows} == expected
    assert [r.relname for r in rows if not (r.relrowsecurity and r.relforcerowsecurity)] == []
