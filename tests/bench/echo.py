"""The baseline: a bare grpc.aio server with no interceptors and no database.

    python -m tests.bench.echo [--port N]

Prints `{"port": N}` on stdout once it serves, then serves until SIGTERM.

    /bench.Echo/Echo        unary: answers the request's bytes
    /bench.Echo/Subscribe   server streaming: one empty message once the stream
                            is live, then every payload published after that
    /bench.Echo/Publish     unary: hands its payload to every open Subscribe
                            stream, then answers it

Nothing is parsed: the handlers see bytes, so every figure measured against it
is what grpc.aio itself costs, in the same process model as the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import grpc

SERVICE = "bench.Echo"
ECHO = f"/{SERVICE}/Echo"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
PUBLISH = f"/{SERVICE}/Publish"


class Fanout:
    """The open Subscribe streams, each with its own queue."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def subscribe(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield b""  # live: everything published from now on reaches this stream
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    async def publish(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        for queue in self.queues:
            queue.put_nowait(request)
        return request


def handlers(fanout: Fanout) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(fanout.echo),
        "Subscribe": grpc.unary_stream_rpc_method_handler(fanout.subscribe),
        "Publish": grpc.unary_unary_rpc_method_handler(fanout.publish),
    })


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(Fanout()),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"port": bound}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.echo")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
