"""The bench gathers planner statistics as autovacuum would in service: only of the
tables that hold rows (tests.bench.client.analyze)."""

from __future__ import annotations

import psycopg

from tests.bench.client import analyze
from tests.support.databases import libpq_url


async def test_only_tables_with_rows_are_analyzed_so_an_empty_one_is_not_known_empty(
    postgres_url: str,
) -> None:
    url = libpq_url(postgres_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE filled (id bigint PRIMARY KEY)")
        await conn.execute('CREATE TABLE "keys ""of"" calls" (id bigint PRIMARY KEY)')
        await conn.execute("INSERT INTO filled SELECT generate_series(1, 500)")
        await analyze([url])
        cursor = await conn.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%s)",
            (["filled", 'keys "of" calls'],))
        found: dict[str, float] = dict(await cursor.fetchall())
    # An empty table analyzed would read 0 ("known empty"): the planner would then
    # cache a sequential scan for a lookup by primary key, however it fills.
    assert found == {"filled": 500, 'keys "of" calls': -1}
