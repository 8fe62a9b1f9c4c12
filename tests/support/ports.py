"""Ports for servers the tests and the bench start as processes of their own."""

from __future__ import annotations

import functools
import secrets
import socket
from pathlib import Path

_LISTEN_PORTS_START = 10000


def free_port() -> int:
    """A port nothing listens on, for a server started next. Picked below the
    kernel's ephemeral range: one the kernel handed out (bind to port 0) and that
    was let go may become, before the server binds it, the source port of any
    outbound connection (the services' own to PostgreSQL), and the server would
    then fail to start with EADDRINUSE."""
    low = _ephemeral_ports_start()
    if low - _LISTEN_PORTS_START >= 1000:
        for _ in range(200):
            port = _LISTEN_PORTS_START + secrets.randbelow(low - _LISTEN_PORTS_START)
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as probe:  # no room below it: the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@functools.cache
def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
