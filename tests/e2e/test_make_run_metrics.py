"""`make run` with CRM_METRICS_PORT: every server binds its own metrics port and serves there.

The four servers are started with the very environments `python -m services`
gives them (services.__main__.server_env), on free gRPC/HTTP ports, and each
one's metrics port must answer GET /metrics; before, all four bound the one
port and three stopped with "Address already in use".
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from services import __main__ as run
from tests.support.servers import ServiceProcess, environment


def _free_base(count: int) -> int:
    """A port whose next `count - 1` neighbours are free too (checked, not assumed)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


def test_make_run_gives_every_server_its_own_metrics_port(tmp_path: Path) -> None:
    base = _free_base(len(run.SERVERS))
    env = environment("", tmp_path, CRM_METRICS_PORT=str(base))
    ports = run.metrics_ports(env, run.SERVERS)
    assert sorted(ports.values()) == list(range(base, base + 4))
    started: list[ServiceProcess] = []
    targets: dict[str, str] = {}
    try:
        for module in run.SERVERS:
            name = module.rsplit(".", 1)[-1]
            own = run.server_env({**env, **targets,
                                  "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / name}.db"},
                                 module, ports)
            process = ServiceProcess(name, own, module=module).start()
            started.append(process)
            if name != "gateway":
                targets[f"CRM_{name.upper()}_TARGET"] = process.target
        for module, port in ports.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                assert answer.status == 200, module
                assert b"# TYPE" in answer.read()
        assert all(p.process is not None and p.process.poll() is None for p in started)
    finally:
        for process in started:
            process.kill()
