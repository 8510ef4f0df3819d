"""Subprocesses of the benchmark: each in its own process group, all stopped at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A part of the benchmark could not be set up or measured."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: a path with 100 keys
    asks for hundreds before anything binds them, and the kernel may repeat one."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state (from /proc: probing by connecting would disturb
    servers such as iperf3 that treat every connection as a test)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll until something listens on ``port``; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} before port {port}")
        if port in listening_ports():
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on port {port} after {timeout:.0f}s")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS) of ``pid`` and every process under it: a
    router with workers (or a relay with a master process) counts as a whole."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
            break
    else:
        raise BenchError(f"no VmRSS for pid {pid}")
    for child in _children(pid):
        with contextlib.suppress(OSError, BenchError):
            total += rss_kib(child)
    return total


def uses_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension module mapped (for a router with
    workers: every worker has; the parent that watches them runs no loop)."""
    try:
        kids = _children(pid)
        if kids:
            return all(uses_uvloop(k) for k in kids)
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@dataclass
class Procs:
    """Starts processes in new sessions and stops every one of them (context manager)."""

    logdir: Path
    running: list[subprocess.Popen[Any]] = field(default_factory=list)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[Any]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = (self.logdir / f"{name}.log").open("ab")
        try:
            p = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env=env,
                cwd=cwd,
                start_new_session=True,  # own process group: stop it and its children
            )
        finally:
            log.close()
        self.running.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if p in self.running:
            self.running.remove(p)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # Anything the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        for f in (p.stdin, p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def stop_all(self) -> None:
        for p in reversed(list(self.running)):
            self.stop(p, grace=3.0)
