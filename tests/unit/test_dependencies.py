"""The gateway depends on the contracts and on storage-free shared code, never on
what the services store with: importing it loads neither SQLAlchemy nor psycopg.

Each import runs in a fresh interpreter, since this one has loaded everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STORAGE = ("sqlalchemy", "psycopg", "psycopg_binary", "aiosqlite", "alembic")

# What the gateway and the services share: none of it may reach for storage.
STORAGE_FREE = [
    "services.shared.auth",
    "services.shared.clients",
    "services.shared.config",
    "services.shared.context",
    "services.shared.errors",
    "services.shared.logs",
    "services.shared.retry",
    "services.shared.status",
]


def storage_loaded_by(module: str) -> list[str]:
    """The storage packages a fresh interpreter has loaded after importing `module`."""
    probe = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(STORAGE)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_gateway_loads_neither_sqlalchemy_nor_psycopg() -> None:
    assert storage_loaded_by("gateway.app") == []


@pytest.mark.parametrize("module", STORAGE_FREE)
def test_the_code_the_gateway_shares_with_the_services_needs_no_storage(module: str) -> None:
    assert storage_loaded_by(module) == []


def test_the_probe_sees_storage_where_it_is_loaded() -> None:
    # The probe itself can fail: the services' storage module loads both.
    assert {"sqlalchemy", "psycopg"} <= set(storage_loaded_by("services.shared.db"))
