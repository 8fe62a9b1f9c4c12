"""Migrations: applied at start under a lock, or alone; they match the code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from services.leads.adapters import metadata as leads_metadata
from services.leads.bootstrap import SPEC as LEADS
from services.messaging.adapters import metadata as messaging_metadata
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared import migrations
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
