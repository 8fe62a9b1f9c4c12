"""A write transaction on PostgreSQL begins with its first statement, whichever
way that statement is sent, and its BEGIN is never left for the next user of the
connection (services.shared.sql, Database._connect)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from services.shared import sql
from services.shared.db import Database

SETTING = text("SELECT set_config('crm.probe', 'inside', true)")
READ_SETTING = text("SELECT current_setting('crm.probe', true) AS value")
READ_ORG = text("SELECT current_setting('crm.org', true) AS value")


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


async def test_a_kept_connection_carries_no_scope_into_the_next_transaction(
    db: Database,
) -> None:
    async with db.transaction(write=False) as first:
        used = sql.driver(first)
        sql.scope(first, "org-a", every_statement=True)
        assert [row.value for row in await sql.fetch(first, READ_ORG, {})] == ["org-a"]
    async with db.transaction(write=True) as second:
        sql.scope(second, "org-b", every_statement=False)  # named, never sent
    async with db.transaction(write=False) as conn:
        assert sql.driver(conn) is used  # kept, and taken again
        assert [row.value for row in await sql.fetch(conn, READ_ORG, {})] in ([None], [""])


async def test_a_bursts_overflow_is_closed_and_connections_are_kept_within_the_pool_size(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=2)  # and two in overflow
    pool = db.engine.pool
    try:
        async def hold() -> Any:
            async with db.transaction(write=True) as conn:
                await sql.fetch(conn, text("SELECT pg_sleep(0.05)"), {})
                return sql.driver(conn)
        burst = set(await asyncio.gather(*(hold() for _ in range(4))))  # two over the pool
        assert len(burst) == 4
        assert db.connections_in_use() == 0
        # The overflow went back to the pool and was closed there, as without keeping.
        assert pool.overflow() <= 0  # type: ignore[attr-defined]
        assert sum(1 for raw in burst if not raw.closed) == 2
        # Within its size, the pool's connections are kept, and taken again.
        first, again = await hold(), await hold()
        assert first is again and first in burst
        assert pool.checkedout() == 1 and db.connections_in_use() == 0  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_retired_connection_is_not_kept(db: Database) -> None:
    async with db.transaction(write=True) as conn:
        retired = sql.driver(conn)
        db.retire(conn)  # (a group's, whose members may still hold it)
    assert retired.closed
    async with db.transaction(write=False) as conn:
        assert sql.driver(conn) is not retired


async def test_a_transaction_open_when_the_database_is_disposed_of_closes_its_connection(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=1)
    async with db.transaction(write=False) as conn:
        await sql.fetch(conn, text("SELECT 1 AS one"), {})
        raw = sql.driver(conn)
        await db.dispose()
    assert raw.closed  # not left open, and never to be freed, in the pool disposed of


async def test_once_the_server_drops_a_connection_the_kept_ones_are_let_go(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=3)
    try:
        async def hold() -> int:
            async with db.transaction(write=False) as conn:
                rows = await sql.fetch(conn, text(
                    "SELECT pg_backend_pid() AS pid, pg_sleep(0.05) AS slept"), {})
                return int(rows[0].pid)
        pids = await asyncio.gather(*(hold() for _ in range(3)))
        assert len(set(pids)) == 3  # three connections, all kept
        async with await psycopg.AsyncConnection.connect(
                db.libpq_conninfo(), autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                                [list(pids)])
        # The next transaction finds one of the dropped connections; the one after
        # finds none of them: they were let go with it.
        with pytest.raises(psycopg.OperationalError):
            await hold()
        assert await hold() not in pids
    finally:
        await db.dispose()


async def test_a_connection_the_pool_closes_is_not_kept_alive_by_what_it_prepared(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=1)  # and one overflow, closed as it comes back
    seen: list[weakref.ref[Any]] = []
    try:
        async def use() -> None:
            async with db.transaction(write=False) as conn:
                await sql.fetch(conn, text("SELECT pg_sleep(0.05) AS slept"), {})
                seen.append(weakref.ref(sql.driver(conn)))
        await asyncio.gather(use(), use())
    finally:
        await db.dispose()
    gc.collect()
    assert len(seen) == 2 and all(ref() is None for ref in seen)


async def test_a_caller_waiting_for_the_pool_gets_the_next_connection_given_back(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=1)  # two connections at most, one kept

    async def hold(got: asyncio.Event, done: asyncio.Event) -> None:
        async with db.transaction(write=False) as conn:
            await sql.fetch(conn, text("SELECT 1 AS one"), {})
            got.set()
            await done.wait()

    got = [asyncio.Event() for _ in range(3)]
    done = [asyncio.Event() for _ in range(3)]
    try:
        tasks = [asyncio.ensure_future(hold(got[i], done[i])) for i in range(2)]
        await got[0].wait()
        await got[1].wait()  # both connections are out
        tasks.append(asyncio.ensure_future(hold(got[2], done[2])))
        await asyncio.sleep(0.05)  # the third waits in the pool
        done[0].set()
        # The first connection given back goes to the waiter; kept, it would leave
        # the waiter to the pool's timeout (5 s), while the second is still out.
        await asyncio.wait_for(got[2].wait(), timeout=4)
        for event in done:
            event.set()
        await asyncio.gather(*tasks)
    finally:
        await db.dispose()
