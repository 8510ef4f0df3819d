"""Admin HTTP endpoint: a deliberately tiny HTTP/1.1 server (GET only).

Requests are bounded (line length, header count, time) because the port may
be reachable by other local users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skiff_router.runtime import Router

log = logging.getLogger("admin")

MAX_LINE = 4096
MAX_HEADERS = 64
REQUEST_TIMEOUT = 5.0


class AdminServer:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        log.info("admin endpoint on http://%s:%d", host, port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1)
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._request(reader), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except ConnectionError:
            writer.transport.abort()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[
            status
        ]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except OSError:
            writer.transport.abort()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        line = (await reader.readuntil(b"\n")).decode("latin-1").strip()
        for _ in range(MAX_HEADERS):
            if (await reader.readuntil(b"\n")).strip() == b"":
                break
        else:
            raise ValueError("too many headers")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if target == "/healthz":
            return 200, "text/plain", b"ok"
        if target == "/v1/status":
            status: dict[str, Any] = self.router.status()
            return 200, "application/json", json.dumps(status, indent=2).encode() + b"\n"
        return 404, "text/plain", b"not found\n"
