"""Failure drills: several server processes on one PostgreSQL database, real
clients, each drill bounded in time and in count. Each prints its figures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import databases, postgres_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/drills/" in str(item.fspath):
            item.add_marker(pytest.mark.drill)


@pytest.fixture
def private_cluster() -> Iterator[postgres_cluster.PrivateCluster]:
    if not postgres_cluster.available():
        if databases.REQUIRED:
            pytest.fail("the PostgreSQL 15 binaries are required for the restart drill")
        pytest.skip("PostgreSQL 15 binaries not found")
    cluster = postgres_cluster.PrivateCluster().create()
    yield cluster
    cluster.destroy()


def report(title: str, **figures: object) -> None:
    """Print a drill's figures (pytest -s shows them; the closing notes quote them)."""
    line = ", ".join(f"{name}={value}" for name, value in figures.items())
    print(f"\n[drill] {title}: {line}", flush=True)
    path = os.environ.get("CRM_DRILL_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(f"{title}: {line}\n")
