"""`python -m services` (what `make run` runs): everything on the embedded defaults.

Starts each server as its own process, exactly as it runs alone
(`python -m services.leads`, …), on SQLite files under CRM_DATA_DIR and the
console SMS provider, logging as text for a person (CRM_LOG_FORMAT=text; a
server run alone logs JSON). Ctrl-C stops them all gracefully.

Without CRM_API_TOKENS it makes tokens (one for you, one per service) the
first time and keeps them in CRM_DATA_DIR/tokens (mode 0600), so a restart
signs nobody out; delete the file for new ones. Your token is printed once,
with the console's URL, when the gateway's /healthz answers.

CRM_METRICS_PORT is where one server serves its metrics; here four servers
share the environment, so each gets its own port counted up from it (leads
on the port itself, bookings on the next, then messaging, then the gateway),
printed with the other addresses. 0 lets each pick a free port of its own.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["services.leads", "services.bookings", "services.messaging", "gateway"]
PRINCIPALS = ["leads", "bookings", "messaging", "gateway"]
TOKENS_FILE = "tokens"
# Where the gateway this starts answers (CRM_PUBLIC_URL may be a proxy in front of it),
# and how long it may take to before we say so.
HEALTHZ = "http://127.0.0.1:8080/healthz"
READY_TIMEOUT = 60.0


def available(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__main__.py").exists()


def new_tokens() -> str:
    """CRM_API_TOKENS for a fresh installation: you, and each service."""
    entries = [f"you:{secrets.token_urlsafe(24)}"]
    entries += [f"{p}:{secrets.token_urlsafe(24)}" for p in PRINCIPALS]
    return ",".join(entries)


def kept_tokens(data_dir: Path) -> str:
    """The tokens kept in the data dir, made and written (0600) the first time."""
    path = data_dir / TOKENS_FILE
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        if kept.startswith("you:"):
            path.chmod(0o600)
            return kept
    data_dir.mkdir(parents=True, exist_ok=True)
    made = new_tokens()
    # Created with its final mode: the tokens are never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(made + "\n")
    return made


def your_token(tokens: str) -> str:
    return next(entry.split(":", 1)[1] for entry in tokens.split(",") if entry.startswith("you:"))


def metrics_ports(env: dict[str, str], servers: list[str]) -> dict[str, int]:
    """Each server's metrics port under `make run`, counted up from CRM_METRICS_PORT."""
    raw = env.get("CRM_METRICS_PORT", "").strip()
    if not raw:
        return {}
    if not raw.isdigit() or int(raw) > 65535:
        sys.exit("CRM_METRICS_PORT: expected a port from 0 to 65535")
    base = int(raw)
    if base and base + len(servers) - 1 > 65535:
        sys.exit(f"CRM_METRICS_PORT: {len(servers)} servers need {len(servers)} ports "
                 "from it, and the last is beyond 65535")
    return {server: base + i if base else 0 for i, server in enumerate(servers)}


def server_env(env: dict[str, str], server: str, ports: dict[str, int]) -> dict[str, str]:
    """The environment one server of `make run` starts with."""
    if server not in ports:
        return env
    return {**env, "CRM_METRICS_PORT": str(ports[server])}


def wait_until_ready(url: str, running: Callable[[], bool], timeout: float = READY_TIMEOUT) -> bool:
    """Whether `url` answered 200 before `timeout`, while the servers kept running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def main() -> None:
    env = dict(os.environ)
    env.setdefault("CRM_DATA_DIR", str(ROOT / "var"))
    env.setdefault("CRM_LOG_FORMAT", "text")
    yours = None
    if not env.get("CRM_API_TOKENS"):
        env["CRM_API_TOKENS"] = kept_tokens(Path(env["CRM_DATA_DIR"]))
        yours = your_token(env["CRM_API_TOKENS"])
    servers = [m for m in SERVERS if available(m)]
    ports = metrics_ports(env, servers)
    processes = [subprocess.Popen([sys.executable, "-m", m], cwd=ROOT,
                                  env=server_env(env, m, ports)) for m in servers]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        announce(env, servers, yours, lambda: all(p.poll() is None for p in processes), ports)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        stop()
        for process in processes:
            process.wait(30)
    failed = [m for m, p in zip(servers, processes, strict=True) if p.returncode not in (0, -15)]
    if failed:
        sys.exit(f"stopped with errors: {', '.join(failed)}")


def announce(env: dict[str, str], servers: list[str], yours: str | None,
             running: Callable[[], bool], ports: dict[str, int] | None = None) -> None:
    """Say where the console is, once it answers."""
    gateway = env.get("CRM_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/")
    lines = ["", "Closed Loop is running: " + ", ".join(servers)]
    if "gateway" in servers:
        if not wait_until_ready(HEALTHZ, running):
            if running():
                print(f"\nThe gateway has not answered {HEALTHZ} yet; see the log above.\n",
                      flush=True)
            return
        lines.append(f"  web console:  {gateway}/")
    lines.append("  gRPC:         leads 127.0.0.1:50051, bookings :50052, messaging :50053")
    if ports:
        lines.append("  metrics:      " + ", ".join(
            f"{m.rsplit('.', 1)[-1]} :{port}" if port else f"{m.rsplit('.', 1)[-1]} (a free port)"
            for m, port in ports.items()))
    if yours:
        lines.append(f"  your token:   {yours}   (principal 'you'; kept in "
                     f"{Path(env['CRM_DATA_DIR']) / TOKENS_FILE})")
    lines.append("  stop:         Ctrl-C")
    print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
