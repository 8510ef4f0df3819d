"""The local platform's router log stays bounded (copy and truncate)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skiff_router.logfile import rotate_if_large


def test_rotation_shifts_copies_truncates_and_keeps_a_bound(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    assert not rotate_if_large(log, 100, 3)  # no file yet: nothing to do
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as the platform opens it
    try:
        for round_ in range(5):
            os.write(fd, f"round {round_} ".encode() * 20)
            assert rotate_if_large(log, 100, 3)
            assert log.stat().st_size == 0
            os.write(fd, b"after\n")  # the writer goes on at the new end, not at a hole
            assert log.read_bytes() == b"after\n"
            assert not rotate_if_large(log, 100, 3)
    finally:
        os.close(fd)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["router.log", "router.log.1", "router.log.2", "router.log.3"]
    assert (tmp_path / "router.log.1").read_bytes().startswith(b"after\nround 4 ")
    assert (tmp_path / "router.log.3").read_bytes().startswith(b"after\nround 2 ")
    assert stat.S_IMODE((tmp_path / "router.log.1").stat().st_mode) == 0o600


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_supervisor_keeps_its_log_file_bounded(tmp_path: Path, monkeypatch) -> None:
    """A child that writes far more than the bound: the supervisor rotates the file
    it writes to, and the copies stay at most `keep`."""
    log = tmp_path / "router.log"
    chatty = tmp_path / "chatty.py"
    chatty.write_text(
        "import sys, time\n"
        "for i in range(400):\n"
        "    sys.stdout.write(f'line {i} ' + 'x' * 200 + '\\n'); sys.stdout.flush()\n"
        "    time.sleep(0.005)\n"
        "time.sleep(60)\n"
    )
    code = (
        "import asyncio, sys\n"
        "from skiff_router import logfile\n"
        "from skiff_router.supervisor import Supervisor\n"
        "logfile.CHECK_SECONDS = 0.05\n"
        f"sup = Supervisor('unused', {str(tmp_path / 'sup.pid')!r}, "
        f"child_cmd=[sys.executable, {str(chatty)!r}], log_file={str(log)!r}, "
        "log_max_bytes=4096, log_keep=2)\n"
        "asyncio.run(sup.run())\n"
    )
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=fd, stderr=fd)
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"line 399 " not in b"".join(
            p.read_bytes() for p in tmp_path.glob("router.log*")
        ):
            time.sleep(0.1)
        time.sleep(0.3)  # one more check of the supervisor
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    names = sorted(p.name for p in tmp_path.glob("router.log*"))
    assert names == ["router.log", "router.log.1", "router.log.2"]
    assert all(p.stat().st_size < 4096 + 64 * 1024 for p in tmp_path.glob("router.log*"))
    # The newest lines are in the live file or its first copy; the oldest are gone.
    everything = b"".join(p.read_bytes() for p in tmp_path.glob("router.log*"))
    assert b"line 399 " in everything and b"line 0 " not in everything
