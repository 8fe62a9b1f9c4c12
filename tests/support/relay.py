"""A TCP relay that holds every byte for a fixed time, each way: the delay of a
long link, where the kernel has no netem.

    python -m tests.support.relay --delay 0.1 127.0.0.1:0=198.18.4.3:50051 …

Each `listen=target` pair listens on `listen` (port 0 picks one) and relays
every connection to `target`. Once listening it prints one JSON line on
stdout, `{"198.18.4.3:50051": "127.0.0.1:41234", …}` (target → where it
listens), then relays until SIGTERM. SIGUSR1 cuts every open connection at
once, both ways, with a reset: a link that flaps.

Bytes keep their order and their timing: what arrives at t leaves at
t + delay, however much follows it, so a stream of many small writes is
delayed, not slowed to one chunk per delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 64 * 1024


@dataclass
class Relay:
    delay: float
    pairs: list[tuple[str, int, str, int]]
    listening: dict[str, str] = field(default_factory=dict)
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    relayed: int = 0
    _servers: list[asyncio.Server] = field(default_factory=list)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        for host, port, target_host, target_port in self.pairs:
            server = await asyncio.start_server(
                lambda r, w, h=target_host, p=target_port: self._accept(r, w, h, p),
                host, port)
            bound = server.sockets[0].getsockname()
            self.listening[f"{target_host}:{target_port}"] = f"{bound[0]}:{bound[1]}"
            self._servers.append(server)

    def cut(self) -> int:
        """Reset every open connection (RST, both ways); returns how many were cut."""
        cut = 0
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # a close with SO_LINGER 0 sends a reset, not a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            cut += 1
        return cut

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self.cut()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                host: str, port: int) -> None:
        task = asyncio.create_task(self._relay(reader, writer, host, port))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter, host: str, port: int) -> None:
        self._writers.add(client_writer)
        try:
            try:
                server_reader, server_writer = await asyncio.open_connection(host, port)
            except OSError:
                client_writer.transport.abort()
                return
            self._writers.add(server_writer)
            self.relayed += 1
            try:
                await asyncio.gather(self._pipe(client_reader, server_writer),
                                     self._pipe(server_reader, client_writer))
            finally:
                self._writers.discard(server_writer)
                server_writer.transport.abort()
        finally:
            self._writers.discard(client_writer)
            client_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk `delay` seconds after it arrived."""
        loop = asyncio.get_running_loop()
        held: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        ended = False

        async def read() -> None:
            nonlocal ended
            try:
                while data := await reader.read(CHUNK):
                    held.append((loop.time() + self.delay, data))
                    arrived.set()
            except OSError:
                pass
            finally:
                ended = True
                arrived.set()

        reading = asyncio.create_task(read())
        try:
            while True:
                while not held:
                    if ended:
                        with contextlib.suppress(OSError, RuntimeError):
                            writer.write_eof()
                        return
                    arrived.clear()
                    await arrived.wait()
                due, data = held.popleft()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except OSError:
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


@dataclass
class RelayProcess:
    """The relay as a process (on a lab host, through `prefix`), and where it listens."""

    process: subprocess.Popen[bytes]
    # target ("host:port") → the address to use instead ("127.0.0.1:port")
    listening: dict[str, str]

    @classmethod
    def spawn(cls, delay: float, targets: Sequence[str], *, prefix: Sequence[str] = (),
              listen: str = "127.0.0.1") -> RelayProcess:
        pairs = [f"{listen}:0={target}" for target in targets]
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.support.relay", "--delay", str(delay), *pairs],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(10)
            raise RuntimeError(f"the relay exited ({process.returncode}) before listening")
        return cls(process, json.loads(line))

    def cut(self) -> None:
        """Reset every connection through the relay (a link that flaps)."""
        self.process.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _address(raw: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    return host, int(port)


async def _main(delay: float, pairs: list[str]) -> None:
    parsed = []
    for pair in pairs:
        listen, _, target = pair.partition("=")
        parsed.append((*_address(listen), *_address(target)))
    relay = Relay(delay, parsed)
    await relay.start()
    print(json.dumps(relay.listening), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, relay.cut)
    await stop.wait()
    await relay.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.relay")
    parser.add_argument("--delay", type=float, required=True, help="seconds, each way")
    parser.add_argument("pairs", nargs="+", metavar="LISTEN=TARGET")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.delay, args.pairs))


if __name__ == "__main__":
    main(sys.argv[1:])
