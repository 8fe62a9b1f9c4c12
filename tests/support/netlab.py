"""Hosts on a real network inside this machine, and ways to break it.

Each host is a network namespace with one veth into a bridge that lives in a
namespace of its own (the switch); the test process itself is the host
`root`, through one veth in the root namespace. Links break with `iptables`
inside the hosts' namespaces: DROP for a partition (packets vanish, as on a
real network: no reset, the other side just stops answering) and
`-m statistic --mode random` for loss. This kernel has no netem, so delay
comes from `tests.support.relay`, a process on the path.

    lab = Lab.create()
    db, a = lab.host("db"), lab.host("leads-a")
    lab.cut(a, db)                       # a partition, both ways
    lab.heal(a, db)
    lab.lose(gateway, leads, 0.02)       # 2 % of packets, both ways
    lab.destroy()                        # processes, namespaces, veths, route

Names carry the test process's pid and a random tag (`crmlab-<pid>-<tag>-…`),
so parallel runs never collide, and `create` sweeps the labs of runs that died
without cleaning up. Addresses come from 198.18.0.0/15, the range set aside
for network tests (RFC 2544): a /24 no route of this machine covers. A
blackhole route for that /24 stays in place until the very end of `destroy`,
so no packet for a lab host can ever leave through the machine's default
route, even while the lab is being taken apart.

`unavailable()` says why a machine cannot have a lab (not root, no iproute2 or
iptables, the kernel refuses namespaces), or None.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "crmlab"
RANGE = ipaddress.ip_network("198.18.0.0/15")
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT = 20.0


class LabError(RuntimeError):
    """A command that builds or breaks the lab failed."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> str | None:
    """Why this machine cannot build a lab, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, iptables)"
    probe = f"{PREFIX}-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"the kernel refuses network namespaces: {made.stderr.strip()}"
        rules = _run("ip", "netns", "exec", probe, "iptables", "-w", "-A", "OUTPUT", "-m",
                     "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP",
                     check=False)
        if rules.returncode != 0:
            return f"iptables does not work inside a namespace: {rules.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One machine of the lab: a namespace (None for the test process) and an address."""

    name: str
    ip: str
    netns: str | None

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return [] if self.netns is None else ["ip", "netns", "exec", self.netns]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(*self.prefix, *command, check=check)


@dataclass
class Lab:
    tag: str
    network: ipaddress.IPv4Network
    root: Host
    hosts: dict[str, Host] = field(default_factory=dict)
    # Rules in force, by host: each is an iptables rule spec (without -A/-D).
    rules: dict[str, list[list[str]]] = field(default_factory=dict)
    _next: int = 2

    @property
    def switch(self) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.tag}-switch"

    @property
    def root_link(self) -> str:
        return f"cl{self.tag}"  # at most 15 characters: the root namespace sees it

    @classmethod
    def create(cls) -> Lab:
        sweep_dead_labs()
        tag = secrets.token_hex(3)
        lab = cls(tag, _claim_network(), Host("root", "", None))
        try:
            lab._build()
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build(self) -> None:
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        root_ip = str(self.network[1])
        _run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "port1",
             "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", "port1", "master", "br0", "up")
        _run("ip", "addr", "add", f"{root_ip}/{self.network.prefixlen}", "dev", self.root_link)
        _run("ip", "link", "set", self.root_link, "up")
        self.root = Host("root", root_ip, None)

    def host(self, name: str) -> Host:
        """A new host on the lab's network, up and reachable from every other."""
        if name in self.hosts:
            return self.hosts[name]
        index = self._next
        self._next += 1
        netns = f"{PREFIX}-{os.getpid()}-{self.tag}-{name}"
        ip = str(self.network[index])
        port = f"port{index}"
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port,
             "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", netns, "addr", "add", f"{ip}/{self.network.prefixlen}", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        made = Host(name, ip, netns)
        self.hosts[name] = made
        return made

    # -- breaking the network ------------------------------------------------------

    def cut(self, a: Host, b: Host, *, port: int | None = None) -> None:
        """A partition between a and b (only b's TCP `port`, if given): DROP, both ways."""
        self._add(a, b, port, [])

    def lose(self, a: Host, b: Host, probability: float, *, port: int | None = None) -> None:
        """Drop each packet between a and b, either way, with `probability`."""
        self._add(a, b, port, ["-m", "statistic", "--mode", "random",
                               "--probability", f"{probability:.4f}"])

    def heal(self, a: Host | None = None, b: Host | None = None) -> None:
        """Remove the rules between a and b (every rule of the lab, given fewer than two)."""
        for name, specs in self.rules.items():
            host = self.hosts[name]
            for spec in list(specs):
                if a is None or b is None or _between(host, spec, a, b):
                    host.run("iptables", "-w", "-D", *spec)
                    specs.remove(spec)

    def _add(self, a: Host, b: Host, port: int | None, match: list[str]) -> None:
        # Rules live in a namespace of the lab, never the machine's own.
        inside, other = (a, b) if a.netns is not None else (b, a)
        if inside.netns is None:
            raise LabError("a link has at least one end inside the lab")
        ports_out = ["-p", "tcp", "--dport", str(port)] if port else []
        ports_in = ["-p", "tcp", "--sport", str(port)] if port else []
        if port and inside is b:  # the port is on the namespaced end
            ports_out = ["-p", "tcp", "--sport", str(port)]
            ports_in = ["-p", "tcp", "--dport", str(port)]
        specs = [["OUTPUT", "-d", other.ip, *ports_out, *match, "-j", "DROP"],
                 ["INPUT", "-s", other.ip, *ports_in, *match, "-j", "DROP"]]
        for spec in specs:
            inside.run("iptables", "-w", "-A", *spec)
            self.rules.setdefault(inside.name, []).append(spec)

    # -- taking it apart -----------------------------------------------------------

    def destroy(self) -> None:
        """Kill what runs on the hosts, remove them, the switch, the veth and the route."""
        for host in self.hosts.values():
            _remove_namespace(host.netns or "")
        _remove_namespace(self.switch)  # takes every veth with it, the root's too
        _run("ip", "link", "del", self.root_link, check=False)
        _run("ip", "route", "del", "blackhole", str(self.network), "metric", "4242",
             check=False)
        self.hosts.clear()
        self.rules.clear()


def _between(host: Host, spec: list[str], a: Host, b: Host) -> bool:
    """Whether a rule on `host` is about the link between a and b."""
    return (host is a and b.ip in spec) or (host is b and a.ip in spec)


def _remove_namespace(netns: str) -> None:
    if not netns or not (NETNS_DIR / netns).exists():
        return
    # Whatever a test started on this host and left running (it is ours: the
    # namespace is), by pid.
    pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run("ip", "netns", "del", netns, check=False)


def _claim_network() -> ipaddress.IPv4Network:
    """A /24 of the test range, claimed with its blackhole route.

    The route comes first, so that nothing for the lab's addresses can ever take
    the default route, and adding it is the claim: a run that picked the same /24
    a moment earlier makes it fail, and another /24 is tried.
    """
    for _ in range(10):
        network = _free_network()
        added = _run("ip", "route", "add", "blackhole", str(network), "metric", "4242",
                     check=False)
        if added.returncode == 0:
            return network
    raise LabError("could not claim a /24 of 198.18.0.0/15")


def _free_network() -> ipaddress.IPv4Network:
    """A /24 of the test range that no route of this machine covers."""
    taken = []
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        for word in line.split()[:2]:  # `198.18.4.0/24 dev …`, `blackhole 198.18.4.0/24 …`
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(word, strict=False))
                break
    subnets = list(RANGE.subnets(new_prefix=24))
    for _ in range(100):
        candidate = random.choice(subnets)
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise LabError("no free /24 in 198.18.0.0/15")


def sweep_dead_labs() -> list[str]:
    """Remove the namespaces of lab runs whose process is gone; returns their names."""
    if not NETNS_DIR.is_dir():
        return []
    swept = []
    for entry in NETNS_DIR.iterdir():
        parts = entry.name.split("-")
        if parts[0] != PREFIX or len(parts) < 4 or not parts[1].isdigit():
            continue
        if Path(f"/proc/{parts[1]}").exists():
            continue
        _remove_namespace(entry.name)
        swept.append(entry.name)
    return swept
