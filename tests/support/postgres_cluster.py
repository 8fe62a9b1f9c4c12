"""A PostgreSQL cluster of the test's own, to stop and restart without
disturbing the shared server the rest of the suite uses.

By default it listens on 127.0.0.1; given a host of `tests.support.netlab`
(its address and command prefix) it runs on that host instead. Either way
the test reaches it for administration through its Unix socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

from tests.support.ports import free_port

BINARIES = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BINARIES / "initdb").is_file() and (os.geteuid() != 0 or shutil.which("runuser"))


class PrivateCluster:
    def __init__(self, *, host: str = "127.0.0.1", prefix: Sequence[str] = (),
                 clients: str = "", settings: Sequence[str] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="crm-pg-"))
        self.data = self.root / "data"
        self.host = host
        self.prefix = list(prefix)
        self.settings = list(settings)
        # A network (CIDR) whose hosts may connect, besides loopback.
        self.clients = clients
        self.port = free_port()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres")

    def _run(self, tool: str, *args: str, prefix: Sequence[str] = ()) -> None:
        command = [str(BINARIES / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def _pg_ctl(self, *args: str) -> None:
        options = " ".join([f"-p {self.port} -k {self.root} -c listen_addresses={self.host}",
                            "-c fsync=off", *(f"-c {s}" for s in self.settings)])
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", *args, prefix=self.prefix)

    def create(self) -> PrivateCluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} trust\n")
        self.start()
        with self.admin() as conn:
            conn.execute("CREATE DATABASE crm")
        return self

    def admin(self, database: str = "postgres") -> psycopg.Connection:
        """A connection through the Unix socket, whatever the network does."""
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                               dbname=database, autocommit=True)

    def url(self, database: str = "crm") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
