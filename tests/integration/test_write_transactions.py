"""A write transaction on PostgreSQL begins with its first statement, whichever
way that statement is sent, and its BEGIN is never left for the next user of the
connection (services.shared.sql, Database._connect)."""

from __future__ import annotations

from psycopg.pq import TransactionStatus
from sqlalchemy import text

from services.shared import sql
from services.shared.db import Database

SETTING = text("SELECT set_config('crm.probe', 'inside', true)")
READ_SETTING = text("SELECT current_setting('crm.probe', true) AS value")


async def test_a_first_statement_through_sqlalchemy_is_inside_the_transaction(
    db: Database,
) -> None:
    async with db.transaction(write=True) as conn:
        await conn.execute(SETTING)  # a transaction-local setting: gone if autocommitted
        assert (await conn.execute(READ_SETTING)).scalar() == "inside"
        assert sql.driver(conn).info.transaction_status == TransactionStatus.INTRANS


async def test_a_first_statement_of_ours_carries_the_begin(db: Database) -> None:
    async with db.transaction(write=True) as conn:
        await sql.fetch(conn, SETTING, {})
        assert [row.value for row in await sql.fetch(conn, READ_SETTING, {})] == ["inside"]
        await sql.batch(conn, [], commit=True)
        assert sql.driver(conn).info.transaction_status == TransactionStatus.IDLE


async def test_a_write_that_sent_nothing_leaves_no_begin_for_the_next_read(
    db: Database,
) -> None:
    async with db.transaction(write=True) as first:
        used = sql.driver(first)
    async with db.transaction(write=False) as conn:
        assert sql.driver(conn) is used  # the same connection, again
        await sql.fetch(conn, text("SELECT 1 AS one"), {})
        assert sql.driver(conn).info.transaction_status == TransactionStatus.IDLE
