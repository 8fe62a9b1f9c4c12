"""Alembic migrations per service, applied under a lock.

Replicas that start together all call `upgrade`; a PostgreSQL advisory lock
(a file lock on SQLite) lets one migrate while the others wait, then find
nothing left to do. Each service keeps its own version table
(`<service>_alembic_version`), so services may share one database.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
from pathlib import Path
from typing import IO

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared.db import Database


def version_table(service: str) -> str:
    return f"{service}_alembic_version"


def _config(service: str, scripts: Path, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.attributes["connection"] = connection
    config.attributes["version_table"] = version_table(service)
    return config


def _lock_key(service: str) -> int:
    digest = hashlib.sha256(f"closed-loop migrate {service}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _acquire_file_lock(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


async def upgrade(db: Database, service: str, scripts: Path, revision: str = "head") -> None:
    """Bring the service's tables to `revision`, safely alongside other replicas."""
    if db.is_sqlite:
        handle = await asyncio.to_thread(
            _acquire_file_lock, Path(f"{db.url.database}.migrate-lock")
        )
        try:
            await _run(db, service, scripts, revision)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(service)})
        await conn.commit()
        try:
            await _upgrade_on(conn, service, scripts, revision)
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                               {"key": _lock_key(service)})
            await conn.commit()


async def _run(db: Database, service: str, scripts: Path, revision: str) -> None:
    async with db.engine.connect() as conn:
        # SQLite alters a table by making it again: a foreign key naming it would
        # refuse the old one's DROP. Off for the migration (outside any
        # transaction, where SQLite heeds it), on again after.
        await conn.run_sync(_foreign_keys, False)
        try:
            await _upgrade_on(conn, service, scripts, revision)
        finally:
            await conn.run_sync(_foreign_keys, True)


def _foreign_keys(sync: Connection, on: bool) -> None:
    cursor = sync.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


async def _upgrade_on(conn: AsyncConnection, service: str, scripts: Path, revision: str) -> None:
    await conn.run_sync(lambda sync: command.upgrade(_config(service, scripts, sync), revision))
    await conn.commit()


def run_env(context: EnvironmentContext, target_metadata: MetaData) -> None:
    """The body of every service's `migrations/env.py`."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through `python -m services.<name> migrate`, which provides "
            "the connection and the lock"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Migrations move every org's rows: the system scope (services.shared.orgs).
            connection.exec_driver_sql("SELECT set_config('crm.org', '*', true)")
        context.run_migrations()
