"""The demo's backend: a small HTTP service that site `east` offers through a connector.

`start` runs it in the background (once; a second start finds it running),
`stop` ends it, `serve` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE = Path(__file__).resolve().parent.parent / ".demo"
PID_FILE = STATE / "backend.pid"
LOG_FILE = STATE / "backend.log"
HOST, PORT = "127.0.0.1", 18000


class Hello(BaseHTTPRequestHandler):
    served = 0

    def do_GET(self) -> None:
        Hello.served += 1
        body = (
            f"hello from the backend behind site east: request #{Hello.served} "
            f"for {self.path}, arrived from {self.client_address[0]}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"backend: {format % args}\n")


def running_pid() -> int | None:
    """The backend's pid, if the pid file names a live process that is this script."""
    try:
        pid = int(PID_FILE.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # A stale pid file may name an unrelated process by now: never signal that one.
    if not any(arg.endswith(Path(__file__).name.encode()) for arg in cmdline):
        return None
    return pid


def start() -> None:
    if running_pid():
        print(f"demo backend already running on {HOST}:{PORT}")
        return
    STATE.mkdir(exist_ok=True)
    with open(LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    PID_FILE.write_text(str(proc.pid))
    time.sleep(0.3)
    if proc.poll() is not None:
        sys.exit(f"demo backend did not start; see {LOG_FILE}")
    print(f"demo backend started on {HOST}:{PORT} (pid {proc.pid})")


def stop() -> None:
    pid = running_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        print(f"demo backend stopped (pid {pid})")
    PID_FILE.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "serve"])
    action = parser.parse_args().action
    if action == "serve":
        ThreadingHTTPServer((HOST, PORT), Hello).serve_forever()
    elif action == "start":
        start()
    else:
        stop()


if __name__ == "__main__":
    main()
