"""Route convergence: 10 routers in a ring with chords, a listener on r0 and a connector on
r5 reachable over several paths. SIGKILL a router on the current best path (or SIGSTOP it:
a silent partition, its sockets open and mute) and time how long until a new flow from
r0's listener gets its echo back through another path. The signal goes to the router's
whole process group. The mesh routers run one worker each (see convergence())."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import EchoServer
from bench.paths import STARTUP_TIMEOUT, RouterSite, start_router
from bench.procs import LOOPBACK, BenchError, Procs

ROUTERS = 10
SOURCE, DEST = "r0", "r5"
KEY = "conv"
# Ring r0..r9 (cost 1) plus chords, so that r0 -> r5 has one best path and several others.
CHORDS = ((0, 3, 2), (5, 8, 2), (1, 6, 3), (4, 9, 3), (2, 7, 3))
ATTEMPT_TIMEOUT = 0.25  # per probe flow
POLL_INTERVAL = 0.005
CONVERGE_LIMIT = 15.0  # give up after this long


@dataclass
class Convergence:
    seconds: float
    killed: str
    signal: str
    path_before: list[str]
    path_after: list[str]
    failed_probes: int


def edges() -> list[tuple[int, int, int]]:
    ring = [(i, (i + 1) % ROUTERS, 1) for i in range(ROUTERS)]
    return [(min(a, b), max(a, b), c) for a, b, c in ring + list(CHORDS)]


def probe(port: int, timeout: float = ATTEMPT_TIMEOUT) -> bool:
    """One new flow: connect, 1-byte echo, close."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout) as s:
            s.sendall(b"x")
            return s.recv(1) == b"x"
    except OSError:
        return False


def best_path(sites: dict[str, RouterSite]) -> list[str]:
    """Follow next hops towards DEST from SOURCE, asking each router on the way."""
    path = [SOURCE]
    while path[-1] != DEST and len(path) <= ROUTERS:
        routers = {r["id"]: r for r in sites[path[-1]].status()["routers"]}
        hop = routers.get(DEST, {}).get("next_hop")
        if hop is None:
            raise BenchError(f"{path[-1]} has no route to {DEST}")
        path.append(hop)
    return path


def _wait_converged(sites: dict[str, RouterSite], port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            st = sites[SOURCE].status()
            reachable = sum(1 for r in st["routers"] if r["reachable"])
            if reachable == ROUTERS and st["routing_keys"].get(KEY, {}).get("reachable"):
                path = best_path(sites)
                if len(path) > 2 and probe(port, 2.0):
                    return
        except (OSError, BenchError):
            pass
        time.sleep(0.1)
    raise BenchError("the 10-router mesh did not converge")


def convergence(
    procs: Procs, workdir: Path, tag: str, how: signal.Signals = signal.SIGKILL
) -> Convergence:
    echo = EchoServer.start(procs, f"mesh-echo-{tag}")
    sites = {f"r{i}": RouterSite.create(workdir, f"r{i}", accept=True) for i in range(ROUTERS)}
    for site in sites.values():
        # One process each: every probe flow takes the one best path read from status
        # (with workers each worker's flows may take another), and 10 routers stay
        # 10 processes on a small machine. Detection is per link, the same either way.
        site.workers = 1
    for a, b, cost in edges():
        sites[f"r{a}"].link_to(sites[f"r{b}"], cost)
    port = sites[SOURCE].listen(KEY)
    sites[DEST].connect(KEY, echo.port)
    procs_by_site = {}
    victim_pid = 0
    try:
        for name, site in sites.items():
            procs_by_site[name] = start_router(procs, f"mesh-{tag}-{name}", site.write_config())
        _wait_converged(sites, port)
        # Let link-state flooding settle so the path we read is the one in force everywhere.
        time.sleep(1.0)
        before = best_path(sites)
        victim = before[-2]  # farthest intermediate router from the listener
        t0 = time.monotonic()
        victim_pid = procs_by_site[victim].pid
        os.killpg(victim_pid, how)  # started in a session of its own (Procs)
        failed = 0
        while not probe(port):
            failed += 1
            if time.monotonic() - t0 > CONVERGE_LIMIT:
                raise BenchError(
                    f"no new flow succeeded {CONVERGE_LIMIT:.0f}s after {how.name} of {victim}"
                )
            time.sleep(POLL_INTERVAL)
        elapsed = time.monotonic() - t0
        del sites[victim]
        try:
            after = best_path(sites)
        except (OSError, BenchError, KeyError):
            # Converged for new flows; the status walk is only for the record (a router
            # farther away may still route through a stopped one: its keepalive has not
            # run out there yet).
            after = ["?"]
        return Convergence(elapsed, victim, how.name, before, after, failed)
    finally:
        if how is signal.SIGSTOP and victim_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim_pid, signal.SIGCONT)  # so that it can be stopped
        for p in procs_by_site.values():
            procs.stop(p, grace=2.0)
        procs.stop(echo.proc)
