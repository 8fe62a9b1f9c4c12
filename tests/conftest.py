"""Fixtures for the whole suite.

Tests that touch storage take `database_url`, which runs them once on SQLite
and once on PostgreSQL (a fresh database each time). With CI=true PostgreSQL
must answer; elsewhere its runs are skipped, with the reason, when it does not.

No value of a secret may appear in a log line (tests.support.leaks): after
every test, and once more at the end of the session, the logs of the server
processes started so far and every log record of the in-process servers are
searched for the secrets they were configured with; a find fails the test.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.shared.clients import open_channel
from services.shared.logs import JsonFormatter
from tests.support import databases, leaks, postgres_cluster
from tests.support.servers import PROCESSES, TOKENS


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A `postgres_only` test (several processes on one database) has no SQLite run."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sqlite = callspec is not None and callspec.params.get("backend") == "sqlite"
        (drop if sqlite and item.get_closest_marker("postgres_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not _postgres_available():
        pytest.skip("PostgreSQL does not answer (set CI=true to require it)")
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
def private_cluster() -> Iterator[postgres_cluster.PrivateCluster]:
    """A PostgreSQL cluster of the test's own on 127.0.0.1, to stop and start at will."""
    if not postgres_cluster.available():
        if databases.REQUIRED:
            pytest.fail("CI=true but the PostgreSQL 15 binaries (initdb, pg_ctl) are missing")
        pytest.skip("PostgreSQL 15 binaries not found")
    cluster = postgres_cluster.PrivateCluster().create()
    yield cluster
    cluster.destroy()


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


# -- no secret in any log line --------------------------------------------------------


class _LeakWatch(logging.Handler):
    """Every log record of the in-process servers, as it would be written, searched."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter("test"))
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        for where in leaks.found_in(line, leaks.WATCHED):
            self.found.append(f"a {record.name} log record holds the value of {where}")


def _leaks(watch: _LeakWatch) -> list[str]:
    found = watch.found[:]
    watch.found.clear()
    for process in PROCESSES:
        pid = process.process.pid if process.process else "-"
        found += [f"the log of {process.name} (pid {pid}) holds the value of {where}"
                  for where in process.leaks()]
    return found


@pytest.fixture(scope="session", autouse=True)
def _leak_watch() -> Iterator[_LeakWatch]:
    watch = _LeakWatch()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(min(level, logging.INFO))
    yield watch
    found = _leaks(watch)  # what was logged after the last test: shutdowns
    root.removeHandler(watch)
    root.setLevel(level)
    assert not found, "a secret was logged: " + "; ".join(found)


@pytest.fixture(autouse=True)
def _no_secret_logged(_leak_watch: _LeakWatch) -> Iterator[None]:
    yield
    found = _leaks(_leak_watch)
    assert not found, "a secret was logged: " + "; ".join(found)
