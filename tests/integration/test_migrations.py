"""Migrations: applied at start under a lock, or alone; they match the code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from services.bookings.bootstrap import SPEC as BOOKINGS
from services.leads.adapters import metadata as leads_metadata
from services.leads.bootstrap import SPEC as LEADS
from services.messaging.adapters import metadata as messaging_metadata
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared import migrations, sql
from services.shared.config import normalize_database_url
from services.shared.db import Database
from tests.support.servers import ROOT, environment


async def test_replicas_migrating_at_once_all_succeed_and_migrate_once(database_url: str) -> None:
    databases = [Database(database_url, pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(
            *(migrations.upgrade(db, "leads", LEADS.migrations) for db in databases)
        )
        async with databases[0].transaction(write=True) as conn:
            if not databases[0].is_sqlite:  # the log row is seen in any org's scope
                await conn.execute(text("SELECT set_config('crm.org', 'default', true)"))
            versions = (await conn.execute(text("SELECT version_num FROM leads_alembic_version")))
            assert [row[0] for row in versions] == ["0005"]  # the head
            heads = (await conn.execute(text("SELECT count(*) FROM leads_event_log"))).scalar()
            assert heads == 1
    finally:
        for db in databases:
            await db.dispose()


SCHEMAS = {"leads": (LEADS, leads_metadata), "messaging": (MESSAGING, messaging_metadata)}


@pytest.mark.parametrize("service", sorted(SCHEMAS))
async def test_the_migrated_schema_is_exactly_what_the_code_uses(
    database_url: str, service: str
) -> None:
    spec, metadata = SCHEMAS[service]
    db = Database(database_url, pool_size=1)
    try:
        await migrations.upgrade(db, service, spec.migrations)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(
                        sync, opts={"compare_type": True,
                                    "version_table": migrations.version_table(service)}),
                    metadata,
                )
            )
        assert diff == []
    finally:
        await db.dispose()


def test_migrate_runs_alone_from_the_command_line(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, **environment(database_url, tmp_path, CRM_LOG_LEVEL="INFO")}
    done = subprocess.run([sys.executable, "-m", "services.leads", "migrate"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "migrated leads" in done.stderr

    async def version() -> str:
        db = Database(normalize_database_url(database_url), pool_size=1)
        try:
            async with db.transaction(write=False) as conn:
                return str((await conn.execute(
                    text("SELECT version_num FROM leads_alembic_version"))).scalar_one())
        finally:
            await db.dispose()

    assert asyncio.run(version()) == "0005"


def _lookups() -> dict[str, tuple[Any, list[str], list[tuple[Any, dict[str, Any], str]]]]:
    """Per service: its spec, rows of one org to fill its tables with, and its
    lookups by id (statement, values, the key it must use)."""
    from services.bookings import adapters as bookings
    from services.leads import adapters as leads
    from services.messaging import adapters as messaging

    return {
        "leads": (LEADS, ["""
            INSERT INTO leads (lead_id, name, phone, email, status, version, created_by,
                               created_at, updated_at, org)
            SELECT 'l-' || g, 'Ada', '+14155550111', '', 'NEW', 1, 'alice', now(), now(),
                   'default' FROM generate_series(1, 2000) g"""], [
            (leads.UPDATE_LEAD, {"status": "CONTACTED", "version": 2, "b_lead_id": "l-7",
                                 "b_version": 1, "b_org": "default"}, "pk_leads"),
            (leads.SELECT_LEAD_FOR_UPDATE, {"lead_id": "l-7", "org": "default"}, "pk_leads"),
        ]),
        "bookings": (BOOKINGS, ["""
            INSERT INTO appointments (appointment_id, lead_id, agent_id, start_time, end_time,
                notes, status, version, created_by, created_at, updated_at, confirmed_by,
                cancelled_by, cancel_reason, completed_by, org)
            SELECT 'a-' || g, 'l-1', 'agent', now() + g * interval '1 hour',
                   now() + g * interval '1 hour' + interval '30 minutes', '', 'SCHEDULED', 1,
                   'alice', now(), now(), '', '', '', '', 'default'
            FROM generate_series(1, 2000) g"""], [
            (bookings.UPDATE_APPOINTMENT, {"status": "CONFIRMED", "version": 2,
                                           "b_appointment_id": "a-7", "b_version": 1,
                                           "b_org": "default"}, "pk_appointments"),
            (bookings.SELECT_APPOINTMENT_FOR_UPDATE, {"appointment_id": "a-7", "org": "default"},
             "pk_appointments"),
        ]),
        "messaging": (MESSAGING, ["""
            INSERT INTO messages SELECT 'm-' || g, 'lead-1', 'outbound', '+14155550111', '',
                'Hi', 1, 'GSM_7', 'sent', 'console', 'SM' || g, 0, '', 'accepted', 'alice',
                now(), now(), 1, 'default' FROM generate_series(1, 2000) g""", """
            INSERT INTO message_templates SELECT 't-' || g, 'name ' || g, 'Hi', 'alice', now(),
                'alice', now(), 1, 'default' FROM generate_series(1, 2000) g"""], [
            (messaging.UPDATE_MESSAGE, {"status": "sent", "version": 2, "b_message_id": "m-7",
                                        "b_version": 1, "b_org": "default"}, "pk_messages"),
            (messaging.SELECT_MESSAGE_FOR_UPDATE, {"message_id": "m-7", "org": "default"},
             "pk_messages"),
            (messaging.UPDATE_TEMPLATE, {"body": "Hi", "version": 2, "b_template_id": "t-7",
                                         "b_version": 1, "b_org": "default"},
             "pk_message_templates"),
            (messaging.SELECT_TEMPLATE, {"template_id": "t-7", "org": "default"},
             "pk_message_templates"),
        ]),
    }


@pytest.mark.postgres_only
@pytest.mark.parametrize("service", ["leads", "bookings", "messaging"])
async def test_a_row_is_found_by_its_key_before_the_table_has_statistics(
    database_url: str, service: str,
) -> None:
    """Keys lead with the org, as the other indexes do (services.shared.migration_keys):
    before autovacuum's first ANALYZE the planner must still take the key for a lookup
    by id, not an index that starts with the org (a walk through every row of the
    org), in the generic plan a connection caches for the statement."""
    spec, rows, lookups = _lookups()[service]
    db = Database(database_url, pool_size=1)
    try:
        await migrations.upgrade(db, service, spec.migrations)
    finally:
        await db.dispose()
    url = normalize_database_url(database_url).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('crm.org', 'default', false)")
        for fill in rows:
            conn.execute(fill)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for n, (statement, params, key) in enumerate(lookups):
            plan = sql._plan(sql.postgres_sql(statement, params), params)
            assert plan is not None
            conn.execute(f"PREPARE lookup_{n} AS {plan.body}")
            values = ", ".join(conn.execute("SELECT quote_nullable(%s::text)", [params[name]])
                               .fetchone()[0] for name in plan.order)  # type: ignore[index]
            explained = "\n".join(row[0] for row in conn.execute(
                f"EXPLAIN EXECUTE lookup_{n}({values})"))
            assert f"Index Scan using {key} " in explained, explained
