"""`python -m gateway`: serve until SIGTERM or SIGINT, then stop gracefully.

On a signal: listening stops, every /v1/events stream ends cleanly, requests in
flight get CRM_SHUTDOWN_GRACE_SECONDS to finish, and the channels close.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gateway.app import start
from gateway.config import Settings
from services.shared import logs
from services.shared.config import DEFAULT_PORTS, ConfigError

log = logging.getLogger("crm.gateway")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway",
                                     description="Run the HTTP gateway.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORTS["gateway"],
                        help="HTTP port (default 8080; 0 picks a free one)")
    parser.add_argument("--host", default=None, help="address to bind (default CRM_BIND_HOST)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    logs.configure("gateway", settings.log_level, settings.log_format)
    asyncio.run(_serve(settings, args.port, args.host))


async def _serve(settings: Settings, port: int, host: str | None) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    if not settings.tokens:
        log.warning("CRM_API_TOKENS is not set: nobody can log in to the web console")
    running = await start(settings, host=host, port=port)
    try:
        await stop_requested.wait()
        log.info("stopping: ending event streams, letting requests in flight finish")
    finally:
        await running.stop()
        log.info("stopped")


main()
