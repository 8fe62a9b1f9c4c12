"""On PostgreSQL the statements of one round trip go out as one string, their
values bound by psycopg's quoting, each statement with values prepared by the
connection on first use and run as EXECUTE after (services.shared.sql)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from services.shared import sql
from services.shared.db import Database, is_transient

ECHO = text("SELECT %(word)s::text AS word, %(at)s::timestamptz AS at, %(n)s::bigint AS n, "
            "%(blob)s::bytea AS blob, %(none)s::text AS none, %(word)s::text AS again")
PREPARED = text("SELECT name, statement FROM pg_prepared_statements")


def echo_params(word: str) -> dict[str, object]:
    return {"word": word, "at": datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC),
            "n": -(2 ** 62), "blob": b"\x00'\\%", "none": None}


async def prepared(conn: object, fragment: str) -> list[str]:
    """The statements the connection has prepared whose SQL holds `fragment`
    (the statement column holds the whole string the PREPARE came in)."""
    rows = await sql.fetch(conn, PREPARED, {})  # type: ignore[arg-type]
    found = []
    for row in rows:
        own = row.statement.split(f"PREPARE {row.name} AS ", 1)[-1].split(";\n", 1)[0]
        if fragment in own:
            found.append(row.name)
    return sorted(found)


@pytest.mark.parametrize("word", [
    "plain", "it's", "100%", "%(word)s", "%s", "a;b", "back\\slash", "$1", "--", "/*", "ünï ☎",
])
async def test_values_come_back_exactly_as_sent(db: Database, word: str) -> None:
    params = echo_params(word)
    async with db.transaction(write=True) as conn:
        # Twice in one string (prepared, then executed) and once more after.
        first, second = await sql.batch(conn, [(ECHO, params), (ECHO, params)])
        third = await sql.fetch(conn, ECHO, params)
    expected = (word, params["at"], params["n"], params["blob"], None, word)
    assert [tuple(row) for row in (*first, *second)] == [expected, expected]
    assert [tuple(row) for row in third] == [expected]


SCALARS = text("SELECT %(yes)s::boolean AS yes, %(no)s::boolean AS no, "
               "%(ratio)s::float8 AS ratio, %(amount)s::numeric AS amount, "
               "%(low)s::bigint AS low, 1 - %(negative)s::bigint AS difference")


@pytest.mark.parametrize("negative", [-1, -(2 ** 31)])
async def test_every_kind_of_scalar_is_quoted_as_its_own_literal(
        db: Database, negative: int) -> None:
    """Each connection keeps its quoting (and the adapters it looked up) for the
    next strings: the same values, bound again and again, come back exactly."""
    params = {"yes": True, "no": False, "ratio": -0.1, "amount": Decimal("-12345.6789"),
              "low": -(2 ** 63), "negative": negative}
    expected = (True, False, -0.1, Decimal("-12345.6789"), -(2 ** 63), 1 - negative)
    async with db.transaction(write=True) as conn:
        for _ in range(3):  # prepared, executed, executed in another string
            rows = await sql.fetch(conn, SCALARS, params)
            assert [tuple(row) for row in rows] == [expected]


async def test_each_statement_gets_its_own_rows_and_commands_none(db: Database) -> None:
    async with db.transaction(write=True) as conn:
        found = await sql.batch(conn, [
            (text("SELECT %(a)s::int AS a UNION ALL SELECT %(b)s::int"), {"a": 1, "b": 2}),
            (sql.raw("SAVEPOINT s"), {}),
            (text("SELECT 3 AS c"), {}),
            (text("SELECT %(a)s::int AS a WHERE false"), {"a": 1}),
        ], commit=True)
    assert [[tuple(row) for row in rows] for rows in found] == [[(1,), (2,)], [], [(3,)], []]


async def test_a_prepared_statement_outlives_a_rollback(db: Database) -> None:
    """psycopg's own preparing would DEALLOCATE ALL after a ROLLBACK, and the next
    EXECUTE of ours would fail: it is turned off for the pool's connections."""
    marker = text("SELECT %(n)s::int AS n /* outlives a rollback */")
    async with db.transaction(write=True) as conn:
        assert [row.n for row in await sql.fetch(conn, marker, {"n": 1})] == [1]
        names = await prepared(conn, "outlives a rollback")
        for _ in range(6):  # often enough for psycopg to prepare it, were it left to
            await sql.driver(conn).execute("SELECT %s::int", (1,))
        await conn.execute(text("ROLLBACK"))
    async with db.transaction(write=True) as conn:
        assert [row.n for row in await sql.fetch(conn, marker, {"n": 2})] == [2]
        assert await prepared(conn, "outlives a rollback") == names
    assert len(names) == 1


async def test_a_string_that_fails_leaves_its_statements_to_be_prepared_afresh(
    db: Database,
) -> None:
    """Which PREPAREs of a failed string ran is not known (here: none after the
    failing statement): the next use prepares again, under a new name, and works."""
    marker = text("SELECT %(n)s::int AS n /* prepared afresh */")
    failing = text("SELECT 1 / %(zero)s::int")
    async with db.transaction(write=True) as conn:
        with pytest.raises(Exception, match="division by zero"):
            await sql.batch(conn, [(failing, {"zero": 0}), (marker, {"n": 1})])
    async with db.transaction(write=True) as conn:
        assert [row.n for row in await sql.fetch(conn, marker, {"n": 7})] == [7]
        assert len(await prepared(conn, "prepared afresh")) == 1


async def test_a_connection_prepares_at_most_so_many_statements(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sql, "MOST_PREPARED", 3)
    async with db.transaction(write=True) as conn:
        already = len(await prepared(conn, ""))
        for i in range(6):
            numbered = text(f"SELECT %(n)s::int AS n /* statement {i} */")
            assert [row.n for row in await sql.fetch(conn, numbered, {"n": i})] == [i]
        assert len(await prepared(conn, "")) == max(already, 3)


async def test_a_string_that_cannot_be_built_sends_nothing_and_loses_no_scope(
    db: Database,
) -> None:
    """A value psycopg cannot quote fails before anything is sent: the pending BEGIN
    and the org's scope go with the next round trip instead."""
    async with db.transaction(write=True) as conn:
        sql.scope(conn, "acme", every_statement=False)
        with pytest.raises(psycopg.DataError):
            await sql.fetch(conn, ECHO, echo_params("nul \x00 inside"))
        assert sql.driver(conn).info.transaction_status == TransactionStatus.IDLE
        rows = await sql.fetch(conn, text("SELECT current_setting('crm.org', true) AS org"), {})
        assert [row.org for row in rows] == ["acme"]
        assert sql.driver(conn).info.transaction_status == TransactionStatus.INTRANS


async def test_a_statement_without_values_keeps_its_percent_signs_as_written(
    db: Database,
) -> None:
    async with db.transaction(write=False) as conn:
        rows = await sql.fetch(conn, text("SELECT '100%%' AS v, 'a%%%%b' AS w"), {})
    assert [tuple(row) for row in rows] == [("100%", "a%%b")]


async def test_a_prepared_statement_gone_from_the_server_is_prepared_afresh(
    db: Database,
) -> None:
    """Should the server lose a statement the connection prepared (here DEALLOCATE
    ALL; a migration changing a table's columns does the like), the round trip says
    Replanned, a transient failure, and the next prepares it again."""
    marker = text("SELECT %(n)s::int AS n /* gone from the server */")
    async with db.transaction(write=False) as conn:
        assert [row.n for row in await sql.fetch(conn, marker, {"n": 1})] == [1]
        await sql.driver(conn).execute("DEALLOCATE ALL")
        with pytest.raises(sql.Replanned) as replanned:
            await sql.fetch(conn, marker, {"n": 2})
        assert is_transient(replanned.value)
        assert [row.n for row in await sql.fetch(conn, marker, {"n": 3})] == [3]
