"""A minimal Kubernetes API client: HTTPS with the pod's service-account token.

Only what the agent needs (list, watch, create, merge-patch, delete of core/v1
objects in one namespace), on ``http.client`` and ``ssl``: the router image
carries no Kubernetes client. The token is read from its file on every
request, so a rotated projected token is picked up without a restart; it is
never logged nor put in an error.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skiff_router import __version__

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_BODY = 64 << 20  # one answer (a list page of at most LIST_LIMIT objects)
MAX_LINE = 4 << 20  # one watch event (an object is at most ~1.5 MiB in etcd)
LIST_LIMIT = 500
MAX_MESSAGE = 300  # of an API error message kept for the status


class ApiError(Exception):
    """An API answer >= 400 (``status``, the Status ``reason`` and ``message``), or no
    answer at all (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message[:MAX_MESSAGE]
        super().__init__(f"{status} {reason}: {self.message}" if status else self.message)


@dataclass(frozen=True)
class ApiSettings:
    url: str  # https://host:port
    token_file: str
    ca_file: str
    timeout: float = 10.0  # connect and non-watch requests


def in_cluster(
    url: str | None = None, token_file: str | None = None, ca_file: str | None = None
) -> ApiSettings:
    """The standard in-cluster settings, each overridable (tests, out-of-cluster runs)."""
    if url is None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ApiError(
                0,
                "NotInCluster",
                "KUBERNETES_SERVICE_HOST is not set: run in a pod, or give --api-url",
            )
        url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return ApiSettings(
        url=url.rstrip("/"),
        token_file=token_file or f"{SA_DIR}/token",
        ca_file=ca_file or f"{SA_DIR}/ca.crt",
    )


def _keepalive(sock: socket.socket | None) -> None:
    """A peer that vanished without a FIN is noticed within about a minute, not at the
    watch's read timeout."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def _status_error(status: int, body: bytes) -> ApiError:
    reason, message = http.client.responses.get(status, "Error"), ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            reason = str(data.get("reason") or reason)
            message = str(data.get("message") or "")
    except ValueError:
        message = body[:MAX_MESSAGE].decode("utf-8", "replace").strip()
    return ApiError(status, reason, message)


class KubeApi:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        parsed = urllib.parse.urlsplit(settings.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ApiError(0, "BadURL", f"API URL must be https://HOST:PORT, got {settings.url}")
        self.host = parsed.hostname
        self.port = parsed.port or 443
        self._ssl: tuple[tuple[float, int], ssl.SSLContext] | None = None
        self._lock = threading.Lock()
        self._streams: set[http.client.HTTPSConnection] = set()
        self._closed = False

    # -- plumbing

    def _context(self) -> ssl.SSLContext:
        st = os.stat(self.settings.ca_file)  # reloaded when the CA bundle changes
        stamp = (st.st_mtime, st.st_size)
        if self._ssl is None or self._ssl[0] != stamp:
            ctx = ssl.create_default_context(cafile=self.settings.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl = (stamp, ctx)
        return self._ssl[1]

    def _token(self) -> str:
        return Path(self.settings.token_file).read_text().strip()

    def _open(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str,
        timeout: float,
        stream: bool = False,
    ) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
        if self._closed:
            raise ApiError(0, "Closed", "the agent is stopping")
        try:
            context, token = self._context(), self._token()
        except OSError as exc:
            # The file name only: never the token.
            raise ApiError(
                0, "Credentials", f"cannot read {exc.filename}: {exc.strerror or exc}"
            ) from None
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"skiff-router-agent/{__version__}",
        }
        if body is not None:
            headers["Content-Type"] = content_type
        if stream:
            with self._lock:
                self._streams.add(conn)
        try:
            conn.connect()
            _keepalive(conn.sock)
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._forget(conn)
            raise ApiError(0, type(exc).__name__, f"{method} {path}: {exc}") from None

    def _forget(self, conn: http.client.HTTPSConnection | None) -> None:
        if conn is None:
            return
        with self._lock:
            self._streams.discard(conn)
        conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        conn, resp = self._open(method, path, data, content_type, self.settings.timeout)
        try:
            raw = resp.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, type(exc).__name__, f"{method} {path}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise _status_error(resp.status, raw)
        if len(raw) > MAX_BODY:
            raise ApiError(0, "TooLarge", f"{method} {path}: answer over {MAX_BODY} bytes")
        try:
            out = json.loads(raw)
        except ValueError:
            raise ApiError(0, "BadJSON", f"{method} {path}: the answer is not JSON") from None
        if not isinstance(out, dict):
            raise ApiError(0, "BadJSON", f"{method} {path}: the answer is not a JSON object")
        return out

    # -- what the agent uses

    def list(self, path: str, continue_token: str | None = None) -> dict[str, Any]:
        query: dict[str, Any] = {"limit": LIST_LIMIT}
        if continue_token:
            query["continue"] = continue_token
        return self.request("GET", f"{path}?{urllib.parse.urlencode(query)}")

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        """Watch events from ``resource_version`` until the server ends the stream.

        A stream silent for ``read_timeout`` (bookmarks arrive about once a minute) or
        dropped mid-line raises ApiError(0); the caller resumes from its last version."""
        query = urllib.parse.urlencode(
            {
                "watch": "1",
                "allowWatchBookmarks": "true",
                "resourceVersion": resource_version,
                "timeoutSeconds": timeout_seconds,
            }
        )
        conn, resp = self._open("GET", f"{path}?{query}", None, "", read_timeout, stream=True)
        try:
            if resp.status >= 400:
                raise _status_error(resp.status, resp.read(MAX_MESSAGE * 4))
            # read1 (not readline): a connection cut between chunks raises IncompleteRead
            # here, where readline would report it as a clean end of the stream.
            buffer = bytearray()
            while True:
                data = resp.read1(65536)
                if not data:
                    if buffer.strip():
                        raise ApiError(0, "Dropped", f"watch {path}: stream ended mid-event")
                    return
                buffer += data
                *lines, rest = buffer.split(b"\n")
                if len(rest) > MAX_LINE:
                    raise ApiError(0, "TooLarge", f"watch {path}: event over {MAX_LINE} bytes")
                buffer = bytearray(rest)
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise ApiError(
                            0, "BadJSON", f"watch {path}: an event is not JSON"
                        ) from None
                    if isinstance(event, dict):
                        yield event
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, socket.timeout | TimeoutError):
                raise ApiError(
                    0, "Timeout", f"watch {path}: silent for {read_timeout:g} s"
                ) from None
            raise ApiError(0, type(exc).__name__, f"watch {path}: {exc}") from None
        finally:
            self._forget(conn)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str, uid: str, resource_version: str) -> dict[str, Any]:
        # Preconditions: only the object we saw (ours), never one that replaced it.
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        return self.request("DELETE", path, body)

    def close(self) -> None:
        """Stop: every open watch stream ends at once (its thread sees an error)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for conn in streams:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
