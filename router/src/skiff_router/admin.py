"""Admin HTTP endpoint: a deliberately tiny HTTP/1.1 server.

Requests are bounded (line length, header count, body size, time) because the
port may be reachable by other local users. One request per connection.

GET  /healthz                    200 "ok" while the process runs
GET  /readyz                     200 "ready" / 503 with the reasons
GET  /v1/status                  JSON status (docs/design.md)
GET  /v1/flows                   JSON list of open flows with byte counters
GET  /v1/network                 JSON: every router known from link state, links, keys, counts
GET  /console                    the network console: a read-only page drawing /v1/network
GET  /metrics                    Prometheus text format
POST /v1/multicast/<address>     publish the body network-wide
GET  /v1/multicast/<address>     subscribe: a stream of JSON lines until the client leaves

With ``admin.token_file`` set, every endpoint but /healthz, /readyz, /metrics and the
console page answers 401 unless the request carries ``Authorization: Bearer <token>``,
or ``X-Skiff-Admin-Token: <token>`` (the Kubernetes API server's pod proxy, the way
to a router pod's admin port from outside the cluster, drops ``Authorization``).
The file is read at each such request, so replacing it takes effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import urllib.parse
from http import HTTPStatus
from typing import Any

try:
    from skiff_router import metrics
except ImportError:  # without prometheus-client everything but /metrics works
    metrics = None  # type: ignore[assignment]
from skiff_router import console, workers
from skiff_router.codec import MAX_DATA, valid_address
from skiff_router.config import AdminTokenError, read_admin_token
from skiff_router.view import MulticastPort, RouterView

log = logging.getLogger("admin")

MAX_LINE = 4096
MAX_HEADERS = 64
REQUEST_TIMEOUT = 5.0
MAX_BODY = MAX_DATA - 1024  # a multicast payload fits one frame with its header
MCAST_PREFIX = "/v1/multicast/"
# What probes, scrapers and a browser opening the console reach without the token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/console", "/console/"})
UNAUTHORIZED = b"this endpoint needs the admin token: Authorization: Bearer <token>\n"
TOKEN_HEADER = "x-skiff-admin-token"  # the same token, where a proxy drops Authorization
NO_METRICS = b"metrics need the prometheus-client Python package (pip install prometheus-client)\n"


class _Refused(Exception):
    """Raised by the request parser: the request lacks the admin token (401)."""


class _Stream(Exception):
    """Raised by the request parser: answer with a multicast stream."""

    def __init__(self, address: str) -> None:
        self.address = address


class AdminServer:
    def __init__(
        self, view: RouterView, multicast: MulticastPort, token_file: str | None = None
    ) -> None:
        self.view = view
        self.multicast = multicast
        self.token_file = token_file
        self.refused = 0  # requests answered 401
        self.server: asyncio.Server | None = None
        self.registry = metrics.registry_for(view) if metrics is not None else None
        self._streams: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        log.info("admin endpoint on http://%s:%d", host, port)

    async def start_unix(self, path: str) -> None:
        """On a Unix socket: a worker's private endpoint, asked by worker 0."""
        sock = workers.listening_socket(path)
        self.server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_LINE)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._streams):
                w.transport.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1)
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._request(reader), REQUEST_TIMEOUT)
        except _Stream as s:
            await self._stream(s.address, reader, writer)
            return
        except _Refused:
            self.refused += 1
            status, ctype, body = 401, "text/plain", UNAUTHORIZED
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except ConnectionError:
            writer.transport.abort()
            return
        challenge = 'WWW-Authenticate: Bearer realm="skiff"\r\n' if status == 401 else ""
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {ctype}\r\n"
            f"{challenge}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
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
        length = 0
        authorization = ""
        for _round in range(MAX_HEADERS):
            h = (await reader.readuntil(b"\n")).strip()
            if h == b"":
                break
            name, _sep, value = h.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())  # ValueError -> 400
                if length < 0:
                    raise ValueError("negative length")
            elif name == "authorization":
                scheme, _sep, given = value.strip().partition(" ")
                if scheme.lower() == "bearer":
                    authorization = given.strip()
            elif name == TOKEN_HEADER:
                authorization = value.strip()
        else:
            raise ValueError("too many headers")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in OPEN_PATHS and not self._authorized(authorization):
            raise _Refused
        if target.startswith(MCAST_PREFIX):
            address = urllib.parse.unquote(target[len(MCAST_PREFIX) :])
            if not valid_address(address):
                return 400, "text/plain", b"invalid multicast address\n"
            if method == "GET":
                raise _Stream(address)
            if method != "POST":
                return 405, "text/plain", b"method not allowed\n"
            if length > MAX_BODY:
                return 413, "text/plain", f"payload over {MAX_BODY} bytes\n".encode()
            body = await reader.readexactly(length)
            seq = self.multicast.publish(address, body)
            out = {"origin": self.view.router_id, "seq": seq, "address": address}
            return 200, "application/json", json.dumps(out).encode() + b"\n"
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if target == "/healthz":
            return 200, "text/plain", b"ok"
        if target == "/readyz":
            ready, why = self.view.readiness()
            if ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", ("not ready: " + "; ".join(why) + "\n").encode()
        if target in ("/v1/status", "/v1/flows", "/metrics"):
            await self.view.refresh(flows=target == "/v1/flows")
        if target == "/v1/status":
            status: dict[str, Any] = self.view.status()
            return 200, "application/json", json.dumps(status, indent=2).encode() + b"\n"
        if target == "/v1/network":
            network = self.view.network()
            return 200, "application/json", json.dumps(network).encode() + b"\n"
        if target in ("/console", "/console/"):
            return 200, "text/html; charset=utf-8", console.page()
        if target == "/v1/flows":
            flows = self.view.flows_status()
            return 200, "application/json", json.dumps(flows).encode() + b"\n"
        if target == "/metrics":
            if metrics is None or self.registry is None:
                return 501, "text/plain", NO_METRICS
            return 200, metrics.CONTENT_TYPE, metrics.render(self.registry)
        return 404, "text/plain", b"not found\n"

    def _authorized(self, given: str) -> bool:
        """``given``: the token the request carries (either header), "" if none."""
        if self.token_file is None:
            return True
        try:
            token = read_admin_token(self.token_file)
        except AdminTokenError as exc:
            # Fail closed: an unreadable or loosened token file opens nothing.
            log.warning("admin request refused: %s", exc)
            return False
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    async def _stream(
        self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Multicast subscription: one JSON object per line, the first one
        ``{"subscribed": address}`` once messages are being collected."""
        sub = self.multicast.subscribe(address)
        self._streams.add(writer)
        gone = asyncio.ensure_future(reader.read(1))  # the client leaving ends the stream
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                + json.dumps({"subscribed": address}).encode()
                + b"\n"
            )
            await writer.drain()
            while True:
                get = asyncio.ensure_future(sub.queue.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                msg = get.result()
                if msg is None:
                    break
                line = {
                    "origin": msg.origin,
                    "seq": msg.seq,
                    "address": msg.address,
                    "payload": base64.b64encode(msg.payload).decode("ascii"),
                }
                writer.write(json.dumps(line).encode() + b"\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            self.multicast.unsubscribe(sub)
            self._streams.discard(writer)
            gone.cancel()
            if sub.dropped:
                writer.transport.abort()
            else:
                writer.close()
