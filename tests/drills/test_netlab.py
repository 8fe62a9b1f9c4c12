"""The network lab itself: a partition stops packets and healing lets them through,
and nothing of a lab survives it, however a test ends, nor a run that died."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netlab
from tests.support.netlab import Lab
from tests.support.relay import RelayProcess

LISTENER = ("import socket, sys\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', 7000)); s.listen(); print('up', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept()\n"
            "    try:\n"
            "        while data := c.recv(64):\n"
            "            c.sendall(data.upper())\n"
            "    except OSError:\n"
            "        pass\n"
            "    c.close()\n")


def echo_on(host: netlab.Host) -> subprocess.Popen[str]:
    server = subprocess.Popen([*host.prefix, sys.executable, "-c", LISTENER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "up"
    return server


async def ask(ip: str, port: int = 7000, within: float = 1.0) -> str:
    """The echo's answer, or "no answer" within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(b"ping")
            answer = await reader.read(64)
            writer.close()
            return answer.decode()
    except (TimeoutError, OSError):
        return "no answer"


def routes() -> str:
    return subprocess.run(["ip", "-4", "route", "show", "table", "all"], check=True,
                          capture_output=True, text=True).stdout


async def test_a_cut_drops_packets_both_ways_and_healing_lets_them_through(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    server = echo_on(b)
    try:
        assert await ask(b.ip) == "PING"
        lab.cut(lab.root, b)
        assert await ask(b.ip) == "no answer"
        lab.heal(lab.root, b)
        assert await ask(b.ip) == "PING"
        lab.cut(lab.root, b, port=7000)  # only that port: the host still answers on others
        assert await ask(b.ip) == "no answer"
        lab.heal()
        assert await ask(b.ip) == "PING"
        assert lab.rules == {"b": []} and a.ip != b.ip
    finally:
        server.kill()
        server.wait(10)


async def test_the_relay_keeps_bytes_in_order_and_a_flap_resets_its_connections(
    lab: Lab,
) -> None:
    b = lab.host("b")
    server = echo_on(b)
    relay = RelayProcess.spawn(0.05, [f"{b.ip}:7000"])
    try:
        host, _, port = relay.listening[f"{b.ip}:7000"].rpartition(":")
        assert await ask(host, int(port)) == "PING"
        reader, writer = await asyncio.open_connection(host, int(port))
        for word in (b"one", b"two", b"three"):
            writer.write(word)
            assert await asyncio.wait_for(reader.readexactly(len(word)), 10) == word.upper()
        relay.cut()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(64), 10)
        writer.close()
        assert await ask(host, int(port)) == "PING"  # new connections are relayed again
    finally:
        relay.stop()
        server.kill()
        server.wait(10)


def test_destroy_leaves_nothing_behind_even_with_processes_and_rules_in_place() -> None:
    if reason := netlab.unavailable():
        pytest.skip(reason)
    lab = Lab.create()
    host = lab.host("busy")
    sleeper = subprocess.Popen([*host.prefix, "sleep", "300"])
    lab.cut(host, lab.root)
    namespaces = [host.netns, lab.switch]
    lab.destroy()
    assert sleeper.wait(10) != 0, "what ran on a host was killed"
    assert not any((netlab.NETNS_DIR / str(name)).exists() for name in namespaces)
    assert str(lab.network) not in routes()
    assert subprocess.run(["ip", "link", "show", lab.root_link],
                          capture_output=True, check=False).returncode != 0


def test_labs_of_runs_that_died_are_swept() -> None:
    if reason := netlab.unavailable():
        pytest.skip(reason)
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    left = f"{netlab.PREFIX}-{dead}-abcdef-db"
    mine = f"{netlab.PREFIX}-{os.getpid()}-abcdef-db"
    for name in (left, mine):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        swept = netlab.sweep_dead_labs()
        assert left in swept and mine not in swept
        assert not (netlab.NETNS_DIR / left).exists()
        assert (netlab.NETNS_DIR / mine).exists(), "a live run's lab is left alone"
    finally:
        for name in (left, mine):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
