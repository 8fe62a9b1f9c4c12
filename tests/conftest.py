"""Fixtures for the whole suite.

Tests that touch storage take `database_url`, which runs them once on SQLite
and once on PostgreSQL (a fresh database each time). With CI=true PostgreSQL
must answer; elsewhere its runs are skipped, with the reason, when it does not.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.shared.clients import open_channel
from tests.support import databases
from tests.support.servers import TOKENS


@functools.cache
def _postgres_available() -> bool:
    answers = databases.postgres_answers()
    if not answers and databases.REQUIRED:
        pytest.exit("CI=true but PostgreSQL does not answer at " + databases.ADMIN_URL, 3)
    return answers


# The throwaway databases of this session, dropped when it ends.
_postgres = databases.PostgresDatabases()


def _postgres_databases() -> databases.PostgresDatabases:
    return _postgres


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _postgres.drop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not _postgres_available():
        pytest.skip("PostgreSQL does not answer (set CI=true to require it)")
    if request.param == "sqlite" and request.node.get_closest_marker("postgres_only"):
        pytest.skip("needs PostgreSQL: several processes on one database")
    return str(request.param)


@pytest.fixture
def new_database(backend: str, tmp_path: Path) -> Callable[[str], str]:
    """Makes fresh databases of the test's backend, by name."""

    def make(name: str) -> str:
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"
        return _postgres_databases().create()

    return make


@pytest.fixture
def database_url(new_database: Callable[[str], str]) -> str:
    return new_database("main")


@pytest.fixture
def postgres_url() -> str:
    """A fresh PostgreSQL database, for tests that only make sense there."""
    if not _postgres_available():
        pytest.skip("PostgreSQL does not answer (set CI=true to require it)")
    return _postgres_databases().create()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names, so tests never depend on each other's data."""
    return lambda prefix="": f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def artifacts() -> Iterator[Path]:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    yield path


@pytest.fixture
async def channel_for() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    """Opens channels (closed at the end) to a target as a principal of TOKENS."""
    opened: list[grpc.aio.Channel] = []

    def open_as(target: str, who: str = "alice", *, retries: bool = True) -> grpc.aio.Channel:
        options = [] if retries else [("grpc.enable_retries", 0)]
        channel = open_channel(target, token=TOKENS[who], options=options)
        opened.append(channel)
        return channel

    yield open_as
    for channel in opened:
        await channel.close()
