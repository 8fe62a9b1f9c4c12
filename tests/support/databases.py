"""Databases for tests: a fresh one per test, on SQLite and on PostgreSQL.

PostgreSQL is used when it answers on CRM_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres). With CI=true it must answer:
the suite fails rather than skip it.

The services connect to them as SERVICE_ROLE, an ordinary role (no superuser,
no BYPASSRLS) that owns the database, as in production (README: "The database
role"): row-level security binds every test, not only the one that checks it.
Tests that look at every org's rows at once connect with `admin_url`.
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
# The role the services connect as: it owns its databases, and no more.
SERVICE_ROLE = "crm_service"


def postgres_answers() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _url_for(name: str, user: str | None = None) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    url = f"{base}/{name}"
    if user is not None:
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://{user}@{rest.rpartition('@')[2]}"
    return url


def libpq_url(url: str) -> str:
    """A database URL as SQLAlchemy takes it (`postgresql+psycopg://…`) as psycopg does."""
    return "postgresql://" + url.partition("://")[2]


def admin_url(url: str) -> str:
    """The same database as the administrator (a superuser: row-level security
    does not bind it), to look at every org's rows at once."""
    return _url_for(url.rpartition("/")[2])


def ensure_service_role(conn: psycopg.Connection) -> None:
    """SERVICE_ROLE, made once per cluster (other sessions may race to make it)."""
    conn.execute(f"""
        DO $$ BEGIN
            CREATE ROLE {SERVICE_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$""")


class PostgresDatabases:
    """Creates throwaway databases and drops them at the end of the session."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        """A fresh database owned by SERVICE_ROLE; its URL connects as that role."""
        name = f"{PREFIX}_{len(self.created)}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            ensure_service_role(conn)
            conn.execute(f'CREATE DATABASE "{name}" OWNER {SERVICE_ROLE}')
        self.created.append(name)
        return _url_for(name, SERVICE_ROLE)

    def drop_all(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@contextmanager
def admin() -> Iterator[psycopg.Connection]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        yield conn
