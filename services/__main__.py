"""`python -m services` (what `make run` runs): everything on the embedded defaults.

Starts each server as its own process, exactly as it runs alone
(`python -m services.leads`, …), on SQLite files under CRM_DATA_DIR and the
console SMS provider. Without CRM_API_TOKENS it makes tokens for this run (one
for you, one per service) and prints yours. Ctrl-C stops them all gracefully.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["services.leads", "services.bookings", "services.messaging", "gateway"]
PRINCIPALS = ["leads", "bookings", "messaging", "gateway"]


def available(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__main__.py").exists()


def tokens_for_this_run() -> tuple[str, str]:
    """(CRM_API_TOKENS, your token) made fresh for this run."""
    yours = secrets.token_urlsafe(24)
    entries = [f"you:{yours}"] + [f"{p}:{secrets.token_urlsafe(24)}" for p in PRINCIPALS]
    return ",".join(entries), yours


def main() -> None:
    env = dict(os.environ)
    yours = None
    if not env.get("CRM_API_TOKENS"):
        env["CRM_API_TOKENS"], yours = tokens_for_this_run()
    env.setdefault("CRM_DATA_DIR", str(ROOT / "var"))
    servers = [m for m in SERVERS if available(m)]
    processes = [subprocess.Popen([sys.executable, "-m", m], cwd=ROOT, env=env) for m in servers]

    time.sleep(1.5)
    gateway = env.get("CRM_PUBLIC_URL", "http://127.0.0.1:8080")
    lines = ["", "Closed Loop is running: " + ", ".join(servers)]
    if "gateway" in servers:
        lines.append(f"  web console:  {gateway}/")
    lines.append("  gRPC:         leads 127.0.0.1:50051, bookings :50052, messaging :50053")
    if yours:
        lines.append(f"  your token:   {yours}   (principal 'you'; log in with it)")
    lines.append("  stop:         Ctrl-C")
    print("\n".join(lines) + "\n", flush=True)

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        stop()
        for process in processes:
            process.wait(30)
    failed = [m for m, p in zip(servers, processes, strict=True) if p.returncode not in (0, -15)]
    if failed:
        sys.exit(f"stopped with errors: {', '.join(failed)}")


if __name__ == "__main__":
    main()
