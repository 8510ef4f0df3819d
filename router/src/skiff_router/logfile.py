"""The router log of platform ``local`` kept bounded: copy and truncate.

The supervisor and its router child write ``logs/router.log`` through one
``O_APPEND`` descriptor the platform opened; nobody can reopen it, so the file
is rotated the way logrotate's ``copytruncate`` does: copied to ``.1`` (older
copies shifted, at most ``keep``), then truncated, and the writers go on at the
new end. Lines written between the copy and the truncation are lost; the
supervisor checks every few seconds, so that window is small.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5
CHECK_SECONDS = 5.0


def rotate_if_large(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` when it holds more than ``max_bytes``; True when it did."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    copy = path.with_name(f"{path.name}.1")
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target)
    os.truncate(path, 0)
    return True
