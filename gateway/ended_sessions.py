"""Sessions that were logged out, so that a copy of their cookie stays refused.

A session cookie is signed, not stored: anyone holding a copy could use it
until it expires. Logging out records the session's nonce here, and every
request with a cookie asks whether its session has ended, so a stolen or
replayed cookie is refused (401 SESSION_ENDED) from the moment its owner logs
out, on every replica that shares the store, and after a restart.

Where the record is kept, as for the services (`<SERVICE>_DATABASE_URL`, then
CRM_DATABASE_URL):

    GATEWAY_DATABASE_URL or CRM_DATABASE_URL = postgresql://…
        a table `gateway_ended_sessions` there, through psycopg (imported only
        then): what replicas of the gateway must share
    otherwise
        SQLite, CRM_DATA_DIR/gateway.db (Python's own sqlite3): one gateway

A record is kept until its session would have expired anyway, then deleted.
The gateway never loads SQLAlchemy: one table, two statements.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from google.rpc import code_pb2

from gateway.errors import GatewayError

log = logging.getLogger("crm.gateway")

TABLE = "gateway_ended_sessions"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} "
           "(nonce TEXT PRIMARY KEY, expires BIGINT NOT NULL)")


class EndedSessions(Protocol):
    async def end(self, nonce: str, expires: int) -> None: ...

    async def ended(self, nonce: str) -> bool: ...

    async def close(self) -> None: ...


def unavailable() -> GatewayError:
    """Fail closed: a cookie whose session cannot be checked is not honoured (503)."""
    return GatewayError(code_pb2.UNAVAILABLE, "SESSION_STORE_UNAVAILABLE",
                        "the gateway cannot check sessions right now; try again",
                        retry_after=1.0)


class SqliteEndedSessions:
    """In a SQLite file: for one gateway (and `make run`). Lookups by primary key take
    microseconds, so they run on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(_CREATE)
            self._db = db
        return self._db

    async def end(self, nonce: str, expires: int) -> None:
        try:
            db = self._open()
            db.execute(f"INSERT OR IGNORE INTO {TABLE} (nonce, expires) VALUES (?, ?)",
                       (nonce, expires))
            db.execute(f"DELETE FROM {TABLE} WHERE expires < ?", (int(time.time()),))
        except (OSError, sqlite3.Error):
            log.exception("cannot record an ended session in %s", self.path)
            raise unavailable() from None

    async def ended(self, nonce: str) -> bool:
        try:
            row = self._open().execute(f"SELECT 1 FROM {TABLE} WHERE nonce = ?",
                                       (nonce,)).fetchone()
        except (OSError, sqlite3.Error):
            log.exception("cannot read ended sessions from %s", self.path)
            raise unavailable() from None
        return row is not None

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class PostgresEndedSessions:
    """In PostgreSQL, shared by every replica: one connection, its statements in turn,
    opened again if it breaks; while PostgreSQL cannot be reached, a cookie is 503."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _run(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        import psycopg  # only a gateway whose sessions live in PostgreSQL loads it

        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self.conninfo, autocommit=True, connect_timeout=5)
                        await self._conn.execute(_CREATE)
                    cursor = await self._conn.execute(statement, params)
                    return list(await cursor.fetchall()) if cursor.description else []
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt == 2:
                        raise unavailable() from None
        raise AssertionError("unreachable")

    async def end(self, nonce: str, expires: int) -> None:
        await self._run(f"INSERT INTO {TABLE} (nonce, expires) VALUES (%s, %s) "
                        "ON CONFLICT (nonce) DO NOTHING", (nonce, expires))
        await self._run(f"DELETE FROM {TABLE} WHERE expires < %s", (int(time.time()),))

    async def ended(self, nonce: str) -> bool:
        return bool(await self._run(f"SELECT 1 FROM {TABLE} WHERE nonce = %s", (nonce,)))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def ended_sessions(database_url: str) -> EndedSessions:
    """The store a gateway configured with `database_url` keeps ended sessions in."""
    scheme, _, rest = database_url.partition("://")
    if scheme.startswith("postgresql"):
        return PostgresEndedSessions(f"postgresql://{rest}")
    return SqliteEndedSessions(Path(rest.removeprefix("/")))
