"""Services for tests: in this process on port 0, or as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.shared.config import Settings
from services.shared.server import RunningService, ServiceSpec, start
from tests.support import leaks

ROOT = Path(__file__).resolve().parents[2]
# Keyed by the CRM_API_TOKENS spelling of who holds the token: alice and bob are
# agents of the org `default`; carol an agent of `acme`, dave a viewer there;
# vera a viewer and ada an admin of `default`; the rest are the services.
TOKENS = {
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
    "carol@acme": "carol-acme-token-0123456789abcdef",
    "dave@acme/viewer": "dave-acme-viewer-token-0123456789",
    "vera/viewer": "vera-viewer-token-0123456789abcdef",
    "ada/admin": "ada-admin-token-0123456789abcdef",
    "leads": "leads-service-token-0123456789",
    "bookings": "bookings-service-token-0123456789",
    "messaging": "messaging-service-token-0123456789",
    "gateway": "gateway-service-token-0123456789",
}
TOKENS_ENV = ",".join(f"{who}:{token}" for who, token in TOKENS.items())
leaks.watch(leaks.secrets_in({"CRM_API_TOKENS": TOKENS_ENV}))
# Every server process of the session, for tests/conftest.py to read their logs.
PROCESSES: list[ServiceProcess] = []


def environment(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a service under test."""
    env = {
        "CRM_API_TOKENS": TOKENS_ENV,
        "CRM_DATA_DIR": str(data_dir),
        "CRM_DATABASE_URL": database_url,
        "CRM_HEARTBEAT_SECONDS": "0.5",
        "CRM_SHUTDOWN_DRAIN_SECONDS": "0",
        "CRM_SHUTDOWN_GRACE_SECONDS": "2",
        "CRM_DB_POOL_SIZE": "4",
        "CRM_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


async def start_in_process(
    spec: ServiceSpec, env: Mapping[str, str], *, port: int = 0
) -> RunningService:
    return await start(spec, Settings.from_env(spec.name, env), port=port)


@dataclass
class ServiceProcess:
    """`python -m services.<name>` as a user runs it, on a port it picked itself."""

    name: str
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_lines: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    # The module to run; default `services.<name>` (the gateway: "gateway").
    module: str = ""
    # Where it runs: a command prefix (`ip netns exec <host>`) and the address
    # it is reached at there (see tests.support.netlab).
    prefix: list[str] = field(default_factory=list)
    address: str = "127.0.0.1"
    # How many of `log_lines` were already searched for secrets.
    scanned: int = 0

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        # INFO at least: the line announcing the port is an INFO line.
        env = {**os.environ, **self.env, "CRM_LOG_LEVEL": "INFO"}
        PROCESSES.append(self)
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", self.module or f"services.{self.name}",
             "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_log, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "port" in entry and "serving" in entry.get("message", ""):
                self.port = int(entry["port"])
                return self
        self.kill()
        raise TimeoutError(f"{self.name} did not start in {timeout} s: {self.log()[-3000:]}")

    def _read_log(self, lines: queue.Queue[str | None]) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.log_lines.append(line)
            lines.put(line)
        lines.put(None)

    def log(self) -> str:
        return "".join(self.log_lines)

    def leaks(self) -> list[str]:
        """Secrets of this process's environment found in log lines not yet searched."""
        lines = self.log_lines[self.scanned:]
        self.scanned += len(lines)
        return leaks.found_in("".join(lines), leaks.secrets_in(self.env))

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


async def wait_until(predicate, within: float = 10.0, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` (sync or async) until it is true, for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
