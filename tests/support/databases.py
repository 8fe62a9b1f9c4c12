"""Databases for tests: a fresh one per test, on SQLite and on PostgreSQL.

PostgreSQL is used when it answers on CRM_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres). With CI=true it must answer:
the suite fails rather than skip it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get(
    "CRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRED = os.environ.get("CI", "").lower() == "true"
PREFIX = f"crmtest_{secrets.token_hex(3)}"


def postgres_answers() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _url_for(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


class PostgresDatabases:
    """Creates throwaway databases and drops them at the end of the session."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        name = f"{PREFIX}_{len(self.created)}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _url_for(name)

    def drop_all(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@contextmanager
def admin() -> Iterator[psycopg.Connection]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        yield conn
