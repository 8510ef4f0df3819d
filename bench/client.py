"""Load generator (run as its own process); prints one JSON line per result.

- ``latency``: one long-lived connection, 1-byte request/response round trips.
- ``rate``: new flows (connect, 1-byte echo, close), sequential or N in parallel.
- ``hold``: open N connections (one 1-byte echo each), report, keep them idle until stdin
  closes.

Every loop is bounded by a count and a duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass

from bench.loops import raise_nofile, run

HOST = "127.0.0.1"
FLOW_TIMEOUT = 5.0


def emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


# -- latency ----------------------------------------------------------------------------------


@dataclass
class Latency:
    n: int
    p50_us: float
    p99_us: float
    mean_us: float


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def latency(port: int, count: int, seconds: float, warmup: int) -> Latency:
    samples: list[float] = []
    with socket.create_connection((HOST, port), FLOW_TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clock = time.perf_counter
        deadline = clock() + seconds
        for i in range(warmup + count):
            t0 = clock()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("echo closed the connection")
            if i >= warmup:
                samples.append(clock() - t0)
            if t0 > deadline:
                break
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
    samples.sort()
    us = [x * 1e6 for x in samples]
    return Latency(len(us), percentile(us, 0.5), percentile(us, 0.99), sum(us) / len(us))


# -- new flows --------------------------------------------------------------------------------


@dataclass
class Rate:
    ok: int
    errors: int
    seconds: float
    per_second: float


def one_flow_blocking(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), FLOW_TIMEOUT) as s:
            s.sendall(b"x")
            return s.recv(1) == b"x"
    except OSError:
        return False


async def one_flow(loop: asyncio.AbstractEventLoop, port: int) -> bool:
    s = socket.socket()
    s.setblocking(False)
    try:
        async with asyncio.timeout(FLOW_TIMEOUT):
            await loop.sock_connect(s, (HOST, port))
            await loop.sock_sendall(s, b"x")
            return await loop.sock_recv(s, 1) == b"x"
    except (OSError, TimeoutError):
        return False
    finally:
        s.close()


async def parallel_flows(port: int, parallel: int, count: int, seconds: float) -> Rate:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = started + seconds
    todo = count
    ok = errors = 0

    async def worker() -> None:
        nonlocal todo, ok, errors
        while todo > 0 and time.perf_counter() < deadline:
            todo -= 1
            if await one_flow(loop, port):
                ok += 1
            else:
                errors += 1

    await asyncio.gather(*(worker() for _worker in range(parallel)))
    elapsed = time.perf_counter() - started
    return Rate(ok, errors, elapsed, ok / elapsed)


def sequential_flows(port: int, count: int, seconds: float) -> Rate:
    started = time.perf_counter()
    deadline = started + seconds
    ok = errors = 0
    for _request in range(count):
        if one_flow_blocking(port):
            ok += 1
        else:
            errors += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - started
    return Rate(ok, errors, elapsed, ok / elapsed)


# -- idle open flows --------------------------------------------------------------------------


async def hold(port: int, count: int, parallel: int, seconds: float) -> None:
    """Open ``count`` connections (``parallel`` in flight), echo one byte on each, report,
    then keep them idle until stdin reaches EOF (or ``seconds`` pass) and close them all."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    errors = 0
    todo = count
    started = time.perf_counter()

    async def opener() -> None:
        nonlocal todo, errors
        while todo > 0 and time.perf_counter() - started < seconds:
            todo -= 1
            s = socket.socket()
            s.setblocking(False)
            try:
                # One echo makes sure the flow is open end to end (relays may set up their
                # next hop lazily), then the connection stays idle.
                async with asyncio.timeout(FLOW_TIMEOUT):
                    await loop.sock_connect(s, (HOST, port))
                    await loop.sock_sendall(s, b"x")
                    if await loop.sock_recv(s, 1) != b"x":
                        raise OSError("no echo")
                socks.append(s)
            except (OSError, TimeoutError):
                s.close()
                errors += 1

    await asyncio.gather(*(opener() for _opener in range(parallel)))
    emit({"opened": len(socks), "errors": errors, "seconds": time.perf_counter() - started})
    try:
        async with asyncio.timeout(seconds):
            await loop.run_in_executor(None, sys.stdin.read)
    except TimeoutError:
        pass
    for s in socks:
        s.close()


# -- command line -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["latency", "rate", "hold"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    raise_nofile()
    if args.mode == "latency":
        emit(asdict(latency(args.port, args.count, args.seconds, args.warmup)))
    elif args.mode == "rate" and args.parallel <= 1:
        emit(asdict(sequential_flows(args.port, args.count, args.seconds)))
    elif args.mode == "rate":
        emit(asdict(run(parallel_flows(args.port, args.parallel, args.count, args.seconds))))
    else:
        run(hold(args.port, args.count, args.parallel, args.seconds))


if __name__ == "__main__":
    main()
