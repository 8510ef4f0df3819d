"""Workers: one router per core.

With ``workers`` above 1, ``skiff-router run`` starts that many worker processes
and only watches over them. Each worker is a whole router (its own event loop,
links and flows) with its own router id: worker 0 keeps the configured id,
worker k is ``<id>/w<k>``. The workers of one router

- share the listener and link ports (``SO_REUSEPORT``: the kernel spreads new
  connections over them);
- each dial every configured link, so every worker has a link of its own to
  every peer it dials;
- are linked to each other over private Unix sockets (abstract names, accepted
  only from a process with the same parent and user), so a flow that lands on a
  worker without a link towards its target takes one more hop, through a sibling;
- answer as one router at the admin port, which worker 0 holds: its status,
  flows and metrics add up the other workers' (asked over their private sockets).

A worker that dies is started again; the others keep their flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from skiff_router.config import MAX_WORKERS, worker_router_id

log = logging.getLogger("workers")

SEAT_ENV = "SKIFF_WORKER"  # "<index>/<count>/<group>", set by the parent for each worker
# This run of the router (random hex, drawn by the parent): its workers share it, so
# they count as one router where a credential is bound (credentials.py).
INSTANCE_ENV = "SKIFF_INSTANCE"
RESTART_MIN = 0.5  # seconds before a dead worker is started again (doubling to RESTART_MAX)
RESTART_MAX = 30.0
STOP_GRACE = 10.0  # seconds the workers get to stop before they are killed (systemd: 15)
POLL = 0.1
CLAIM_TRIES = 50  # a port claim is looked at this often, CLAIM_PAUSE apart, before giving up
CLAIM_PAUSE = 0.02


@dataclass(frozen=True)
class Seat:
    """Which worker this process is, of how many, in which group (the parent's pid)."""

    index: int
    count: int
    group: int

    @property
    def primary(self) -> bool:
        return self.index == 0

    def router_id(self, base: str) -> str:
        return worker_router_id(base, self.index)

    def link_socket(self, index: int) -> str:
        return f"\0skiff-{self.group}-link-{index}"

    def admin_socket(self, index: int) -> str:
        return f"\0skiff-{self.group}-admin-{index}"


def seat_from_env(environ: Mapping[str, str] | None = None) -> Seat | None:
    raw = (os.environ if environ is None else environ).get(SEAT_ENV)
    if not raw:
        return None
    try:
        index, count, group = (int(x) for x in raw.split("/"))
    except ValueError:
        raise ValueError(f"{SEAT_ENV}={raw!r}: expected <index>/<count>/<group>") from None
    if not 0 <= index < count <= MAX_WORKERS:
        raise ValueError(f"{SEAT_ENV}={raw!r}: index out of range")
    return Seat(index, count, group)


CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


def _cgroup_cpus(path: str) -> int | None:
    """The CPU quota of this cgroup (v2) in whole CPUs, rounded up; None: no quota."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def default_count(cpu_max: str = CPU_MAX) -> int:
    """The CPUs this process may run on (its affinity, and its cgroup's quota:
    a container limited to 2 CPUs on a 64-core host gets 2 workers), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cpu_max)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, min(cpus, MAX_WORKERS))


def listening_socket(name: str) -> socket.socket:
    """A listening Unix socket with an abstract name (made here: uvloop does not
    take abstract names as paths)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name.encode())
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def connected_socket(name: str) -> socket.socket:
    """A Unix socket connected to an abstract name (a local connect does not block)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(name.encode())
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def wait_for_worker0(seat: Seat, timeout: float) -> bool:
    """Wait (bounded) until worker 0 is up: its worker link socket, bound once its
    admin port, listeners and links are, listens. Looked up in /proc/net/unix, not
    connected to (that would be a link that never says HELLO). False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = "@" + seat.link_socket(0)[1:]
    while loop.time() < deadline:
        if wanted in listening_unix_names():
            return True
        await asyncio.sleep(0.05)
    log.warning("worker 0 did not come up within %.0fs: starting anyway", timeout)
    return False


SO_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket


def listening_unix_names(table: str = "/proc/net/unix") -> set[str]:
    """Names of the listening Unix sockets of this network namespace (abstract
    ones with a leading "@")."""
    names = set()
    try:
        with open(table) as f:
            next(f, None)  # the header
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and int(fields[3], 16) & SO_ACCEPTCON:
                    names.add(fields[7])
    except OSError:
        pass
    return names


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def is_sibling(sock: socket.socket | None, group: int) -> bool:
    """The process at the other end of a Unix socket is a worker of this group: the
    same user, and the group's parent is its parent."""
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    pid, uid, _gid = struct.unpack("3i", raw)
    return uid == os.getuid() and pid != os.getpid() and _parent_of(pid) == group


# -- ports: shared by the workers of one router, never by two routers --------------------


class PortClaims:
    """SO_REUSEPORT lets any process of the same user bind a port already bound
    with it, so two routers with workers on one host would silently share a port
    (and each other's connections). A port is therefore claimed for a worker
    group: the first worker to bind it holds an abstract Unix socket named after
    the port; a worker that finds the claim held by a process outside its group
    is refused as if the port were taken. A claim whose holder ended is taken
    again by a worker still bound to the port (``reclaim``, on the bind retry)."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.held: dict[int, socket.socket] = {}
        self.unclaimed: set[int] = set()  # bound here, the claim held by a sibling
        self.refs: dict[int, int] = {}

    @staticmethod
    def name(port: int) -> str:
        return f"\0skiff-port-{port}"

    async def acquire(self, port: int) -> None:
        """Before binding ``port``: raises OSError(EADDRINUSE) when another router holds it."""
        if port not in self.refs:
            await self._claim(port)
        self.refs[port] = self.refs.get(port, 0) + 1

    async def _claim(self, port: int) -> None:
        for _attempt in range(CLAIM_TRIES):
            if self._take(port):
                return
            try:
                probe = connected_socket(self.name(port))
            except OSError:
                # Bound by a sibling that has not called listen() yet (the workers
                # bind together on a reload), or just released: look again.
                await asyncio.sleep(CLAIM_PAUSE)
                continue
            sibling = is_sibling(probe, self.group)
            probe.close()
            if not sibling:
                raise self._taken(port)
            self.unclaimed.add(port)
            return
        raise self._taken(port)

    def release(self, port: int) -> None:
        n = self.refs.get(port, 0) - 1
        if n > 0:
            self.refs[port] = n
            return
        self.refs.pop(port, None)
        self.unclaimed.discard(port)
        sock = self.held.pop(port, None)
        if sock is not None:
            _drop_reader(sock)
            sock.close()

    def reclaim(self) -> None:
        for port in list(self.unclaimed):
            if self._take(port):
                self.unclaimed.discard(port)

    def _take(self, port: int) -> bool:
        try:
            sock = listening_socket(self.name(port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        self.held[port] = sock
        # Answer (by closing) whoever asks who holds it, so the backlog never fills.
        asyncio.get_running_loop().add_reader(sock.fileno(), _close_callers, sock)
        return True

    @staticmethod
    def _taken(port: int) -> OSError:
        return OSError(
            errno.EADDRINUSE, f"Address already in use (port {port}: another router's workers)"
        )


class CredentialMarks:
    """Which routers hold a link made with each client certificate, across the
    workers of this router (credentials.py binds a certificate to its routers). A
    worker marks each holder it has with a listening abstract socket named after the
    certificate, the holder and itself; the others read the marks in
    /proc/net/unix. A worker that dies loses its marks with its sockets."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.marks: dict[tuple[str, str], socket.socket] = {}

    def _prefix(self, fingerprint: str) -> str:
        return f"skiff-{self.seat.group}-cred-{fingerprint[:32]}-"

    def mark(self, fingerprint: str, holder: str, held: bool) -> None:
        key = (fingerprint, holder)
        if not held:
            sock = self.marks.pop(key, None)
            if sock is not None:
                sock.close()
            return
        if key not in self.marks:
            name = f"\0{self._prefix(fingerprint)}{holder}-w{self.seat.index}"
            try:
                self.marks[key] = listening_socket(name)
            except OSError as exc:  # a mark is an aid; the link stays bound here
                log.warning("cannot mark a credential holder for the other workers: %s", exc)

    def elsewhere(self, fingerprint: str) -> frozenset[str]:
        """Holders of links made with this certificate on the other workers."""
        prefix, own = "@" + self._prefix(fingerprint), f"-w{self.seat.index}"
        return frozenset(
            name[len(prefix) :].rsplit("-w", 1)[0]
            for name in listening_unix_names()
            if name.startswith(prefix) and not name.endswith(own)
        )

    def close(self) -> None:
        for sock in self.marks.values():
            sock.close()
        self.marks.clear()


def _close_callers(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            conn, _addr = sock.accept()
            conn.close()


def _drop_reader(sock: socket.socket) -> None:
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        asyncio.get_running_loop().remove_reader(sock.fileno())


# -- the parent: start, restart and stop the workers ---------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: end with the parent. SIGKILL, not a graceful stop:
    a parent that died unannounced was killed, and its workers must be gone at once
    with it (the kernel closes their sockets, so peers see the links end; a service
    manager finds the router's processes all gone and starts it again)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN
    due: float = 0.0  # when to start it (again)


class Pool:
    """The parent process: runs ``count`` workers of ``argv`` until told to stop."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.argv = argv
        self.count = count
        self.group = os.getpid()
        self.instance = secrets.token_hex(8)
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False

    def _start(self, w: _Worker) -> None:
        env = {
            **os.environ,
            SEAT_ENV: f"{w.index}/{self.count}/{self.group}",
            INSTANCE_ENV: self.instance,
        }
        w.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _signal(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signum)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        self._signal(signal.SIGTERM)

    def _on_hup(self, signum: int, _frame: object) -> None:
        self._signal(signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("starting %d workers", self.count)
        for w in self.workers:
            self._start(w)
        stop_deadline: float | None = None
        while True:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    w.proc = None
                    if self.stopping:
                        continue
                    # One that ran a while is restarted quickly; one that keeps
                    # dying at start waits longer each time.
                    w.backoff = RESTART_MIN if now - w.started > 10 else w.backoff
                    w.due = now + w.backoff
                    log.warning(
                        "worker %d ended (exit %s); starting it again in %.1fs",
                        w.index,
                        code,
                        w.backoff,
                    )
                    w.backoff = min(w.backoff * 2, RESTART_MAX)
                elif w.proc is None and not self.stopping and now >= w.due:
                    self._start(w)
            if self.stopping:
                if all(w.proc is None for w in self.workers):
                    return 0
                if stop_deadline is None:
                    stop_deadline = now + STOP_GRACE
                elif now > stop_deadline:
                    self._signal(signal.SIGKILL)
            time.sleep(POLL)


def run_pool(config_path: str, count: int) -> int:
    """``skiff-router run`` with several workers: this process only watches them."""
    argv = [sys.executable, "-m", "skiff_router", "run", "--config", config_path]
    return Pool(argv, count).run()
