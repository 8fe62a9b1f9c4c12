"""The whole system for the end-to-end tests of the gateway's contract: three services
on SQLite and the gateway in front of them, as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import ServiceProcess, environment


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("system")
    # Schemathesis tries credentials of its own: the failures must not lock it out.
    env = environment("", root, CRM_LOG_LEVEL="WARNING", CRM_AUTH_FAILURES_MAX="1000000")
    started: list[ServiceProcess] = []
    targets: dict[str, str] = {}
    try:
        for name in ("leads", "bookings", "messaging"):
            service_env = {**env, **targets,
                           "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{root / name}.db"}
            started.append(ServiceProcess(name, service_env).start())
            targets[f"CRM_{name.upper()}_TARGET"] = started[-1].target
        gateway = ServiceProcess("gateway", {**env, **targets}, module="gateway").start()
        started.append(gateway)
        yield f"http://127.0.0.1:{gateway.port}"
    finally:
        for process in started:
            process.kill()
