"""A small Kubernetes API server for the agent's tests: HTTPS, bearer token, core/v1
pods and Services of namespaces, with the semantics the agent relies on.

- list with ``limit``/``continue`` (a continue token older than the history is 410);
- watch from a resourceVersion with ``allowWatchBookmarks`` and ``timeoutSeconds``,
  chunked like the real server; a version older than the kept history gets an
  ``ERROR`` event with a 410 Status (what a real API server does after compaction);
- create (409 AlreadyExists, 422 Invalid), JSON merge patch (409 on a stale
  ``resourceVersion`` or a different ``uid``), delete with preconditions;
- answers in the real shapes (``PodList``, ``Status`` objects, watch events).

Faults for tests: ``fail(...)`` answers the next matching requests with a status
(403, 500, 503, ...); ``drop_watches()`` cuts every open stream; ``slow`` sends
each event in small pieces with pauses; ``expire_watches()`` sends 410 ERROR
events; ``compact()`` forgets the history; ``bookmark()`` sends BOOKMARK events.
"""

from __future__ import annotations

import base64
import copy
import datetime
import http.server
import json
import queue
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router_testkit import Ca

KINDS = {"pods": "Pod", "services": "Service"}
PATH_RE = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/(pods|services)(?:/([a-z0-9.-]+))?$")
SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
PORT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class ApiFailure(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None, **details: Any) -> None:
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details or None


@dataclass
class Fault:
    status: int
    method: str | None = None  # GET, POST, PATCH, DELETE
    resource: str | None = None
    watch: bool | None = None  # None: lists and watches alike
    name: str | None = None
    count: int = 1  # -1: until cleared
    message: str = "injected"

    def matches(self, method: str, resource: str, watch: bool, name: str | None) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.resource is None or self.resource == resource)
            and (self.watch is None or self.watch == watch)
            and (self.name is None or self.name == name)
        )


@dataclass
class _Watch:
    resource: str
    namespace: str
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    sock: socket.socket | None = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class FakeApiServer:
    def __init__(self, directory: Path, token: str = "test-token", history: int = 1000) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.ca = Ca.create("kube-apiserver")
        cert, key = self.ca.issue("kube-apiserver", server=True)
        (directory / "ca.crt").write_bytes(self.ca.pem)
        (directory / "tls.crt").write_bytes(cert)
        (directory / "tls.key").write_bytes(key)
        (directory / "token").write_text(token + "\n")
        self.ca_file = str(directory / "ca.crt")
        self.token_file = str(directory / "token")
        self.lock = threading.RLock()
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: deque[tuple[int, str, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.oldest_rv = self.rv  # a watch from an older version is 410
        self.watches: list[_Watch] = []
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.slow: float = 0.0  # seconds between the pieces of one event
        self.next_ip = 1
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.api = self
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- what a user (kubectl) or the kubelet would do

    def _event(self, kind: str, resource: str, ns: str, obj: dict[str, Any]) -> None:
        self.history.append((int(obj["metadata"]["resourceVersion"]), resource, ns, kind, obj))
        if len(self.history) == self.history.maxlen:
            self.oldest_rv = self.history[0][0] - 1
        for w in list(self.watches):
            if w.resource == resource and w.namespace == ns:
                w.events.put({"type": kind, "object": obj})

    def _stamp(self, resource: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = KINDS[resource], "v1"
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp",
            datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        if resource == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if "clusterIP" not in spec:
                spec["clusterIP"] = f"10.96.0.{self.next_ip}"
                self.next_ip += 1
            spec["clusterIPs"] = [spec["clusterIP"]]
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
        return obj

    def put(self, resource: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (keeps the uid of a replaced object)."""
        with self.lock:
            name = obj["metadata"]["name"]
            old = self.objects.get((resource, ns, name))
            if old is not None:
                obj = copy.deepcopy(obj)
                obj["metadata"]["uid"] = old["metadata"]["uid"]
                if resource == "services":
                    obj.setdefault("spec", {}).setdefault("clusterIP", old["spec"]["clusterIP"])
            stored = self._stamp(resource, ns, obj)
            self.objects[(resource, ns, name)] = stored
            self._event("MODIFIED" if old else "ADDED", resource, ns, stored)
            return copy.deepcopy(stored)

    def remove(self, resource: str, ns: str, name: str) -> None:
        with self.lock:
            old = self.objects.pop((resource, ns, name))
            self.rv += 1
            final = copy.deepcopy(old)
            final["metadata"]["resourceVersion"] = str(self.rv)
            self._event("DELETED", resource, ns, final)

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((resource, ns, name))
            return copy.deepcopy(obj) if obj else None

    def names(self, resource: str, ns: str) -> list[str]:
        with self.lock:
            return sorted(n for (r, s, n) in self.objects if r == resource and s == ns)

    # -- faults

    def fail(self, status: int, **match: Any) -> Fault:
        f = Fault(status, **match)
        with self.lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection (no end chunk): a network failure."""
        with self.lock:
            watches = list(self.watches)
        for w in watches:
            w.events.put("drop")

    def expire_watches(self) -> None:
        """Every open watch gets an ERROR event with a 410 Status, as after compaction."""
        with self.lock:
            watches = list(self.watches)
        for w in watches:
            w.events.put("expire")

    def compact(self) -> None:
        """Forget the history: a watch from any version seen so far is 410."""
        with self.lock:
            self.history.clear()
            self.oldest_rv = self.rv

    def bookmark(self) -> None:
        with self.lock:
            self.rv += 1
            rv = self.rv
            watches = list(self.watches)
        for w in watches:
            w.events.put(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": KINDS[w.resource],
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(rv)},
                    },
                }
            )

    def open_watches(self, resource: str | None = None) -> int:
        with self.lock:
            return sum(1 for w in self.watches if resource in (None, w.resource))

    def writes(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]

    def count(self, method: str, resource: str, watch: bool | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if r.method == method
                and f"/{resource}" in r.path
                and (watch is None or (r.query.get("watch") in ("1", "true")) == watch)
            )

    # -- request handling (called from handler threads)

    def _fault(self, method: str, resource: str, watch: bool, name: str | None) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.count != 0 and f.matches(method, resource, watch, name):
                    if f.count > 0:
                        f.count -= 1
                    return f
        return None

    def _validate_service(self, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        causes = []
        if not SERVICE_NAME_RE.match(name):
            causes.append(("metadata.name", "a DNS-1035 label"))
        ports = (obj.get("spec") or {}).get("ports") or []
        if not ports:
            causes.append(("spec.ports", "Required value"))
        names = [p.get("name") for p in ports]
        if len(ports) > 1 and (not all(names) or len(set(names)) != len(names)):
            causes.append(("spec.ports[].name", "unique names required for several ports"))
        for i, p in enumerate(ports):
            if not isinstance(p.get("port"), int) or not 1 <= p["port"] <= 65535:
                causes.append((f"spec.ports[{i}].port", "must be between 1 and 65535"))
            t = p.get("targetPort")
            if isinstance(t, int) and not 1 <= t <= 65535:
                causes.append((f"spec.ports[{i}].targetPort", "must be between 1 and 65535"))
            if p.get("name") and not PORT_NAME_RE.match(p["name"]):
                causes.append((f"spec.ports[{i}].name", "must be an IANA_SVC_NAME"))
        if causes:
            msg = f'Service "{name}" is invalid: ' + ", ".join(
                f"{f}: Invalid value: {m}" for f, m in causes
            )
            raise ApiFailure(422, msg, kind="Service", name=name)

    def create(self, resource: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            name = (body.get("metadata") or {}).get("name", "")
            if resource == "services":
                self._validate_service(body)
            if (resource, ns, name) in self.objects:
                raise ApiFailure(
                    409,
                    f'{resource} "{name}" already exists',
                    "AlreadyExists",
                    name=name,
                    kind=resource,
                )
            body = copy.deepcopy(body)
            body["metadata"].pop("uid", None)
            body["metadata"].pop("resourceVersion", None)
            stored = self._stamp(resource, ns, body)
            self.objects[(resource, ns, name)] = stored
            self._event("ADDED", resource, ns, stored)
            return copy.deepcopy(stored)

    def patch(self, resource: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            old = self.objects.get((resource, ns, name))
            if old is None:
                raise ApiFailure(404, f'{resource} "{name}" not found', name=name, kind=resource)
            meta = body.get("metadata") or {}
            if "uid" in meta and meta["uid"] != old["metadata"]["uid"]:
                raise ApiFailure(
                    409,
                    f"Precondition failed: UID in precondition: {meta['uid']}, "
                    f"UID in object meta: {old['metadata']['uid']}",
                )
            if (
                "resourceVersion" in meta
                and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
            ):
                raise ApiFailure(
                    409,
                    f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            new = merge_patch(old, body)
            new["metadata"]["uid"] = old["metadata"]["uid"]
            if resource == "services":
                self._validate_service(new)
                new["spec"]["clusterIP"] = old["spec"]["clusterIP"]
            stored = self._stamp(resource, ns, new)
            self.objects[(resource, ns, name)] = stored
            self._event("MODIFIED", resource, ns, stored)
            return copy.deepcopy(stored)

    def delete(self, resource: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            old = self.objects.get((resource, ns, name))
            if old is None:
                raise ApiFailure(404, f'{resource} "{name}" not found', name=name, kind=resource)
            pre = (body or {}).get("preconditions") or {}
            if "uid" in pre and pre["uid"] != old["metadata"]["uid"]:
                raise ApiFailure(
                    409,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {old['metadata']['uid']}",
                )
            if (
                "resourceVersion" in pre
                and pre["resourceVersion"] != old["metadata"]["resourceVersion"]
            ):
                raise ApiFailure(
                    409,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{old['metadata']['resourceVersion']}",
                )
            self.remove(resource, ns, name)
            return copy.deepcopy(old)

    def list(self, resource: str, ns: str, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            limit = int(query.get("limit", "0") or 0)
            start, list_rv = "", self.rv
            if query.get("continue"):
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                start, list_rv = token["start"], token["rv"]
                if list_rv < self.oldest_rv:
                    raise ApiFailure(
                        410,
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter.",
                    )
            items = [
                copy.deepcopy(o)
                for (r, s, n), o in sorted(self.objects.items())
                if r == resource and s == ns and n > start
            ]
            meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
            if limit and len(items) > limit:
                items = items[:limit]
                last = items[-1]["metadata"]["name"]
                token = json.dumps({"start": last, "rv": list_rv}).encode()
                meta["continue"] = base64.urlsafe_b64encode(token).decode()
            for o in items:  # list items carry no kind/apiVersion
                o.pop("kind", None)
                o.pop("apiVersion", None)
            return {
                "kind": f"{KINDS[resource]}List",
                "apiVersion": "v1",
                "metadata": meta,
                "items": items,
            }

    def open_watch(self, resource: str, ns: str, rv: str) -> tuple[_Watch, list[Any]]:
        with self.lock:
            w = _Watch(resource, ns)
            start = int(rv) if rv and rv != "0" else None
            backlog: list[Any] = []
            if start is not None and start < self.oldest_rv:
                backlog.append("expire")
            elif start is not None:
                backlog = [
                    {"type": kind, "object": obj}
                    for (v, r, s, kind, obj) in self.history
                    if v > start and r == resource and s == ns
                ]
            else:
                backlog = [
                    {"type": "ADDED", "object": o}
                    for (r, s, _unused), o in sorted(self.objects.items())
                    if r == resource and s == ns
                ]
            self.watches.append(w)
            return w, backlog

    def close_watch(self, w: _Watch) -> None:
        with self.lock:
            if w in self.watches:
                self.watches.remove(w)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    api: FakeApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients dropping streams on purpose is routine here


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _failure(self, f: ApiFailure) -> None:
        self._json(f.code, status_body(f.code, f.reason, f.message, f.details))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with api.lock:
            api.requests.append(Request(method, url.path, query, body))
        try:
            if self.headers.get("Authorization") != f"Bearer {api.token}":
                raise ApiFailure(401, "Unauthorized")
            m = PATH_RE.match(url.path)
            if not m:
                raise ApiFailure(404, "the server could not find the requested resource")
            ns, resource, name = m.groups()
            watch = query.get("watch") in ("1", "true")
            fault = api._fault(method, resource, watch, name)
            if fault is not None:
                verb = {"GET": "watch" if watch else "list", "POST": "create"}.get(
                    method, method.lower()
                )
                msg = fault.message
                if fault.status == 403:
                    msg = (
                        f'{resource} is forbidden: User "system:serviceaccount:{ns}:skiff-agent" '
                        f'cannot {verb} resource "{resource}" in API group "" in the namespace "{ns}"'
                    )
                raise ApiFailure(fault.status, msg)
            if method == "GET" and name is None and watch:
                self._watch(resource, ns, query)
                return
            if method == "GET" and name is None:
                self._json(200, api.list(resource, ns, query))
            elif method == "GET":
                obj = api.get(resource, ns, name)
                if obj is None:
                    raise ApiFailure(404, f'{resource} "{name}" not found')
                self._json(200, obj)
            elif method == "POST" and name is None:
                self._json(201, api.create(resource, ns, body or {}))
            elif method == "PATCH" and name is not None:
                if self.headers.get("Content-Type") != "application/merge-patch+json":
                    raise ApiFailure(415, "the body of the request was in an unknown format")
                self._json(200, api.patch(resource, ns, name, body or {}))
            elif method == "DELETE" and name is not None:
                self._json(200, api.delete(resource, ns, name, body or {}))
            else:
                raise ApiFailure(405, "method not allowed", "MethodNotAllowed")
        except ApiFailure as f:
            self._failure(f)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_event(self, event: dict[str, Any]) -> None:
        line = json.dumps(event).encode() + b"\n"
        slow = self.server.api.slow
        if slow:
            # A slow stream: the event arrives in pieces, with pauses inside the JSON.
            step = max(1, len(line) // 4)
            for i in range(0, len(line), step):
                self._chunk(line[i : i + step])
                time.sleep(slow)
        else:
            self._chunk(line)

    def _watch(self, resource: str, ns: str, query: dict[str, str]) -> None:
        api = self.server.api
        w, backlog = api.open_watch(resource, ns, query.get("resourceVersion", ""))
        bookmarks = query.get("allowWatchBookmarks") == "true"
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for item in backlog:
                w.events.put(item)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._chunk(b"")  # the server's timeout: a clean end of stream
                    return
                try:
                    item = w.events.get(timeout=min(left, 0.2))
                except queue.Empty:
                    continue
                if item == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if item == "expire":
                    status = status_body(410, "Expired", "too old resource version")
                    self._send_event({"type": "ERROR", "object": status})
                    self._chunk(b"")
                    return
                if item["type"] == "BOOKMARK" and not bookmarks:
                    continue
                self._send_event(item)
        except OSError:
            self.close_connection = True
        finally:
            api.close_watch(w)
