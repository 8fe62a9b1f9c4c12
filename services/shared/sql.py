"""Statements built once, and sent in batches on PostgreSQL.

A call on the hot path runs a handful of statements; building each with
SQLAlchemy on every call, and sending each in its own round trip, costs more
than the work itself. So:

- hot statements are module constants with bind parameters, run with plain
  parameter dicts; on PostgreSQL each is compiled once to psycopg's SQL, and
  psycopg prepares it on the server after a few uses;
- `batch` sends several statements in one psycopg pipeline: one round trip,
  with the transaction's BEGIN (and COMMIT, if asked) riding along.

SQLite runs the same statements through SQLAlchemy, one by one: its writers
are serialized in the process and its round trips are function calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Executable, TextClause, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_compiled: dict[tuple[int, tuple[str, ...]], str] = {}

Statement = Executable
Params = Mapping[str, Any]


def raw(sql_text: str) -> Executable:
    """A hand-written statement, for batches (psycopg `%(name)s` parameters)."""
    return text(sql_text)


def postgres_sql(statement: Statement, params: Params) -> str:
    """The statement as psycopg runs it (`%(name)s` parameters), compiled once per
    set of parameter names (which decide the columns of an INSERT or UPDATE)."""
    if isinstance(statement, TextClause):
        return statement.text
    key = (id(statement), tuple(params))
    found = _compiled.get(key)
    if found is None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=_DIALECT, column_keys=list(params))
        found = _compiled[key] = str(compiled)
    return found


def driver(conn: AsyncConnection) -> Any:
    """The psycopg connection under a checked-out SQLAlchemy one (same transaction);
    reached without the greenlet hop of `get_raw_connection()`."""
    return conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]


async def batch(
    conn: AsyncConnection, statements: Sequence[tuple[Statement, Params]], *, commit: bool = False
) -> list[list[tuple[Any, ...]]]:
    """PostgreSQL: run `statements` (and COMMIT) in one round trip; the rows of each."""
    raw = driver(conn)
    cursors = []
    async with raw.pipeline():
        for statement, params in statements:
            cursors.append(await raw.execute(postgres_sql(statement, params), params))
        if commit:
            await raw.commit()
    rows: list[list[tuple[Any, ...]]] = []
    for cursor in cursors:
        rows.append(await cursor.fetchall() if cursor.description else [])
    if commit:
        await conn.commit()  # SQLAlchemy's books; nothing left to send
    return rows


async def fetch(conn: AsyncConnection, statement: Statement, params: Params) -> list[Any]:
    """Rows of one prebuilt statement, with attribute access by column name.

    PostgreSQL: on the psycopg connection directly (compiled once, prepared by
    psycopg); SQLite: through SQLAlchemy.
    """
    if conn.dialect.name != "postgresql":
        return list(await conn.execute(statement, params))
    cursor = driver(conn).cursor(row_factory=namedtuple_row)
    await cursor.execute(postgres_sql(statement, params), params)
    rows: list[Any] = await cursor.fetchall()
    return rows
