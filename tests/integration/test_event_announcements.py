"""A process announces its commits with a NOTIFY only when another process's feed
listens for it (services.shared.events, "Notifying").

An observer LISTENs on the log's channel under a name of its own, so the services
do not count it as a feed: it hears every NOTIFY they send, and they send one only
for each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared.events import EventFeed
from services.shared.server import RunningService
from tests.integration.conftest import create_lead
from tests.support.servers import environment, start_in_process


def feed_of(server: RunningService) -> EventFeed:
    return server.runtime.storage.feed


async def listening(server: RunningService) -> RunningService:
    """The server, once its feed's LISTEN connection is up."""
    for _ in range(500):
        if feed_of(server)._listener_pid:
            return server
        await asyncio.sleep(0.01)
    raise AssertionError("the feed never listened")


@pytest.fixture
async def first(postgres_url: str, tmp_path: Path) -> AsyncIterator[RunningService]:
    running = await start_in_process(LEADS, environment(postgres_url, tmp_path / "first"))
    yield await listening(running)
    await running.stop(grace=1, drain=0)


@pytest.fixture
async def observer(postgres_url: str, first: RunningService
                   ) -> AsyncIterator[psycopg.AsyncConnection[object]]:
    conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True,
                                                 application_name="announcement observer")
    await conn.execute(f'LISTEN "{feed_of(first).log.channel}"')
    yield conn
    await conn.close()


async def heard(observer: psycopg.AsyncConnection[object], seconds: float) -> int:
    """How many notifications reach the observer within `seconds`."""
    return len([note async for note in observer.notifies(timeout=seconds)])


async def announced(server: RunningService) -> None:
    """Wait until the process has done whatever announcing its commits called for."""
    feed = feed_of(server)
    for _ in range(1000):
        task = feed._announcing
        if task is not None and task.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the commit was never announced")


async def test_a_lone_process_sends_no_notify(
    first: RunningService, observer: psycopg.AsyncConnection[object],
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(first.target, "alice"))
    for n in range(3):
        await create_lead(stub, phone=f"+1415555{n:04d}")
    await announced(first)
    assert await heard(observer, 1.0) == 0


async def test_a_lone_process_that_looked_a_moment_ago_starts_no_task_to_announce(
    first: RunningService, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(first.target, "alice"))
    await create_lead(stub, phone="+14155557000")
    await announced(first)
    feed = feed_of(first)
    looked = feed._announcing
    assert looked is not None and not feed._others_listen
    for n in range(1, 4):
        await create_lead(stub, phone=f"+1415555{7000 + n}")
    # Within the second its look holds, the commits found nobody to tell, and
    # started nothing to tell them.
    assert feed._announcing is looked


async def test_commits_are_announced_once_another_process_listens(
    first: RunningService, observer: psycopg.AsyncConnection[object],
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    second = await start_in_process(LEADS, environment(postgres_url, tmp_path / "second"))
    try:
        await listening(second)
        stub = leads_pb2_grpc.LeadsServiceStub(channel_for(first.target, "alice"))
        # The first process sees the new listener at its next look (at most a
        # second after its last); commit until it has.
        notifications = 0
        for n in range(20):
            await create_lead(stub, phone=f"+1415556{n:04d}")
            await announced(first)
            notifications = await heard(observer, 0.5)
            if notifications:
                break
        assert notifications >= 1
    finally:
        await second.stop(grace=1, drain=0)
