"""Statements built once, and sent in batches on PostgreSQL.

A call on the hot path runs a handful of statements; building each with
SQLAlchemy on every call, and sending each in its own round trip, costs more
than the work itself. So:

- hot statements are module constants with bind parameters, run with plain
  parameter dicts; on PostgreSQL each is compiled once to psycopg's SQL;
- `batch` sends several statements in one round trip, with the transaction's
  BEGIN (and COMMIT, if asked) riding along.

How a round trip goes out on PostgreSQL (`_at_once`): its statements are one
query string, their values bound by psycopg's quoting (`as_literal`, through
one adapter cache a connection keeps: `mogrify` builds its cache afresh on
every call, which cost more than the quoting itself), sent with
the simple query protocol: one send, one wait. (A psycopg pipeline, the way it
went before, flushes a send per statement and polls around each; for the four
to eight statements of a write that was most of psycopg's CPU per call.) A
statement with values is prepared by the connection the first time it sends
it (`PREPARE crm_n AS …`, in the same string) and runs as `EXECUTE crm_n(…)`
from then on, so PostgreSQL parses and plans it once per connection, as it did
for psycopg's prepared statements. What a connection has prepared is known
only once a string has run without error (a PREPARE after a failing statement
never ran); a statement of a failed string is prepared afresh, under a new
name, when next sent. psycopg's own preparing is off for the pool's
connections (it would DEALLOCATE ALL after any ROLLBACK, ours included), and
a connection prepares at most `MOST_PREPARED` statements.

A write transaction's connection is in autocommit mode for psycopg, and its
BEGIN is a statement of ours that goes out with the first statement (see
`begin_with_first_statement`): psycopg's own BEGIN would wait for its answer,
a round trip of its own, before the first statement could go. Its COMMIT is a
statement too, sent in the same round trip as the last writes.

A group commit's member may leave its statements to go out later (`detach`,
`hold`): the next round trip on the connection through this module sends them
first (`_in_scope`), and a statement sent around this module while some are held
is refused, since it would go out ahead of them (`begin_if_pending`).

SQLite runs the same statements through SQLAlchemy, one by one: its writers
are serialized in the process and its round trips are function calls.

On PostgreSQL every statement runs in one organization's scope (row-level
security reads `crm.org`): `scope` names it for a checked-out connection, and
the first statement sent on it then carries `set_config('crm.org', org, true)`
in the same round trip, so scoping costs no round trip of its own. A transaction keeps the
setting to its end; a read-only connection (autocommit: each round trip's string
runs as one implicit transaction) carries it with every round trip.

A write may be guarded: it must change exactly so many rows (an UPDATE whose
WHERE names the version it read). On PostgreSQL a guarded write goes out as a
statement that fails inside the transaction when the count is wrong, so the
COMMIT riding in the same round trip never happens; `GuardFailed` says so.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import abc as psycopg_abc
from psycopg.adapt import Transformer
from psycopg.rows import namedtuple_row, tuple_row
from sqlalchemy import Executable, TextClause, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import metrics

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_ROUND_TRIPS = metrics.DB_ROUND_TRIPS
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
    """A write that must change exactly `rows` rows, or fail (see `GuardFailed`);
    with `read`, a SELECT that must find exactly `rows` rows (a check a write made
    without reading, see services.shared.uow `assume`)."""

    statement: Statement
    rows: int
    read: bool = False


class GuardFailed(Exception):
    """A guarded write changed another number of rows than it must."""


# The transaction-local setting row-level security reads (see services.shared.rls).
SET_SCOPE = text("SELECT set_config('crm.org', %(crm_org)s, true)")
BEGIN = text("BEGIN")
COMMIT = text("COMMIT")


@dataclass
class _Scope:
    org: str
    # Autocommit: every round trip is its own transaction and must carry the setting.
    every_statement: bool
    # Statements to send once, before the setting (a group commit's SAVEPOINT).
    preamble: Sequence[tuple[Statement, Params]] = ()
    pending: bool = field(default=True)
    # Statements to send ahead of the next ones, after the setting (`ahead`).
    riders: list[tuple[Statement, Params]] = field(default_factory=list)


_scopes: weakref.WeakKeyDictionary[AsyncConnection, _Scope] = weakref.WeakKeyDictionary()
# The psycopg connections of write transactions whose BEGIN has not gone out yet.
_unbegun: weakref.WeakSet[Any] = weakref.WeakSet()
# Per psycopg connection: what sends the statements held back on it (`hold`).
_held: weakref.WeakKeyDictionary[Any, Callable[[], Awaitable[None]]] = (
    weakref.WeakKeyDictionary())


def begin_with_first_statement(conn: AsyncConnection) -> None:
    """PostgreSQL: `conn` (psycopg in autocommit mode) starts a transaction with the
    next statement sent through this module: BEGIN goes out in its round trip. A
    statement sent through SQLAlchemy instead sends it first (`begin_if_pending`)."""
    _unbegun.add(driver(conn))


def forget(conn: AsyncConnection, driver_connection: Any) -> None:
    """The transaction on `conn` (over psycopg's `driver_connection`) has ended: its
    BEGIN, if it never went out, and the scope named for it (with whatever it had
    still to send) are not for whoever takes the connection next."""
    _unbegun.discard(driver_connection)
    _scopes.pop(conn, None)


def begun(conn: AsyncConnection) -> bool:
    """Whether the transaction on `conn` has sent its BEGIN (if it is to send one)."""
    return driver(conn) not in _unbegun


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
    if driver_connection in _held:
        raise RuntimeError("statements are held back on this connection: send through "
                           "services.shared.sql, which sends them first")
    if _take_begin(driver_connection):
        cursor.execute(BEGIN.text)


def scope(conn: AsyncConnection, org: str, *, every_statement: bool,
          preamble: Sequence[tuple[Statement, Params]] = ()) -> None:
    """PostgreSQL: run what follows on `conn` (checked out for one transaction, or
    for autocommit reads: `every_statement`) in `org`'s scope. `preamble` goes out
    once, first, in the same round trip as the next statement."""
    _scopes[conn] = _Scope(org, every_statement, tuple(preamble))


def ahead(conn: AsyncConnection, statements: Sequence[tuple[Statement, Params]]) -> None:
    """PostgreSQL: send `statements` ahead of the next ones sent on `conn` (checked out
    and scoped for one unit of work), in the same round trip, their rows unseen. They
    go with the unit of work's scope: a unit of work that never sends again never
    sends them. One that fails fails the round trip it rode in."""
    _scopes[conn].riders.extend(statements)


def scope_sent(conn: AsyncConnection) -> bool:
    """Whether the scope (and its preamble) named last for `conn` has gone out."""
    found = _scopes.get(conn)
    return found is not None and not found.pending


def _scoping(conn: AsyncConnection, *, with_begin: bool = True,
             ) -> tuple[list[tuple[Statement, Params]], Callable[[], None]]:
    """What to send before the next statement on `conn` (its BEGIN, its preamble,
    the set_config and the riders of `ahead`, if it needs them), and what marks
    them sent. The mark is made once the round trip's string is built, just before
    it goes: a string that could not be built (a value psycopg cannot quote) sends
    nothing, and leaves them all for the next. `with_begin` False: a pending BEGIN
    is left pending."""
    driver_connection = driver(conn) if _unbegun and with_begin else None
    begin = driver_connection is not None and driver_connection in _unbegun
    statements: list[tuple[Statement, Params]] = [(BEGIN, {})] if begin else []
    found = _scopes.get(conn)
    riders = 0
    if found is not None:
        if found.pending:
            statements += [*found.preamble, (SET_SCOPE, {"crm_org": found.org})]
        riders = len(found.riders)
        statements += found.riders

    def sent() -> None:
        if begin:
            _take_begin(driver_connection)
        if found is not None:
            del found.riders[:riders]
            if found.pending:
                found.preamble = ()
                found.pending = found.every_statement

    return statements, sent


def detach(conn: AsyncConnection, statements: Sequence[tuple[Statement | Guarded, Params]]
           ) -> list[tuple[str, Params]]:
    """PostgreSQL: what the connection's scope still has to send (its preamble, the
    set_config, the riders of `ahead`) and then `statements`, as SQL to go out later
    through `send`, in a round trip of the caller's choosing; the scope counts as
    sent. A pending BEGIN stays pending: it goes out with whatever is sent next."""
    scoping, sent = _scoping(conn, with_begin=False)
    detached = [(postgres_sql(statement, params), params)
                for statement, params in (*scoping, *statements)]
    sent()
    return detached


async def send(conn: AsyncConnection, statements: Sequence[tuple[str, Params]], *,
               commit: bool = False) -> None:
    """PostgreSQL: SQL made by `detach`, in one round trip, after the transaction's
    BEGIN if that has not gone out, and then COMMIT if asked; nothing of the scope
    named for `conn` (by now it is another unit of work's). Raises as `batch`."""
    raw_connection = driver(conn)
    begin = raw_connection in _unbegun

    def begins() -> None:
        _take_begin(raw_connection)

    await _at_once(raw_connection, [
        *([(BEGIN.text, {})] if begin else []), *statements,
        *([(COMMIT.text, {})] if commit else [])],
        tuple_row, begins if begin else None, rows=False)
    if commit and conn.in_transaction():
        await conn.commit()  # SQLAlchemy's books, if it keeps any; nothing left to send


def hold(conn: AsyncConnection, flush: Callable[[], Awaitable[None]]) -> None:
    """PostgreSQL: statements are held back on `conn` (a group commit's members'
    writes): before anything else goes out on it through this module, `flush()` is
    awaited, once, to send them."""
    _held[driver(conn)] = flush


def release_held(conn: AsyncConnection) -> Callable[[], Awaitable[None]] | None:
    """What `hold` left to send on `conn`, no longer held: the caller sends it."""
    return _held.pop(driver(conn), None)


def raw(sql_text: str) -> Executable:
    """A hand-written statement, for batches (psycopg `%(name)s` parameters)."""
    return text(sql_text)


def postgres_sql(statement: Statement | Guarded, params: Params) -> str:
    """The statement as psycopg runs it (`%(name)s` parameters), compiled once per
    set of parameter names (which decide the columns of an INSERT or UPDATE)."""
    if isinstance(statement, Guarded):
        # The count is checked in the database, so a wrong one aborts the
        # transaction; it depends on count(*), so it is not folded early.
        rows = int(statement.rows)
        returning = "" if statement.read else " RETURNING 1"
        return (f"WITH guarded AS ({postgres_sql(statement.statement, params)}{returning}) "
                "SELECT " + fail_unless(f"count(*) = {rows}", _GUARD,
                                        f"'{rows} rows expected, ' || count(*) || "
                                        f"' {'found' if statement.read else 'changed'}'")
                + " FROM guarded")
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


def fail_unless(condition: str, marker: str, detail: str) -> str:
    """A SQL expression that is 0 when `condition` holds and otherwise fails the
    statement, and so aborts its transaction, with an error naming `marker` and
    `detail` (`failed_for` tells it apart). `detail` must depend on what the
    statement read: a constant would be cast, and fail, as the statement is planned."""
    return f"CASE WHEN {condition} THEN 0 ELSE ('{marker}: ' || {detail})::int END"


def failed_for(error: BaseException, marker: str) -> bool:
    """Whether a database error is a `fail_unless` of `marker` failing."""
    return isinstance(error, psycopg.errors.InvalidTextRepresentation) and marker in str(error)


def guard_failure(error: BaseException) -> GuardFailed | None:
    """The GuardFailed a database error stands for, if it is a guarded write's."""
    if failed_for(error, _GUARD):
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
    sent = list(statements)
    if commit:
        # A statement, not raw.commit(): psycopg skips its COMMIT when it believes
        # no transaction is open, and the BEGIN sent with it is news to psycopg.
        sent.append((COMMIT, {}))
    found = await _in_scope(conn, [(postgres_sql(statement, params), params)
                                   for statement, params in sent], tuple_row)
    if commit and conn.in_transaction():
        await conn.commit()  # SQLAlchemy's books, if it keeps any; nothing left to send
    return found[:len(statements)]


async def _in_scope(conn: AsyncConnection, statements: Sequence[tuple[str, Params]],
                    row_factory: Any) -> list[list[Any]]:
    """The rows of each of `statements` (psycopg's SQL), sent in one round trip after
    what the connection's scope still has to send (`_scoping`), and after what was
    held back on it (`hold`)."""
    if _held and (flush := release_held(conn)) is not None:
        await flush()
    scoping, scoping_sent = _scoping(conn)
    found = await _at_once(driver(conn), [
        *((postgres_sql(statement, params), params) for statement, params in scoping),
        *statements], row_factory, scoping_sent)
    return found[len(scoping):]


async def _at_once(raw: Any, statements: Sequence[tuple[str, Params]], row_factory: Any,
                   built: Callable[[], None] | None = None, *, rows: bool = True,
                   ) -> list[list[Any]]:
    """The rows of each of `statements`, sent as one query string in one round trip;
    `built` is called once the string is built, before it is sent. `rows` False:
    none are read (nothing is returned), so nothing can fail once the string has run.

    See the module docstring. The statements run in order; the first that fails
    stops the rest (in a transaction it would abort them anyway).
    """
    state = _prepared.get(raw)
    if state is None:
        state = _prepared[raw] = _Prepared(Transformer(raw))
    cursor = state.cursors.pop(row_factory, None) or psycopg.AsyncClientCursor(
        raw, row_factory=row_factory)
    parts: list[str] = []
    wanted: set[int] = set()  # the indexes in the results of the statements' own results
    preparing: dict[str, str] = {}
    for sql_text, params in statements:
        plan = _plan(sql_text, params)
        name = None if plan is None else (state.names.get(sql_text) or preparing.get(sql_text))
        if plan is not None and name is None and state.prepares < MOST_PREPARED:
            name = preparing[sql_text] = f"crm_{next(_names)}"
            state.prepares += 1
            parts.append(f"PREPARE {name} AS {plan.body}")
        parts.append(_bound(cursor, state, sql_text, params, plan=plan, name=name))
        wanted.add(len(parts) - 1)
    if built is not None:
        built()
    _ROUND_TRIPS.inc()
    try:
        await cursor.execute(";\n".join(parts))
    except psycopg.errors.InvalidTextRepresentation as error:
        failed = guard_failure(error)
        if failed is None:
            raise
        raise failed from error
    except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.FeatureNotSupported) as error:
        if isinstance(error, psycopg.errors.FeatureNotSupported) and "cached plan" not in str(
                error):
            raise
        # A statement this connection prepared is gone, or no longer fits its tables
        # (a migration changed them under a running service): prepare afresh.
        _prepared.pop(raw, None)
        raise Replanned(str(error).splitlines()[0]) from error
    # Only now known to exist: a statement prepared by a string that failed may or
    # may not be, so it is prepared again under a new name when next needed.
    state.names.update(preparing)
    state.cursors[row_factory] = cursor  # a round trip that failed drops its cursor
    if not rows:
        return []
    found: list[list[Any]] = []
    for index in range(len(parts)):
        if index in wanted:
            found.append(await cursor.fetchall() if cursor.description else [])
        cursor.nextset()
    return found


def closed(driver_connection: Any) -> None:
    """The psycopg connection is closing: what it prepared goes with it."""
    _prepared.pop(driver_connection, None)


def _bound(cursor: Any, state: _Prepared, sql_text: str, params: Params, *,
           plan: _Plan | None, name: str | None) -> str:
    """A statement as it goes out: EXECUTE of its prepared name, or its own SQL
    with its values bound."""
    if plan is not None and name is not None:
        return state.execute(name, plan, params)
    if not params and "%" not in sql_text:
        return sql_text  # a command (SAVEPOINT, COMMIT): nothing to bind
    return str(cursor.mogrify(sql_text, params))  # turns %% into % as well


class Replanned(Exception):
    """A statement the connection had prepared could not run as prepared; it will
    be prepared afresh, and the transaction may simply run again."""


@dataclass
class _Prepared:
    """What one connection has prepared: names by SQL, and how many PREPAREs it has
    sent in all (those of strings that failed may linger on the server); and its
    quoting, with the adapters it has looked up kept for the next statements."""

    quoting: psycopg_abc.Transformer
    names: dict[str, str] = field(default_factory=dict)
    prepares: int = 0
    # A cursor per row factory, free for the next round trip: a new one would look
    # up the loaders of every result's columns afresh.
    cursors: dict[Any, psycopg.AsyncClientCursor[Any]] = field(default_factory=dict)

    def execute(self, name: str, plan: _Plan, params: Params) -> str:
        """`EXECUTE name(…)` with `params` as literals, in the prepared order."""
        if not plan.order:
            return f"EXECUTE {name}"
        literal = self.quoting.as_literal
        values = b", ".join(b"NULL" if (value := params[key]) is None else literal(value)
                            for key in plan.order)
        return f"EXECUTE {name}({values.decode(self.quoting.encoding)})"


@dataclass(frozen=True)
class _Plan:
    body: str  # the statement with $n parameters, to PREPARE
    order: tuple[str, ...]  # the names of the values of $1, $2, …


_PARAM = re.compile(r"%\((\w+)\)s|%%")
_PREPARABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
_SCALARS = (str, int, float, bool, bytes, datetime, Decimal, type(None))
_plans: dict[str, _Plan | None] = {}
# Per psycopg connection: what it has prepared. Not held weakly: its quoting and
# cursors hold the connection, so it would never go; `closed` lets it go.
_prepared: dict[Any, _Prepared] = {}
_names = itertools.count()
# The most PREPAREs one connection sends; statements past them are sent as they are.
MOST_PREPARED = 256


def _plan(sql_text: str, params: Params) -> _Plan | None:
    """How to prepare and execute a statement; None for one sent as it is (a
    command, one without values, or one with a value no plain literal carries)."""
    if not params or not all(isinstance(value, _SCALARS) for value in params.values()):
        return None
    if sql_text in _plans:
        return _plans[sql_text]
    plan = None
    if sql_text.lstrip().upper().startswith(_PREPARABLE):
        order: dict[str, int] = {}

        def numbered(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "%"
            return f"${order.setdefault(match.group(1), len(order) + 1)}"

        body = _PARAM.sub(numbered, sql_text)
        plan = _Plan(body, tuple(order))
    if len(_plans) < 10_000:  # the hot statements are constants: a few hundred at most
        _plans[sql_text] = plan
    return plan


async def fetch(conn: AsyncConnection, statement: Statement, params: Params) -> list[Any]:
    """Rows of one prebuilt statement, with attribute access by column name.

    PostgreSQL: on the psycopg connection directly (compiled once, prepared by the
    connection, `_at_once`); SQLite: through SQLAlchemy.
    """
    if conn.dialect.name != "postgresql":
        return list(await conn.execute(statement, params))
    return await _fetch_sql(conn, postgres_sql(statement, params), params)


async def fetch_many(conn: AsyncConnection, statements: Sequence[tuple[Statement, Params]]
                     ) -> list[list[Any]]:
    """`fetch` of several prebuilt statements, run in order; on PostgreSQL in one
    round trip (in the connection's scope), each statement with its own snapshot."""
    if conn.dialect.name != "postgresql":
        return [list(await conn.execute(statement, params)) for statement, params in statements]
    return await _in_scope(conn, [(postgres_sql(statement, params), params)
                                  for statement, params in statements], namedtuple_row)


async def rows(conn: AsyncConnection, statement: Statement) -> list[Any]:
    """Rows of a statement built for one call (its values bound in it), with
    attribute access by column name; on PostgreSQL in the connection's scope."""
    if conn.dialect.name != "postgresql":
        return list(await conn.execute(statement))
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    return await _fetch_sql(conn, str(compiled), dict(compiled.params))


async def _fetch_sql(conn: AsyncConnection, sql_text: str, params: Params) -> list[Any]:
    (found,) = await _in_scope(conn, [(sql_text, params)], namedtuple_row)
    return found
