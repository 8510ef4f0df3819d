"""Log lines: ``time level component message``, one per line."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LineFormatter(logging.Formatter):
    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        # Which process of a router with workers wrote the line ("w1", "pool").
        self.tag = f"[{tag}] " if tag else ""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")
        level = record.levelname.lower()
        line = f"{t}.{int(record.msecs):03d}Z {level} {record.name} {self.tag}{msg}"
        if record.exc_info and record.levelno >= logging.ERROR:
            # Tracebacks only for our own bugs; they carry no key material.
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def setup(level: str = "info", stream: object = None, tag: str | None = None) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(LineFormatter(tag))
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS.get(level, logging.INFO))
