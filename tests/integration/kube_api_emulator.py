"""A small Kubernetes API server for tests: real HTTP, the response shapes of a real one.

What the kubernetes platform uses, with the semantics it relies on:
server-side apply (field managers, conflicts with 409, `force`, `dryRun=All`),
server-written fields (uid, resourceVersion, generation, managedFields,
creationTimestamp) and server defaults (Service clusterIP, node ports,
Deployment and pod defaults), validation with 422 where a real server
refuses, 404 for a missing namespace, Status objects for errors, merge
patches, label selectors, deletes, a Deployment controller (pods and status),
a load balancer controller, the pod proxy (each router pod answers
`/v1/status` with the sha256 of the config its volume holds, which changes only
when the kubelet would sync it: at pod start or when the pod is updated) and
pod logs. Faults (403, 409, 422, ...) are injected per method and kind.

kmock (PyPI) was tried first: its emulator patches objects by JSON merge (a
server-side apply to a missing object is a 404 there), has no dry run,
managed fields or pod proxy, and runs on aiohttp; this file is smaller than
the layer that would have to sit on top of it.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "emulator-token"
USER = "alice"
PLURALS = {
    "serviceaccounts": ("ServiceAccount", "v1"),
    "secrets": ("Secret", "v1"),
    "configmaps": ("ConfigMap", "v1"),
    "services": ("Service", "v1"),
    "pods": ("Pod", "v1"),
    "deployments": ("Deployment", "apps/v1"),
    "roles": ("Role", "rbac.authorization.k8s.io/v1"),
    "rolebindings": ("RoleBinding", "rbac.authorization.k8s.io/v1"),
}
KINDS = {kind: plural for plural, (kind, _unused) in PLURALS.items()}
PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z0-9.]+)/v1)/namespaces/(?P<ns>[a-z0-9-]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[a-z0-9.-]+)(?::(?P<port>\d+))?(?:/(?P<sub>proxy|log)(?P<rest>/.*)?)?)?$"
)
VERBS = {"GET": "get", "PATCH": "patch", "DELETE": "delete", "POST": "create", "PUT": "update"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    if details is not None:
        body["details"] = details
    return body


class Refused(Exception):
    def __init__(self, code: int, body: dict):
        self.code, self.body = code, body


def leaves(obj: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Field paths to values; lists are atomic (one leaf), as skiff's objects use them."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple, Any] = {}
        for key, value in obj.items():
            out.update(leaves(value, (*prefix, key)))
        return out
    return {prefix: obj}


def set_path(obj: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = copy.deepcopy(value)


def del_path(obj: dict, path: tuple) -> None:
    parents = [obj]
    for key in path[:-1]:
        obj = obj.get(key)
        if not isinstance(obj, dict):
            return
        parents.append(obj)
    obj.pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop emptied parents
        if parents[depth] == {}:
            parents[depth - 1].pop(path[depth - 1], None)


def fields_v1(paths: set[tuple]) -> dict:
    tree: dict = {}
    for path in sorted(paths, key=str):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def merge_patch(target: dict, patch: dict) -> dict:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Fault:
    method: str
    kind: str  # a kind, "Namespace", or "*"
    code: int
    reason: str
    times: int = 1_000_000
    body: dict | None = None


@dataclass
class PodState:
    synced: dict[str, str] = field(default_factory=dict)  # what its volumes hold


class KubeApiServer:
    """Start with `with KubeApiServer() as api:`; `api.kubeconfig(path)` writes a kubeconfig."""

    def __init__(self):
        self.lock = threading.RLock()
        self.namespaces: set[str] = set()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.owners: dict[tuple[str, str, str], dict[str, set[tuple]]] = {}
        self.pod_state: dict[tuple[str, str], PodState] = {}
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.rv = itertools.count(1000)
        self.ips = itertools.count(10)
        self.node_ports = itertools.count(30100)
        self.pods_become_ready = True
        self.image_pull_error: str | None = None
        self.load_balancer_address: str | None = None
        self.router_error: str | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> KubeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path, *, down_port: int | None = None) -> Path:
        clusters = [{"name": "emulator", "cluster": {"server": self.url}}]
        contexts = [{"name": "emulator", "context": {"cluster": "emulator", "user": USER}}]
        if down_port:
            clusters.append(
                {"name": "down", "cluster": {"server": f"http://127.0.0.1:{down_port}"}}
            )
            contexts.append({"name": "down", "context": {"cluster": "down", "user": USER}})
        contexts.append({"name": "stale", "context": {"cluster": "emulator", "user": "stale"}})
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": clusters, "contexts": contexts,
            "users": [{"name": USER, "user": {"token": TOKEN}},
                      {"name": "stale", "user": {"token": "expired"}}],
        }))  # fmt: skip
        return path

    # -- test controls -----------------------------------------------------------------------

    def fail(self, method: str, kind: str, code: int, reason: str, **kw: Any) -> None:
        self.faults.append(Fault(method, kind, code, reason, **kw))

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def kinds(self, namespace: str) -> list[tuple[str, str]]:
        with self.lock:
            return sorted((k, n) for (k, ns, n) in self.objects if ns == namespace)

    def writes(self) -> list[dict[str, Any]]:
        """Requests that changed something (no dry runs, no reads)."""
        return [
            r for r in self.requests
            if r["method"] in ("PATCH", "POST", "DELETE", "PUT") and "All" not in r["query"].get("dryRun", [])
        ]  # fmt: skip

    def set_owner(self, kind: str, namespace: str, name: str, manager: str, path: tuple) -> None:
        """Pretend another tool (kubectl edit, a GitOps controller) set a field."""
        with self.lock:
            self.owners[(kind, namespace, name)].setdefault(manager, set()).add(path)

    def router_pods(self, namespace: str) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(o) for (k, ns, _unused), o in sorted(self.objects.items())
                    if k == "Pod" and ns == namespace]  # fmt: skip

    # -- HTTP ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = {
                    "method": self.command,
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "content_type": self.headers.get("Content-Type", ""),
                    "body": body,
                    # What the pod proxy passes on: every header but Authorization (the
                    # API server's own credential, dropped as a real API server does).
                    "pod_headers": {
                        k.lower(): v
                        for k, v in self.headers.items()
                        if k.lower() != "authorization"
                    },
                }
                try:
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        raise Refused(401, status(401, "Unauthorized", "Unauthorized"))
                    with emulator.lock:
                        emulator.requests.append(request)
                        code, answer = emulator.handle(request)
                except Refused as refused:
                    code, answer = refused.code, refused.body
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(code)
                ctype = "text/plain" if isinstance(answer, bytes) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_DELETE = do_PUT = _serve

        return Handler

    # -- the API ---------------------------------------------------------------------------------

    def _fault(self, method: str, kind: str, name: str, namespace: str) -> None:
        for fault in self.faults:
            if fault.method in (method, "*") and fault.kind in (kind, "*") and fault.times > 0:
                fault.times -= 1
                if fault.body is not None:
                    raise Refused(fault.code, fault.body)
                plural = KINDS.get(kind, "namespaces")
                message = (
                    f'{plural} "{name}" is forbidden: User "{USER}" cannot {VERBS[method]} '
                    f'resource "{plural}" in API group "" in the namespace "{namespace}"'
                    if fault.code == 403
                    else f"{fault.reason} for {plural} {name}"
                )
                raise Refused(fault.code, status(fault.code, fault.reason, message,
                                                 {"name": name, "kind": plural}))  # fmt: skip

    def handle(self, request: dict[str, Any]) -> tuple[int, Any]:
        method, path, query = request["method"], request["path"], request["query"]
        if path.startswith("/api/v1/namespaces") and path.count("/") <= 4:
            return self._namespaces(method, path, request)
        match = PATH.match(path)
        if not match or match["plural"] not in PLURALS:
            raise Refused(
                404, status(404, "NotFound", "the server could not find the requested resource")
            )
        ns, plural, name = match["ns"], match["plural"], match["name"]
        kind, api_version = PLURALS[plural]
        self._fault(method, kind, name or "", ns)
        key = (kind, ns, name or "")
        if match["sub"] == "proxy":
            return self._proxy(
                ns, name, int(match["port"] or 80), match["rest"] or "/", request["pod_headers"]
            )
        if match["sub"] == "log":
            return 200, b"router started\n-----BEGIN PRIVATE KEY-----\nlink west up\n"
        if method == "GET" and name:
            if key not in self.objects:
                raise Refused(404, status(404, "NotFound", f'{plural} "{name}" not found',
                                          {"name": name, "kind": plural}))  # fmt: skip
            return 200, self.objects[key]
        if method == "GET":
            selector = dict(
                pair.split("=", 1)
                for pair in (query.get("labelSelector") or [""])[0].split(",")
                if pair
            )
            items = [o for (k, n, _unused), o in sorted(self.objects.items()) if k == kind and n == ns
                     and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in selector.items())]  # fmt: skip
            return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                         "metadata": {"resourceVersion": str(next(self.rv))}, "items": items}  # fmt: skip
        if method == "DELETE":
            if key not in self.objects:
                raise Refused(404, status(404, "NotFound", f'{plural} "{name}" not found',
                                          {"name": name, "kind": plural}))  # fmt: skip
            gone = self.objects.pop(key)
            self.owners.pop(key, None)
            if kind == "Deployment":
                for pod in [k for k in self.objects if k[0] == "Pod" and k[1] == ns]:
                    self.objects.pop(pod)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": name, "kind": plural, "uid": gone["metadata"]["uid"]}}  # fmt: skip
        if method == "PATCH" and request["content_type"] == "application/apply-patch+yaml":
            return 200, self._apply(key, api_version, yaml.safe_load(request["body"]), query)
        if method == "PATCH" and request["content_type"] == "application/merge-patch+json":
            if key not in self.objects:
                raise Refused(404, status(404, "NotFound", f'{plural} "{name}" not found',
                                          {"name": name, "kind": plural}))  # fmt: skip
            patched = merge_patch(self.objects[key], json.loads(request["body"]))
            patched["metadata"]["resourceVersion"] = str(next(self.rv))
            self.objects[key] = patched
            if kind == "Pod":
                self._kubelet_sync(ns, name)  # a pod update makes the kubelet sync its volumes
            return 200, patched
        raise Refused(405, status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _namespaces(self, method: str, path: str, request: dict[str, Any]) -> tuple[int, Any]:
        name = path.rsplit("/", 1)[-1] if path.count("/") == 4 else ""
        if method == "POST":
            name = json.loads(request["body"])["metadata"]["name"]
        self._fault(method, "Namespace", name, name)
        if method == "GET":
            if name not in self.namespaces:
                raise Refused(404, status(404, "NotFound", f'namespaces "{name}" not found',
                                          {"name": name, "kind": "namespaces"}))  # fmt: skip
            return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if method == "POST":
            if name in self.namespaces:
                raise Refused(
                    409, status(409, "AlreadyExists", f'namespaces "{name}" already exists')
                )
            self.namespaces.add(name)
            return 201, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        raise Refused(405, status(405, "MethodNotAllowed", "not supported"))

    # -- server-side apply ---------------------------------------------------------------------

    def _apply(
        self, key: tuple[str, str, str], api_version: str, applied: dict, query: dict
    ) -> dict:
        kind, ns, name = key
        manager = (query.get("fieldManager") or [""])[0]
        if not manager:
            raise Refused(400, status(400, "BadRequest", "PATCH apply requires fieldManager"))
        if ns not in self.namespaces:
            raise Refused(404, status(404, "NotFound", f'namespaces "{ns}" not found',
                                      {"name": ns, "kind": "namespaces"}))  # fmt: skip
        if applied.get("kind") != kind or applied.get("metadata", {}).get("name") != name:
            raise Refused(
                400,
                status(400, "BadRequest", "the name or kind of the body does not match the URL"),
            )
        force = (query.get("force") or ["false"])[0] == "true"
        dry_run = "All" in (query.get("dryRun") or [])
        live = self.objects.get(key)
        owners = copy.deepcopy(self.owners.get(key, {}))
        body = {k: v for k, v in applied.items() if k not in ("status",)}
        wanted = {
            p: v for p, v in leaves(body).items() if p[:1] != ("apiVersion",) and p[:1] != ("kind",)
        }
        current = leaves(live) if live else {}
        conflicts = [
            (other, p) for other, paths in owners.items() if other != manager
            for p in paths if p in wanted and current.get(p) != wanted[p]
        ]  # fmt: skip
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{o}"',
                       "field": "." + ".".join(map(str, p))} for o, p in conflicts]  # fmt: skip
            listed = "; ".join(f"{c['message']} using {api_version}: {c['field']}" for c in causes)
            message = f"Apply failed with {len(causes)} conflict(s): {listed}"
            raise Refused(409, status(409, "Conflict", message, {"causes": causes}))
        for other in owners:
            if other != manager:
                owners[other] -= set(wanted)
        result = copy.deepcopy(live) if live else {"apiVersion": api_version, "kind": kind}
        mine_before = owners.get(manager, set())
        others = set().union(*(p for o, p in owners.items() if o != manager)) if owners else set()
        for path in mine_before - set(wanted) - others:
            del_path(result, path)
        for path, value in wanted.items():
            set_path(result, path, value)
        owners[manager] = set(wanted)
        meta = result["metadata"]
        meta["namespace"] = ns
        self._validate(kind, result, live)
        self._default(kind, result)
        if live is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        changed = live is None or _without_server_fields(live) != _without_server_fields(result)
        if kind == "Deployment" and live is not None and live.get("spec") != result.get("spec"):
            meta["generation"] = int(live["metadata"].get("generation", 1)) + 1
        if changed:
            meta["resourceVersion"] = str(next(self.rv))
        meta["managedFields"] = [
            {"manager": m, "operation": "Apply", "apiVersion": api_version, "time": now(),
             "fieldsType": "FieldsV1", "fieldsV1": fields_v1(p)}
            for m, p in sorted(owners.items()) if p
        ]  # fmt: skip
        if dry_run:
            return result
        self.objects[key] = result
        self.owners[key] = owners
        if kind == "Deployment" and changed:
            self._deployment_controller(ns, result)
        if kind == "Service" and result["spec"].get("type") == "LoadBalancer":
            address = self.load_balancer_address
            result["status"] = {"loadBalancer": {"ingress": [{"ip": address}]} if address else {}}
        return result

    def _validate(self, kind: str, obj: dict, live: dict | None) -> None:
        name = obj["metadata"]["name"]
        if kind == "Service":
            for index, port in enumerate(obj["spec"].get("ports") or []):
                node_port = port.get("nodePort")
                if node_port is not None and not 30000 <= node_port <= 32767:
                    field_path = f"spec.ports[{index}].nodePort"
                    message = (f"Invalid value: {node_port}: provided port is not in the valid "
                               "range. The range of valid ports is 30000-32767")  # fmt: skip
                    raise Refused(422, status(
                        422, "Invalid", f'Service "{name}" is invalid: {field_path}: {message}',
                        {"name": name, "kind": "Service",
                         "causes": [{"reason": "FieldValueInvalid", "message": message,
                                     "field": field_path}]}))  # fmt: skip
        if kind == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"].get("labels") or {}
            if live is not None and live["spec"]["selector"] != obj["spec"]["selector"]:
                message = "field is immutable"
                raise Refused(422, status(
                    422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: {selector}: {message}',
                    {"name": name, "kind": "Deployment",
                     "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "spec.selector"}]}))  # fmt: skip
            if not selector.items() <= labels.items():
                raise Refused(422, status(422, "Invalid", f'Deployment.apps "{name}" is invalid: '
                                          "spec.template.metadata.labels: `selector` does not match template `labels`",
                                          {"causes": [{"field": "spec.template.metadata.labels"}]}))  # fmt: skip

    def _default(self, kind: str, obj: dict) -> None:
        spec = obj.setdefault("spec", {}) if kind in ("Service", "Deployment") else None
        if kind == "Service":
            live = self.objects.get(
                ("Service", obj["metadata"]["namespace"], obj["metadata"]["name"])
            )
            spec.setdefault(
                "clusterIP",
                (live or {}).get("spec", {}).get("clusterIP") or f"10.96.0.{next(self.ips)}",
            )
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
            if spec.get("type") in ("NodePort", "LoadBalancer"):
                spec.setdefault("externalTrafficPolicy", "Cluster")
                old = {
                    p["name"]: p.get("nodePort")
                    for p in (live or {}).get("spec", {}).get("ports", [])
                }
                spec["ports"] = [dict(p, nodePort=p.get("nodePort") or old.get(p["name"]) or next(self.node_ports))
                                 for p in spec["ports"]]  # fmt: skip
            if spec.get("type") == "LoadBalancer":
                spec.setdefault("allocateLoadBalancerNodePorts", True)
        if kind == "Deployment":
            spec.setdefault("progressDeadlineSeconds", 600)
            pod = spec["template"]["spec"]
            pod.setdefault("restartPolicy", "Always")
            pod.setdefault("dnsPolicy", "ClusterFirst")
            pod.setdefault("schedulerName", "default-scheduler")
            pod["containers"] = [
                dict({"terminationMessagePath": "/dev/termination-log",
                      "terminationMessagePolicy": "File"}, **c) for c in pod["containers"]
            ]  # fmt: skip
        if kind == "Secret":
            obj.setdefault("type", "Opaque")

    # -- controllers -------------------------------------------------------------------------------

    def _deployment_controller(self, ns: str, deployment: dict) -> None:
        """Replace the pods at once (a rollout) and set the Deployment's status."""
        for key in [k for k in self.objects if k[0] == "Pod" and k[1] == ns]:
            self.objects.pop(key)
            self.pod_state.pop((key[1], key[2]), None)
        replicas = deployment["spec"]["replicas"]
        template = deployment["spec"]["template"]
        ready = self.pods_become_ready and not self.image_pull_error
        for index in range(replicas):
            name = f"{deployment['metadata']['name']}-{hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:9]}-{index}"
            containers = [
                {"name": c["name"], "ready": ready, "image": c["image"], "restartCount": 0,
                 "state": {"running": {"startedAt": now()}} if ready else {"waiting": {
                     "reason": "ImagePullBackOff",
                     "message": self.image_pull_error or "Back-off pulling image"}}}
                for c in template["spec"]["containers"]
            ]  # fmt: skip
            self.objects[("Pod", ns, name)] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                             "labels": dict(template["metadata"]["labels"]),
                             "annotations": dict(template["metadata"].get("annotations") or {}),
                             "resourceVersion": str(next(self.rv))},
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Running" if ready else "Pending", "containerStatuses": containers},
            }  # fmt: skip
            self.pod_state[(ns, name)] = PodState()
            self._kubelet_sync(ns, name)
        count = replicas if ready else 0
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": count, "availableReplicas": count,
        }  # fmt: skip

    def _kubelet_sync(self, ns: str, pod: str) -> None:
        config = self.objects.get(("ConfigMap", ns, "skiff-router"))
        state = self.pod_state.setdefault((ns, pod), PodState())
        state.synced = dict((config or {}).get("data") or {})

    def _proxy(
        self, ns: str, pod: str, port: int, path: str, headers: dict[str, str]
    ) -> tuple[int, Any]:
        obj = self.objects.get(("Pod", ns, pod))
        if obj is None or obj["status"]["phase"] != "Running":
            raise Refused(503, status(503, "ServiceUnavailable", "no endpoints available"))
        config_text = self.pod_state[(ns, pod)].synced.get("router.json")
        if path != "/v1/status" or config_text is None:
            raise Refused(
                503,
                status(
                    503,
                    "ServiceUnavailable",
                    f"error trying to reach service: dial tcp :{port}: connect: connection refused",
                ),
            )
        config = json.loads(config_text)
        if config.get("admin", {}).get("port") != port:
            raise Refused(
                503, status(503, "ServiceUnavailable", f"dial tcp :{port}: connection refused")
            )
        if config.get("admin", {}).get("token_file"):
            # The router's admin token check, with the token of the mounted Secret.
            secret = self.objects.get(("Secret", ns, "skiff-admin")) or {}
            token = base64.b64decode((secret.get("data") or {}).get("token", "")).strip()
            given = headers.get("x-skiff-admin-token", "").encode()
            if not token or given != token:
                return 401, b"this endpoint needs the admin token: Authorization: Bearer <token>\n"
        router_id = f"{config['site']}.{pod}"  # SKIFF_ROUTER_ID_SUFFIX: the pod name
        return 200, {
            "site": config["site"], "router_id": router_id,
            "config": {"path": "/etc/skiff/config/router.json",
                       "sha256": hashlib.sha256(config_text.encode()).hexdigest(),
                       "error": self.router_error},
            "links": [],
            "routers": [{"id": router_id, "site": config["site"], "reachable": True, "cost": 0}],
            "listeners": [dict(entry, state="listening", error=None) for entry in config.get("listeners", [])],
            "connectors": config.get("connectors", []), "routing_keys": {},
        }  # fmt: skip


def _without_server_fields(obj: dict) -> dict:
    out = copy.deepcopy(obj)
    for key in ("resourceVersion", "managedFields", "generation"):
        out["metadata"].pop(key, None)
    out.pop("status", None)
    return out
