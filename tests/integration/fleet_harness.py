"""Helpers for tests that run real ansible-playbook against real local routers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            match["host"]: {k: int(match[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for match in RECAP.finditer(self.output)
        }

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap().items()}


def run_playbook(inventory: Path, playbook: str, *args: str, timeout: int = 300) -> PlaybookRun:
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(REPO / "playbooks" / playbook),
            *args,
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out, so parallel runs and other services do not clash."""
    sockets = []
    try:
        for _port in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EchoServer:
    """A TCP echo service on loopback: the real target behind a connector."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _address = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.listener.close()


def echo_through(port: int, payload: bytes, timeout: float = 30) -> bytes:
    """Send payload to a listener, half-close, and read until the far side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        sender = threading.Thread(
            target=lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR))
        )
        sender.start()
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
        sender.join(timeout)
    return b"".join(chunks)


def write_inventory(path: Path, hosts: dict, base_dir: Path) -> Path:
    inventory = {
        "skiff_sites": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "skiff_base_dir": str(base_dir),
                "skiff_link_bind_host": "127.0.0.1",
                "skiff_wait_timeout": 45,
            },
            "hosts": hosts,
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def router_pids(base_dir: Path) -> list[int]:
    pids = []
    for pid_file in base_dir.glob("*/run/supervisor.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            pids.append(pid)
        except (OSError, ValueError):
            pass
    return pids


def admin_status(base_dir: Path, site: str, port: int) -> dict:
    """GET /v1/status of a local site's router, with its admin token."""
    token = (base_dir / site / "admin" / "token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def until(condition, what: str, timeout: float = 20):
    """Poll ``condition`` (bounded) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
