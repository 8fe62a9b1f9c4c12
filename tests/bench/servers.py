"""The processes under test: the echo baseline, the three services and the gateway,
and on PostgreSQL the lean reference (tests.bench.lean) if a call wants it.

Each runs as a user runs it (`python -m services.leads --port N`, `python -m
gateway --port N`), but at CRM_LOG_LEVEL=WARNING so that logging does not
dominate what is measured. At that level the "serving on" line that
tests/support/servers.py waits for is not written, so the port is picked here
(bound to port 0 and released, all up front so that every process knows where
the others are) and readiness is the health service's SERVING (the gateway:
`GET /healthz`).

A run's PostgreSQL databases are created fresh and dropped at its end; the lean
reference gets one of its own, migrated by `python -m services.leads migrate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from services.shared.healthcheck import serving
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("leads", "bookings", "messaging")
# Principals whose tokens a run makes: the bench's own client and each process.
PRINCIPALS = ("bench", *SERVICES, "gateway")
ADMIN_URL = os.environ.get(
    "CRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0


def make_tokens() -> dict[str, str]:
    """{principal: token} made for this run."""
    return {principal: secrets.token_urlsafe(24) for principal in PRINCIPALS}


def tokens_env(tokens: Mapping[str, str]) -> str:
    return ",".join(f"{principal}:{token}" for principal, token in tokens.items())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Server:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self, patience: float = 15.0) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), patience)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _spawn(module: str, port: int, env: Mapping[str, str], log: Path
                 ) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--port", str(port),
            cwd=ROOT, env={**env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )


async def _answers(name: str, port: int) -> bool:
    if name == "gateway":
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
    return await asyncio.to_thread(serving, f"127.0.0.1:{port}", "", 2.0)


async def start_server(name: str, module: str, env: Mapping[str, str], workdir: Path,
                       port: int) -> Server:
    """Start one server on `port` and wait until it serves."""
    log = workdir / f"{name}.log"
    process = await _spawn(module, port, env, log)
    metrics = env.get("CRM_METRICS_PORT")
    server = Server(name, process, port, log, int(metrics) if metrics else None)
    deadline = time.monotonic() + START_TIMEOUT
    while process.returncode is None and time.monotonic() < deadline:
        if await _answers(name, port):
            return server
        await asyncio.sleep(0.1)
    if process.returncode is None:
        await server.stop()
        raise TimeoutError(f"{name} did not serve in {START_TIMEOUT} s:\n{server.log_tail()}")
    raise RuntimeError(f"{name} exited ({process.returncode}):\n{server.log_tail()}")


async def start_announced(name: str, module: str, args: list[str], workdir: Path) -> Server:
    """A server that picks its own port and says which (`{"port": N}` on stdout)."""
    log = workdir / f"{name}.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--port", "0", *args, cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=sink,
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if not line:
        await process.wait()
        raise RuntimeError(f"{name} exited ({process.returncode}):\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    return Server(name, process, int(json.loads(line)["port"]), log)


async def start_echo(workdir: Path) -> Server:
    return await start_announced("echo", "tests.bench.echo", [], workdir)


async def start_lean(database_url: str, env: Mapping[str, str], workdir: Path) -> Server:
    """Migrate a leads database with the service itself, then serve the lean reference
    on it (`database_url`: SQLAlchemy's, as the services take it)."""
    log = workdir / "lean.log"
    with log.open("ab") as sink:
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.leads", "migrate", cwd=ROOT, env={**env},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )
    if await asyncio.wait_for(migrate.wait(), START_TIMEOUT) != 0:
        raise RuntimeError(f"migrating the lean database failed:\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    libpq = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return await start_announced("lean", "tests.bench.lean", ["--database-url", libpq],
                                 workdir)


# -- PostgreSQL ------------------------------------------------------------------------


def admin_url(name: str) -> str:
    """The libpq URL of database `name` on the run's server, as its administrator."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def postgres_version() -> str | None:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def create_databases(names: list[str]) -> dict[str, str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    return {name: admin_url(name).replace("postgresql://", "postgresql+psycopg://", 1)
            for name in names}


def drop_databases(names: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_backends(names: list[str]) -> list[int]:
    """Process ids of the PostgreSQL backends connected to these databases."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s)", (names,)
        ).fetchall()
    return [int(row[0]) for row in rows]


# -- a whole stack -------------------------------------------------------------------


@dataclass
class Stack:
    """The three services and the gateway on one backend, with fresh databases."""

    backend: str
    servers: dict[str, Server] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, str]:
        return {name: server.target for name, server in self.servers.items()}

    def pids(self) -> dict[str, int]:
        return {name: server.pid for name, server in self.servers.items()}


def service_env(tokens: Mapping[str, str], database_url: str, workdir: Path,
                ports: Mapping[str, int]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CRM_", "TWILIO_", "LEADS_", "BOOKINGS_", "MESSAGING_"))}
    env.update({
        "CRM_API_TOKENS": tokens_env(tokens),
        "CRM_DATA_DIR": str(workdir),
        "CRM_DATABASE_URL": database_url,
        "CRM_LOG_LEVEL": "WARNING",
        "CRM_SHUTDOWN_DRAIN_SECONDS": "0",
        "CRM_SHUTDOWN_GRACE_SECONDS": "2",
        "CRM_LEADS_TARGET": f"127.0.0.1:{ports['leads']}",
        "CRM_BOOKINGS_TARGET": f"127.0.0.1:{ports['bookings']}",
        "CRM_MESSAGING_TARGET": f"127.0.0.1:{ports['messaging']}",
        "CRM_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
        # The feeds open a thousand streams as one principal, beyond the default caps.
        "CRM_SSE_MAX_STREAMS_PER_PRINCIPAL": "20000", "CRM_SSE_MAX_STREAMS": "20000",
        # Heartbeats flow within the idle rows' window (browsers' and Subscribe streams').
        "CRM_SSE_HEARTBEAT_SECONDS": "5", "CRM_HEARTBEAT_SECONDS": "5",
        "CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL": "20000",
        "CRM_SUBSCRIBE_MAX_STREAMS": "20000",
    })
    return env


@contextlib.asynccontextmanager
async def stack(backend: str, tokens: Mapping[str, str], workdir: Path, *, lean: bool = False
                ) -> AsyncIterator[Stack]:
    """Start everything on `backend` (fresh databases), stop it and drop them at the end;
    with `lean` on PostgreSQL, the lean reference too (as "lean")."""
    run = Stack(backend)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    urls: dict[str, str] = {}
    if backend == "postgresql":
        suffix = secrets.token_hex(3)
        names = {service: f"crmbench_{suffix}_{service}"
                 for service in (*SERVICES, *(["lean"] if lean else []))}
        created = await asyncio.to_thread(create_databases, list(names.values()))
        run.databases = list(names.values())
        urls = {service: created[name] for service, name in names.items()}
    else:
        urls = {service: f"sqlite+aiosqlite:///{workdir / f'{service}.db'}" for service in SERVICES}
    # Ports are chosen up front so that every process knows where the others are.
    ports = {name: free_port() for name in (*SERVICES, "gateway")}
    try:
        # Leads first: it migrates alone, then the others start together.
        def env_of(name: str, url: str) -> dict[str, str]:
            return {**service_env(tokens, url, workdir, ports),
                    "CRM_METRICS_PORT": str(free_port())}

        run.servers["leads"] = await start_server(
            "leads", "services.leads", env_of("leads", urls["leads"]), workdir, ports["leads"])
        started = await asyncio.gather(
            *(start_server(name, f"services.{name}", env_of(name, urls[name]), workdir,
                           ports[name])
              for name in ("bookings", "messaging")),
            start_server("gateway", "gateway", env_of("gateway", urls["leads"]), workdir,
                         ports["gateway"]),
            *([start_lean(urls["lean"], service_env(tokens, urls["lean"], workdir, ports),
                          workdir)] if "lean" in urls else []),
            return_exceptions=True,
        )
        for server in started:
            if isinstance(server, Server):
                run.servers[server.name] = server
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        yield run
    finally:
        await asyncio.gather(*(server.stop() for server in run.servers.values()))
        if run.databases:
            await asyncio.to_thread(drop_databases, run.databases)


async def gauge(server: Server, name: str) -> float | None:
    """A gauge's value (summed over its labels) from a server's /metrics, if it has one."""
    if server.metrics_port is None:
        return None
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.metrics_port}/metrics",
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and line[len(name)] in " {"]
    return sum(values) if values else None


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def raise_fd_limit() -> int:
    """The soft limit on open files raised to the hard one (10,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
