"""Migrations: applied at start under a lock, or alone; they match the code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

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
            assert [row[0] for row in versions] == ["0004"]  # the head
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

    assert asyncio.run(version()) == "0004"


@pytest.mark.postgres_only
async def test_a_message_is_found_by_its_key_before_the_table_has_statistics(
    database_url: str,
) -> None:
    """Keys lead with the org, as the other indexes do: before autovacuum's first
    ANALYZE the planner must still take the key for a lookup by id, not an index
    that starts with the org (a scan of every row of the org), in the generic plan
    a connection caches for the statement."""
    from services.messaging import adapters

    db = Database(database_url, pool_size=1)
    try:
        await migrations.upgrade(db, "messaging", MESSAGING.migrations)
    finally:
        await db.dispose()
    lookups = [  # (statement, its values, the key it must use)
        (adapters.UPDATE_MESSAGE, {"status": "sent", "version": 2, "b_message_id": "m-7",
                                   "b_version": 1, "b_org": "default"}, "pk_messages"),
        (adapters.SELECT_MESSAGE_FOR_UPDATE, {"message_id": "m-7", "org": "default"},
         "pk_messages"),
        (adapters.UPDATE_TEMPLATE, {"body": "Hi", "version": 2, "b_template_id": "t-7",
                                    "b_version": 1, "b_org": "default"}, "pk_message_templates"),
        (adapters.SELECT_TEMPLATE, {"template_id": "t-7", "org": "default"},
         "pk_message_templates"),
    ]
    url = normalize_database_url(database_url).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('crm.org', 'default', false)")
        conn.execute("""
            INSERT INTO messages SELECT 'm-' || g, 'lead-1', 'outbound', '+14155550111', '',
                'Hi', 1, 'GSM_7', 'sent', 'console', 'SM' || g, 0, '', 'accepted', 'alice',
                now(), now(), 1, 'default' FROM generate_series(1, 2000) g""")
        conn.execute("""
            INSERT INTO message_templates SELECT 't-' || g, 'name ' || g, 'Hi', 'alice', now(),
                'alice', now(), 1, 'default' FROM generate_series(1, 2000) g""")
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
