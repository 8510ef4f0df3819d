"""The demo's services: one small HTTP server per connector of the demo inventory.

Each answers with its own service name and site, so a request through a
listener shows which site served it. `start` runs them in the background
(once; a second start finds them running), `stop` ends them, `serve` runs
them in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = REPO / "inventories" / "demo"
DEFAULT_STATE = REPO / ".demo"


@dataclass(frozen=True)
class Service:
    site: str
    name: str
    host: str
    port: int


def services(inventory: Path) -> list[Service]:
    """Every connector of the inventory: the services the demo must run."""
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["skiff_sites"]["hosts"]
    return [
        Service(site, c["name"], c.get("host", "127.0.0.1"), int(c["port"]))
        for site, site_vars in hosts.items()
        for c in site_vars.get("skiff_connectors", [])
    ]


def handler_for(service: Service) -> type[BaseHTTPRequestHandler]:
    counter = {"served": 0}
    lock = threading.Lock()

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                counter["served"] += 1
                served = counter["served"]
            body = (
                f"hello from {service.name} at site {service.site}: "
                f"request #{served} for {self.path}\n"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{service.name}@{service.site}: {format % args}\n")

    return Hello


def serve(inventory: Path) -> None:
    servers = [ThreadingHTTPServer((s.host, s.port), handler_for(s)) for s in services(inventory)]
    threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in servers]
    for thread in threads:
        thread.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for srv in servers:
        srv.shutdown()


def running_pid(pid_file: Path) -> int | None:
    """The services' pid, if the pid file names a live process that is this script."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # A stale pid file may name an unrelated process by now: never signal that one.
    if not any(arg.endswith(Path(__file__).name.encode()) for arg in cmdline):
        return None
    return pid


def start(inventory: Path, state: Path) -> None:
    pid_file, log_file = state / "backend.pid", state / "backend.log"
    listed = ", ".join(f"{s.name}@{s.site} on {s.host}:{s.port}" for s in services(inventory))
    if running_pid(pid_file):
        print(f"demo services already running: {listed}")
        return
    state.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve", "--inventory", str(inventory)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    time.sleep(0.5)
    if proc.poll() is not None:
        sys.exit(f"demo services did not start; see {log_file}")
    print(f"demo services started (pid {proc.pid}): {listed}")


def stop(state: Path) -> None:
    pid_file = state / "backend.pid"
    pid = running_pid(pid_file)
    if pid:
        os.kill(pid, signal.SIGTERM)
        print(f"demo services stopped (pid {pid})")
    pid_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "serve"])
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args()
    if args.action == "serve":
        serve(args.inventory)
    elif args.action == "start":
        start(args.inventory, args.state)
    else:
        stop(args.state)


if __name__ == "__main__":
    main()
