"""One measurement each: throughput (iperf3), latency and new flows (bench.client), RSS per
idle open flow. Every call is bounded in time; failures raise BenchError."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.loops import raise_nofile
from bench.paths import REPO, PathUnderTest
from bench.procs import LOOPBACK, BenchError, Procs, free_port, rss_kib, wait_port

Starter = Callable[[dict[str, int]], PathUnderTest]


@dataclass
class EchoServer:
    port: int
    stats_port: int
    proc: subprocess.Popen[Any]

    @classmethod
    def start(cls, procs: Procs, name: str) -> EchoServer:
        port, stats = free_port(), free_port()
        argv = [sys.executable, "-m", "bench.echo", "--port", str(port), "--stats-port", str(stats)]
        p = procs.start(name, argv, cwd=REPO)
        wait_port(port, 10, p)
        wait_port(stats, 10, p)
        return cls(port, stats, p)

    def open_connections(self) -> int:
        with socket.create_connection((LOOPBACK, self.stats_port), 2) as s:
            return int(s.makefile().readline().split()[0])


@dataclass
class IperfServer:
    port: int
    proc: subprocess.Popen[Any]

    @classmethod
    def start(cls, procs: Procs, name: str) -> IperfServer:
        port = free_port()
        p = procs.start(name, ["iperf3", "-s", "-B", LOOPBACK, "-p", str(port)])
        wait_port(port, 10, p)
        return cls(port, p)


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


def _run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} {argv[1]} timed out after {timeout:.0f}s") from None
    lines = [x for x in out.stdout.splitlines() if x.strip().startswith("{")]
    if out.returncode != 0 and not lines:
        raise BenchError(
            f"{' '.join(argv[:3])} failed ({out.returncode}): {_last_line(out.stderr)}"
        )
    try:
        return json.loads(out.stdout if argv[0] == "iperf3" else lines[-1])
    except (ValueError, IndexError):
        raise BenchError(f"{argv[0]}: no JSON result: {_last_line(out.stderr)}") from None


def iperf_gbps(port: int, parallel: int, seconds: float, omit: int) -> float:
    """Receiver-side throughput of ``parallel`` iperf3 streams through ``port``, Gbit/s."""
    argv = ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(seconds), "-O", str(omit)]
    argv += ["-P", str(parallel), "-J", "--connect-timeout", "3000"]
    res = _run_json(argv, seconds + omit + 20)
    if "error" in res:
        raise BenchError(f"iperf3: {res['error']}")
    return res["end"]["sum_received"]["bits_per_second"] / 1e9


def _client(args: list[str], timeout: float) -> dict[str, Any]:
    return _run_json([sys.executable, "-m", "bench.client", *args], timeout)


def latency_us(port: int, count: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 of 1-byte round trips over one long-lived connection, in µs."""
    args = ["latency", "--port", str(port), "--count", str(count), "--seconds", str(seconds)]
    res = _client(args, seconds + 30)
    return res["p50_us"], res["p99_us"]


def new_flows_per_s(port: int, parallel: int, count: int, seconds: float) -> float:
    """Completed connect + 1-byte echo + close per second."""
    args = ["rate", "--port", str(port), "--count", str(count), "--seconds", str(seconds)]
    res = _client([*args, "--parallel", str(parallel)], seconds + 30)
    if res["errors"] > res["ok"] // 100:
        raise BenchError(f"{res['errors']} of {res['ok'] + res['errors']} flows failed")
    return res["per_second"]


# -- RSS per idle open flow -------------------------------------------------------------------

OPEN_TIMEOUT = 120.0
SETTLE = 1.0


@dataclass
class IdleResult:
    flows: int  # flows that reached the target (RSS growth is divided by this)
    opened: int  # client connections accepted by the entry
    per_flow_kib: dict[str, float]  # relay process name -> KiB per flow
    open_seconds: float

    @property
    def worst(self) -> float:
        return max(self.per_flow_kib.values())


def _wait_open(echo: EchoServer, want: int, stall: float = 10.0, limit: float = 120.0) -> int:
    """Until ``want`` connections reach the target, or none arrive for ``stall`` seconds."""
    started = last_change = time.monotonic()
    n = echo.open_connections()
    while n < want and time.monotonic() - last_change < stall:
        if time.monotonic() - started > limit:
            break
        time.sleep(0.2)
        m = echo.open_connections()
        if m != n:
            n, last_change = m, time.monotonic()
    return n


@contextlib.contextmanager
def held_flows(entries: list[int], count: int, timeout: float = 10.0) -> Iterator[int]:
    """``count`` flows spread over ``entries`` in turn, each open end to end (one byte
    echoed back) and held while the block runs; closed after it. Bounded: a flow
    that does not echo within ``timeout`` fails the measurement."""
    raise_nofile()
    held: list[socket.socket] = []
    try:
        for i in range(count):
            conn = socket.create_connection((LOOPBACK, entries[i % len(entries)]), timeout)
            held.append(conn)
            conn.settimeout(timeout)
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                raise BenchError(f"flow {i} over port {entries[i % len(entries)]} did not echo")
        yield len(held)
    finally:
        for conn in held:
            conn.close()


def idle_rss(procs: Procs, start_path: Starter, flows: int, tag: str) -> IdleResult:
    """Open ``flows`` idle connections through a fresh path to a fresh echo target; RSS growth
    of each relay process divided by the flows that reached the target."""
    echo = EchoServer.start(procs, f"idle-echo-{tag}")
    path: PathUnderTest | None = None
    client: subprocess.Popen[Any] | None = None
    try:
        path = start_path({"idle": echo.port})
        time.sleep(SETTLE)
        before = {name: rss_kib(pid) for name, pid in path.pids.items()}
        argv = [sys.executable, "-m", "bench.client", "hold", "--port", str(path.entries["idle"])]
        argv += ["--count", str(flows), "--parallel", "64", "--seconds", str(OPEN_TIMEOUT)]
        client = procs.start(
            f"idle-client-{tag}", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert client.stdout is not None
        line = client.stdout.readline()  # the client bounds its opening phase itself
        if not line:
            raise BenchError("idle client exited without a report")
        report = json.loads(line)
        reached = _wait_open(echo, report["opened"])
        if reached < flows * 0.95:
            raise BenchError(
                f"only {reached} of {flows} idle flows reached the target "
                f"({report['opened']} opened, {report['errors']} failed)"
            )
        time.sleep(SETTLE)
        after = {name: rss_kib(pid) for name, pid in path.pids.items()}
        per_flow = {name: (after[name] - before[name]) / reached for name in before}
        return IdleResult(reached, report["opened"], per_flow, report["seconds"])
    finally:
        if client is not None:
            procs.stop(client)
        if path is not None:
            path.stop(procs)
        procs.stop(echo.proc)
