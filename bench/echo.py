"""Echo target for the benchmark (run as its own process).

``python -m bench.echo --port P --stats-port S``: echoes every byte back, closes on EOF.
A connection to the stats port gets the number of open echo connections as text.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from dataclasses import dataclass
from typing import cast

from bench.loops import run


@dataclass
class Counter:
    open: int = 0
    total: int = 0


COUNTER = Counter()


class Echo(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        COUNTER.open += 1
        COUNTER.total += 1

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        COUNTER.open -= 1


class Stats(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.write(f"{COUNTER.open} {COUNTER.total}\n".encode())
        transport.close()


async def serve(port: int, stats_port: int) -> None:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    stats = await loop.create_server(Stats, "127.0.0.1", stats_port)
    async with echo, stats:
        await asyncio.Event().wait()  # until the benchmark stops us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats-port", type=int, required=True)
    args = ap.parse_args()
    run(serve(args.port, args.stats_port))


if __name__ == "__main__":
    main()
