"""The bookings migrations: they match the code, and on PostgreSQL the database
itself refuses double bookings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from services.bookings.adapters import NO_DOUBLE_BOOKING, metadata
from services.bookings.bootstrap import SPEC as BOOKINGS
from services.shared import migrations
from services.shared.config import normalize_database_url
from services.shared.db import Database
from tests.support.servers import ROOT, environment


async def test_the_migrated_schema_is_exactly_what_the_code_uses(database_url: str) -> None:
    db = Database(database_url, pool_size=1)
    try:
        await migrations.upgrade(db, "bookings", BOOKINGS.migrations)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={
                        "compare_type": True,
                        "version_table": migrations.version_table("bookings"),
                    }),
                    metadata,
                )
            )
        assert diff == []
    finally:
        await db.dispose()


async def test_on_postgresql_an_exclusion_constraint_keeps_confirmed_slots_apart(
    postgres_url: str,
) -> None:
    db = Database(normalize_database_url(postgres_url), pool_size=1)
    try:
        await migrations.upgrade(db, "bookings", BOOKINGS.migrations)
        async with db.transaction(write=False) as conn:
            definition = (await conn.execute(
                text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                     "WHERE conname = :name AND contype = 'x'"),
                {"name": NO_DOUBLE_BOOKING},
            )).scalar_one()
        assert "tstzrange(start_time, end_time, '[)'::text) WITH &&" in definition
        assert "agent_id WITH =" in definition
        assert "WHERE (((status)::text = 'confirmed'::text))" in definition
    finally:
        await db.dispose()


def test_migrate_runs_alone_from_the_command_line(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, **environment(database_url, tmp_path, CRM_LOG_LEVEL="INFO")}
    done = subprocess.run([sys.executable, "-m", "services.bookings", "migrate"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "migrated bookings" in done.stderr

    async def version() -> str:
        db = Database(normalize_database_url(database_url), pool_size=1)
        try:
            async with db.transaction(write=False) as conn:
                return str((await conn.execute(
                    text("SELECT version_num FROM bookings_alembic_version"))).scalar_one())
        finally:
            await db.dispose()

    assert asyncio.run(version()) == "0004"
