"""The Kubernetes API as the kubernetes platform uses it (private to skiff.fleet; not a public API).

A thin layer over the `kubernetes` Python client's `ApiClient` (pinned in
requirements; no other collection needed): kubeconfig and context from the
inventory, server-side apply with skiff's field manager, dry runs, merge
patches of pod annotations, the API's pod proxy. Every failure becomes a
`SkiffError` naming the site, the field a user can change and what to do; a
Secret's content never appears in one.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any
from urllib.parse import quote

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.kube_manifests import API_VERSIONS

try:
    import urllib3
    from kubernetes import client as kube_client
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    HAS_KUBERNETES = True
except ImportError:  # reported when a kubernetes site is used
    HAS_KUBERNETES = False

FIELD_MANAGER = "skiff"
REQUEST_TIMEOUT = 20
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Deployment": "deployments",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}
# What the server writes into an object: never a difference between wanted and live.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
)
SERVER_ANNOTATIONS = (
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
)
# Which inventory variable a rejected field comes from (422 Invalid).
FIELD_HINTS = (
    ("nodePort", "skiff_link_endpoint.port (a port in the cluster's node port range)"),
    ("annotations", "skiff_kube_service_annotations"),
    ("image", "skiff_kube_image"),
    ("resources", "skiff_kube_resources"),
    ("replicas", "skiff_router_replicas"),
)


class ApiError(SkiffError):
    """A failed API call: a SkiffError that also says the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int, site: str, field: str):
        super().__init__(message, site=site, field=field)
        self.status = status


def normalized(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """`obj` without what the server writes (status, resourceVersion, managedFields...),
    and with a Secret's values replaced by a fingerprint: comparable and safe to show."""
    if obj is None:
        return None
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_METADATA}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in SERVER_ANNOTATIONS
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["metadata"] = meta
    if obj.get("kind") == "Secret" and obj.get("data"):
        out["data"] = {key: _fingerprint(value) for key, value in obj["data"].items()}
    return out


def _fingerprint(value: str) -> str:
    return f"<hidden, sha256 {hashlib.sha256(value.encode()).hexdigest()[:12]}>"


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Dotted paths (two levels below the top) where two objects differ."""
    if before is None or after is None:
        return []
    paths: list[str] = []
    for top in sorted(set(before) | set(after)):
        a, b = before.get(top), after.get(top)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            paths += [f"{top}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            paths.append(top)
    return paths


class KubeApi:
    """One namespace of one cluster, for one site."""

    def __init__(
        self,
        *,
        site: str,
        namespace: str,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ):
        self.site = site
        self.namespace = namespace
        self.context = context
        self.timeout = timeout
        self.kubeconfig = os.path.expanduser(
            kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
        )
        self._client: Any = None
        self.server = ""

    # -- connection ----------------------------------------------------------------------

    def _error(self, message: str, field: str, status: int = 0) -> ApiError:
        return ApiError(message, status=status, site=self.site, field=field)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        if not HAS_KUBERNETES:
            raise self._error(
                "platform kubernetes needs the kubernetes Python library on the controller "
                "(pip install kubernetes==35.0.0, see requirements in the README)",
                "platform",
            )
        if not os.path.isfile(self.kubeconfig):
            raise self._error(
                f"kubeconfig {self.kubeconfig} does not exist; set skiff_kube_kubeconfig to "
                "the kubeconfig of the cluster (or KUBECONFIG on the controller)",
                "kube.kubeconfig",
            )
        if self.context:
            try:
                contexts, _active = kube_config.list_kube_config_contexts(self.kubeconfig)
            except (ConfigException, OSError, ValueError) as exc:
                raise self._bad_kubeconfig(exc) from None
            names = [c.get("name") for c in contexts or []]
            if self.context not in names:
                raise self._error(
                    f"context {self.context!r} is not in kubeconfig {self.kubeconfig} (it has: "
                    f"{', '.join(names) or 'none'}); set skiff_kube_context to one of them",
                    "kube.context",
                )
        configuration = kube_client.Configuration()
        try:
            kube_config.load_kube_config(
                config_file=self.kubeconfig,
                context=self.context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError) as exc:
            raise self._bad_kubeconfig(exc) from None
        # Fail fast on an unreachable server instead of urllib3's three retries.
        configuration.retries = 1
        self.server = configuration.host
        return kube_client.ApiClient(configuration=configuration)

    def _bad_kubeconfig(self, exc: Exception) -> SkiffError:
        # The loader's messages name the missing key, never a credential.
        detail = str(exc).splitlines()[0][:200]
        return self._error(
            f"cannot use kubeconfig {self.kubeconfig} (context "
            f"{self.context or 'current'}): {detail}; fix the kubeconfig or set "
            "skiff_kube_kubeconfig and skiff_kube_context",
            "kube.context",
        )

    # -- requests --------------------------------------------------------------------------

    def path(self, kind: str, name: str | None = None) -> str:
        version = API_VERSIONS[kind]
        prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
        base = f"{prefix}/namespaces/{quote(self.namespace)}/{PLURALS[kind]}"
        return f"{base}/{quote(name)}" if name else base

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str = "",
        raw: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One API call; the parsed JSON answer (bytes with `raw`). Errors become SkiffErrors."""
        client = self.client
        try:
            response = client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={
                    "Content-Type": content_type,
                    "Accept": "application/json",
                    **(headers or {}),
                },
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise self.api_error(exc, what or f"{method} {path}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None
        data = response.data
        if raw:
            return data
        return json.loads(data) if data else {}

    def unreachable(self, exc: Exception) -> ApiError:
        reason = getattr(exc, "reason", None) or exc
        detail = str(reason).split(": ", 1)[-1][:160]
        return self._error(
            f"cannot reach the Kubernetes API at {self.server} (context "
            f"{self.context or 'current'} of {self.kubeconfig}): {detail}; check that the "
            "cluster is up and that skiff_kube_context names it. Nothing was changed by this task",
            "kube.context",
        )

    def api_error(self, exc: Any, what: str) -> ApiError:
        status = getattr(exc, "status", 0) or 0
        try:
            body = json.loads(exc.body or b"{}")
        except (ValueError, TypeError):
            body = {}
        message = str(body.get("message") or getattr(exc, "reason", "") or "no message")[:400]
        details = body.get("details") or {}
        if status == 0:
            return self.unreachable(exc)
        if status == 401:
            return self._error(
                f"the cluster refused the credentials of context {self.context or 'current'} "
                f"(401 Unauthorized) on {what}; renew the kubeconfig's credentials",
                "kube.kubeconfig",
                status,
            )
        if status == 403:
            return self._error(
                f"forbidden (403) on {what}: {message}; grant the user of context "
                f"{self.context or 'current'} the rights listed in the README (section "
                f"'Rights skiff needs') in namespace {self.namespace}",
                "kube.context",
                status,
            )
        if status == 404 and details.get("kind") == "namespaces":
            return self._error(
                f"namespace {self.namespace} does not exist (404 on {what}); create it or set "
                "skiff_kube_namespace to an existing one",
                "kube.namespace",
                status,
            )
        if status == 409:
            fields = [c.get("field") for c in details.get("causes") or [] if c.get("field")]
            return self._error(
                f"conflict (409) on {what}: {message}; another tool manages "
                f"{', '.join(fields) or 'this object'}: remove those fields from the other "
                "tool's manifests, or set skiff_kube_force_conflicts: true to let skiff take "
                "them over",
                "kube.force_conflicts",
                status,
            )
        if status == 422:
            causes = details.get("causes") or []
            fields = [str(c.get("field")) for c in causes if c.get("field")]
            hints = [hint for key, hint in FIELD_HINTS if any(key in f for f in fields)]
            return self._error(
                f"the cluster rejects {what} (422 Invalid): {message}; "
                + (f"fix {', '.join(hints)}" if hints else "fix the inventory value it names"),
                ", ".join(fields) or "kube",
                status,
            )
        return self._error(
            f"{what} failed ({status} {body.get('reason') or ''}): {message}", "kube", status
        )

    # -- objects ---------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(kind, name), what=f"reading {kind} {name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        answer = self.request(
            "GET",
            self.path(kind),
            query=[("labelSelector", selector)],
            what=f"listing {PLURALS[kind]}",
        )
        return list(answer.get("items") or [])

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply with skiff's field manager; `dry_run` changes nothing."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        query = [("fieldManager", FIELD_MANAGER)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request(
            "PATCH",
            self.path(kind, name),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
            what=f"{'checking' if dry_run else 'applying'} {kind} {name}",
        )

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH",
            self.path(kind, name),
            query=[("fieldManager", FIELD_MANAGER)],
            body=patch,
            content_type="application/merge-patch+json",
            what=f"patching {kind} {name}",
        )

    def delete(self, kind: str, name: str) -> bool:
        try:
            self.request("DELETE", self.path(kind, name), what=f"deleting {kind} {name}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def proxy_get(
        self, pod: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> bytes:
        """GET through the API server's pod proxy (no route to the pod network needed).
        ``headers`` go to the pod (the proxy keeps all but Authorization)."""
        return self.request(
            "GET",
            f"{self.path('Pod', pod)}:{port}/proxy/{path.lstrip('/')}",
            what=f"reading {path} of pod {pod}",
            raw=True,
            headers=headers,
        )

    # -- the namespace ------------------------------------------------------------------------

    def namespace_exists(self) -> bool | None:
        """True or False; None when this user may not read namespaces (namespaced rights)."""
        try:
            self.request(
                "GET", f"/api/v1/namespaces/{quote(self.namespace)}", what="reading the namespace"
            )
        except ApiError as exc:
            if exc.status == 403:
                return None
            if exc.status == 404:
                return False
            raise
        return True

    def create_namespace(self) -> None:
        try:
            self.request(
                "POST",
                "/api/v1/namespaces",
                query=[("fieldManager", FIELD_MANAGER)],
                body={"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": self.namespace}},
                what=f"creating namespace {self.namespace}",
            )  # fmt: skip
        except ApiError as exc:
            if exc.status == 403:
                raise self._error(
                    f"namespace {self.namespace} does not exist and the user of context "
                    f"{self.context or 'current'} may not create it; create it (kubectl create "
                    "namespace " + self.namespace + ") or set skiff_kube_namespace to an "
                    "existing one",
                    "kube.namespace",
                    403,
                ) from None
            raise
