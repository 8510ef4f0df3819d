"""``skiff-router supervise``: keep one ``run`` child alive (platform ``local``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from skiff_router import logfile

log = logging.getLogger("supervisor")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
GOOD_RUN = 30.0  # a child that ran this long resets the backoff
STOP_GRACE = 10.0


class Supervisor:
    def __init__(
        self,
        config: str,
        pid_file: str,
        child_cmd: list[str] | None = None,
        log_file: str | None = None,
        log_max_bytes: int = logfile.DEFAULT_MAX_BYTES,
        log_keep: int = logfile.DEFAULT_KEEP,
    ) -> None:
        self.config = config
        # The file our output goes to (the platform's), rotated while we run.
        self.log_file = Path(log_file) if log_file else None
        self.log_max_bytes, self.log_keep = log_max_bytes, log_keep
        self.pid_file = Path(pid_file)
        self.child_cmd = child_cmd or [
            sys.executable,
            "-m",
            "skiff_router",
            "run",
            "--config",
            config,
        ]
        self.child: asyncio.subprocess.Process | None = None
        self.stopping = asyncio.Event()
        self.restarts = 0

    def _write_pid(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def _remove_pid(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            # Only our own pid file: a newer supervisor may have replaced it.
            if int(self.pid_file.read_text().strip()) == os.getpid():
                self.pid_file.unlink()

    def _signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            if self.child is not None and self.child.returncode is None:
                log.info("forwarding SIGHUP to router (pid %d)", self.child.pid)
                self.child.send_signal(signal.SIGHUP)
        else:
            log.info("received %s, stopping", signal.Signals(sig).name)
            self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signal, sig)
        self._write_pid()
        log.info("supervisor started (pid %d)", os.getpid())
        backoff = BACKOFF_MIN
        rotating = asyncio.ensure_future(self._rotate_logs()) if self.log_file else None
        try:
            while not self.stopping.is_set():
                started = loop.time()
                self.child = await asyncio.create_subprocess_exec(*self.child_cmd)
                log.info("router started (pid %d)", self.child.pid)
                wait_child = asyncio.ensure_future(self.child.wait())
                wait_stop = asyncio.ensure_future(self.stopping.wait())
                await asyncio.wait({wait_child, wait_stop}, return_when=asyncio.FIRST_COMPLETED)
                wait_stop.cancel()
                if self.stopping.is_set():
                    wait_child.cancel()
                    break
                code = self.child.returncode
                if loop.time() - started >= GOOD_RUN:
                    backoff = BACKOFF_MIN
                log.warning("router exited with status %s; restarting in %.1fs", code, backoff)
                self.restarts += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            await self._stop_child()
        finally:
            if rotating is not None:
                rotating.cancel()
            self._remove_pid()
        log.info("supervisor stopped")
        return 0

    async def _rotate_logs(self) -> None:
        assert self.log_file is not None
        while True:
            try:
                if logfile.rotate_if_large(self.log_file, self.log_max_bytes, self.log_keep):
                    log.info("rotated %s (over %d bytes)", self.log_file, self.log_max_bytes)
            except OSError as exc:
                log.warning("cannot rotate %s: %s", self.log_file, exc.strerror or exc)
            await asyncio.sleep(logfile.CHECK_SECONDS)

    async def _stop_child(self) -> None:
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        try:
            await asyncio.wait_for(child.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("router did not stop in %.0fs; killing it", STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
