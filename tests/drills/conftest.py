"""Failure drills: several server processes on one PostgreSQL database, real
clients, each drill bounded in time and in count. Each prints its figures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import databases, netlab, postgres_cluster
from tests.support.servers import ServiceProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/drills/" in str(item.fspath):
            item.add_marker(pytest.mark.drill)


def report(title: str, **figures: object) -> None:
    """Print a drill's figures (pytest -s shows them; the closing notes quote them)."""
    line = ", ".join(f"{name}={value}" for name, value in figures.items())
    print(f"\n[drill] {title}: {line}", flush=True)
    path = os.environ.get("CRM_DRILL_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(f"{title}: {line}\n")


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    """A network of hosts inside this machine, taken apart whatever the test does."""
    reason = netlab.unavailable()
    if reason is not None:
        if databases.REQUIRED:
            pytest.fail(f"CI=true but the network drills cannot run here: {reason}")
        pytest.skip(f"no network lab on this machine: {reason}")
    made = netlab.Lab.create()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def lab_postgres(lab: netlab.Lab) -> Iterator[postgres_cluster.PrivateCluster]:
    """PostgreSQL on a host of its own in the lab (`lab.hosts["db"]`)."""
    if not postgres_cluster.available():
        if databases.REQUIRED:
            pytest.fail("the PostgreSQL 15 binaries are required for the network drills")
        pytest.skip("PostgreSQL 15 binaries not found")
    db = lab.host("db")
    cluster = postgres_cluster.PrivateCluster(host=db.ip, prefix=db.prefix,
                                              clients=str(lab.network))
    try:
        yield cluster.create()
    finally:
        cluster.destroy()


def service_on(host: netlab.Host, name: str, env: dict[str, str], *,
               module: str = "") -> ServiceProcess:
    """A server process on a host of the lab, listening on its address."""
    return ServiceProcess(name, {**env, "CRM_BIND_HOST": host.ip}, module=module,
                          prefix=host.prefix, address=host.ip)
