"""Statements built once, and sent in batches on PostgreSQL.

A call on the hot path runs a handful of statements; building each with
SQLAlchemy on every call, and sending each in its own round trip, costs more
than the work itself. So:

- hot statements are module constants with bind parameters, run with plain
  parameter dicts; on PostgreSQL each is compiled once to psycopg's SQL, and
  psycopg prepares it on the server after a few uses;
- `batch` sends several statements in one psycopg pipeline: one round trip,
  with the transaction's BEGIN (and COMMIT, if asked) riding along.

A write transaction's connection is in autocommit mode for psycopg, and its
BEGIN is a statement of ours that goes out with the first statement (see
`begin_with_first_statement`): psycopg's own BEGIN would wait for its answer,
a round trip of its own, before the first statement could go. Its COMMIT is a
statement too, sent in the same pipeline as the last writes.

SQLite runs the same statements through SQLAlchemy, one by one: its writers
are serialized in the process and its round trips are function calls.

On PostgreSQL every statement runs in one organization's scope (row-level
security reads `crm.org`): `scope` names it for a checked-out connection, and
the first statement sent on it then carries `set_config('crm.org', org, true)`
in the same pipeline, so scoping costs no round trip. A transaction keeps the
setting to its end; a read-only connection (autocommit: every statement its
own transaction) carries it with every statement.

A write may be guarded: it must change exactly so many rows (an UPDATE whose
WHERE names the version it read). On PostgreSQL a guarded write goes out as a
statement that fails inside the transaction when the count is wrong, so the
COMMIT riding in the same pipeline never happens; `GuardFailed` says so.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Executable, TextClause, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
# Compiled SQL, per statement and per set of parameter names. Keyed by the
# statement itself, held weakly: a statement's SQL goes when it goes, and can
# never be served for another statement that happens to take its place (and id).
_compiled: weakref.WeakKeyDictionary[Executable, dict[tuple[str, ...], str]] = (
    weakref.WeakKeyDictionary())
# What a guarded write's failure says, so that it can be told from others.
_GUARD = "crm guarded write"

Statement = Executable
Params = Mapping[str, Any]


@dataclass(frozen=True)
class Guarded:
    """A write that must change exactly `rows` rows, or fail (see `GuardFailed`)."""

    statement: Statement
    rows: int


class GuardFailed(Exception):
    """A guarded write changed another number of rows than it must."""


# The transaction-local setting row-level security reads (see services.shared.rls).
SET_SCOPE = text("SELECT set_config('crm.org', %(crm_org)s, true)")
BEGIN = text("BEGIN")
COMMIT = text("COMMIT")


@dataclass
class _Scope:
    org: str
    # Autocommit: every statement is its own transaction and must carry the setting.
    every_statement: bool
    # Statements to send once, before the setting (a group commit's SAVEPOINT).
    preamble: Sequence[tuple[Statement, Params]] = ()
    pending: bool = field(default=True)


_scopes: weakref.WeakKeyDictionary[AsyncConnection, _Scope] = weakref.WeakKeyDictionary()
# The psycopg connections of write transactions whose BEGIN has not gone out yet.
_unbegun: weakref.WeakSet[Any] = weakref.WeakSet()


def begin_with_first_statement(conn: AsyncConnection) -> None:
    """PostgreSQL: `conn` (psycopg in autocommit mode) starts a transaction with the
    next statement sent through this module: BEGIN goes out in its round trip. A
    statement sent through SQLAlchemy instead sends it first (`begin_if_pending`)."""
    _unbegun.add(driver(conn))


def forget_begin(driver_connection: Any) -> None:
    """The write transaction on this psycopg connection has ended: its BEGIN, if it
    never went out, is not for whoever takes the connection next."""
    _unbegun.discard(driver_connection)


def _take_begin(driver_connection: Any) -> bool:
    """Whether a BEGIN is pending on this psycopg connection; it is the caller's to
    send from now on."""
    if driver_connection in _unbegun:
        _unbegun.discard(driver_connection)
        return True
    return False


def begin_if_pending(driver_connection: Any, cursor: Any) -> None:
    """Send the pending BEGIN of a write transaction on `cursor` (SQLAlchemy's,
    before it runs a statement of its own: the engine's before_cursor_execute)."""
    if _take_begin(driver_connection):
        cursor.execute(BEGIN.text)


def scope(conn: AsyncConnection, org: str, *, every_statement: bool,
          preamble: Sequence[tuple[Statement, Params]] = ()) -> None:
    """PostgreSQL: run what follows on `conn` (checked out for one transaction, or
    for autocommit reads: `every_statement`) in `org`'s scope. `preamble` goes out
    once, first, in the same round trip as the next statement."""
    _scopes[conn] = _Scope(org, every_statement, tuple(preamble))


def scope_sent(conn: AsyncConnection) -> bool:
    """Whether the scope (and its preamble) named last for `conn` has gone out."""
    found = _scopes.get(conn)
    return found is not None and not found.pending


def _scoping(conn: AsyncConnection) -> list[tuple[Statement, Params]]:
    """What to send before the next statement on `conn`: its BEGIN, its preamble,
    then the set_config, if it needs them."""
    begin: list[tuple[Statement, Params]] = []
    if _unbegun and _take_begin(driver(conn)):  # reads never look their connection up
        begin.append((BEGIN, {}))
    found = _scopes.get(conn)
    if found is None or not found.pending:
        return begin
    if not found.every_statement:
        found.pending = False
    preamble, found.preamble = found.preamble, ()
    return [*begin, *preamble, (SET_SCOPE, {"crm_org": found.org})]


def raw(sql_text: str) -> Executable:
    """A hand-written statement, for batches (psycopg `%(name)s` parameters)."""
    return text(sql_text)


def postgres_sql(statement: Statement | Guarded, params: Params) -> str:
    """The statement as psycopg runs it (`%(name)s` parameters), compiled once per
    set of parameter names (which decide the columns of an INSERT or UPDATE)."""
    if isinstance(statement, Guarded):
        # The count is checked in the database, so a wrong one aborts the
        # transaction. The text cast fails only when the count is wrong, and
        # names the counts; it depends on count(*), so it is not folded early.
        return (f"WITH guarded AS ({postgres_sql(statement.statement, params)} RETURNING 1) "
                f"SELECT CASE WHEN count(*) = {int(statement.rows)} THEN 0 ELSE "
                f"('{_GUARD}: {int(statement.rows)} rows expected, ' || count(*) "
                f"|| ' changed')::int END FROM guarded")
    if isinstance(statement, TextClause):
        return statement.text
    names = tuple(params)
    known = _compiled.get(statement)
    if known is None:
        known = _compiled[statement] = {}
    found = known.get(names)
    if found is None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=_DIALECT, column_keys=list(params))
        found = known[names] = str(compiled)
    return found


def guard_failure(error: BaseException) -> GuardFailed | None:
    """The GuardFailed a database error stands for, if it is a guarded write's."""
    if isinstance(error, psycopg.errors.InvalidTextRepresentation) and _GUARD in str(error):
        return GuardFailed(str(error).splitlines()[0])
    return None


def driver(conn: AsyncConnection) -> Any:
    """The psycopg connection under a checked-out SQLAlchemy one (same transaction);
    reached without the greenlet hop of `get_raw_connection()`."""
    return conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]


async def batch(
    conn: AsyncConnection, statements: Sequence[tuple[Statement | Guarded, Params]], *,
    commit: bool = False,
) -> list[list[tuple[Any, ...]]]:
    """PostgreSQL: run `statements` (and COMMIT) in one round trip; the rows of each.

    A guarded write that changes the wrong number of rows raises GuardFailed,
    and nothing after it runs: the transaction is aborted, never committed.
    """
    raw = driver(conn)
    cursors = []
    scoping = _scoping(conn)
    if scoping:
        statements = [*scoping, *statements]
    try:
        async with raw.pipeline():
            for statement, params in statements:
                cursors.append(await raw.execute(postgres_sql(statement, params), params))
            if commit:
                # A statement, not raw.commit(): psycopg skips its COMMIT when it
                # believes no transaction is open, and the BEGIN of this very
                # pipeline may not have been confirmed to it yet.
                await raw.execute(COMMIT.text)
    except psycopg.errors.InvalidTextRepresentation as error:
        failed = guard_failure(error)
        if failed is None:
            raise
        raise failed from error
    rows: list[list[tuple[Any, ...]]] = []
    for cursor in cursors:
        rows.append(await cursor.fetchall() if cursor.description else [])
    if commit and conn.in_transaction():
        await conn.commit()  # SQLAlchemy's books, if it keeps any; nothing left to send
    return rows[len(scoping):]


async def fetch(conn: AsyncConnection, statement: Statement, params: Params) -> list[Any]:
    """Rows of one prebuilt statement, with attribute access by column name.

    PostgreSQL: on the psycopg connection directly (compiled once, prepared by
    psycopg); SQLite: through SQLAlchemy.
    """
    if conn.dialect.name != "postgresql":
        return list(await conn.execute(statement, params))
    return await _fetch_sql(conn, postgres_sql(statement, params), params)


async def rows(conn: AsyncConnection, statement: Statement) -> list[Any]:
    """Rows of a statement built for one call (its values bound in it), with
    attribute access by column name; on PostgreSQL in the connection's scope."""
    if conn.dialect.name != "postgresql":
        return list(await conn.execute(statement))
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    return await _fetch_sql(conn, str(compiled), dict(compiled.params))


async def _fetch_sql(conn: AsyncConnection, sql_text: str, params: Params) -> list[Any]:
    raw = driver(conn)
    cursor = raw.cursor(row_factory=namedtuple_row)
    scoping = _scoping(conn)
    if not scoping:
        await cursor.execute(sql_text, params)
    else:
        async with raw.pipeline():
            for statement, values in scoping:
                await raw.execute(postgres_sql(statement, values), values)
            await cursor.execute(sql_text, params)
    found: list[Any] = await cursor.fetchall()
    return found
