"""The tests and the bench pick their servers' ports below the kernel's ephemeral range, where no
outbound connection can take one between the pick and the server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.ports import free_port


def test_a_picked_port_is_below_the_ephemeral_range_and_free() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), ports
    assert len(ports) > 1  # picked, not one fixed port
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # nothing else holds it
