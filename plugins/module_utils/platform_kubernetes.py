"""Platform `kubernetes`: a site is a namespace, its router a Deployment (private to skiff.fleet).

The modules of a kubernetes site run on the controller. `site.json` stays
there (in `base_dir`); everything else lives in the namespace: the router
config in the ConfigMap `skiff-router`, keys in the Secrets `skiff-ca`,
`skiff-server`, `skiff-links` and `skiff-tokens`, the workload as the agent's
ServiceAccount/Role/RoleBinding, the link Service `skiff-link`, one Service
per listener and the Deployment `skiff-router` (docs/design.md, "Kubernetes
sites"; the objects come from `kube_manifests`).

Where the objects go is one of two `Objects` backends:

- `ClusterObjects` (`apply: true`): the API, through `kube_api.KubeApi`:
  server-side apply with field manager `skiff`, every change dry-run first
  (so check mode and `--diff` show what the server would make of it, server
  defaults included and server-written fields ignored).
- `RenderedObjects` (`apply: false`, GitOps): one multi-document YAML file per
  site in `manifests_dir` (`<site>.yaml`, stable order, rewritten only when a
  byte changes) and one file per Secret in `<site>.secrets/` (0600). State
  (CA, keys, tokens) is read back from those files, so a re-run is a no-op.

A config or Secret change reaches running pods without a restart: after the
write, each router pod gets the annotation `skiff.io/refresh` (a sha256 of
the config and the mounted Secrets), which makes the kubelet sync the volumes
at once; the router reloads on the file change; the wait reads each pod's
`/v1/status` through the API's pod proxy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km
from ansible_collections.skiff.fleet.plugins.module_utils import pki, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.kube_api import (
    ApiError,
    KubeApi,
    changed_fields,
    normalized,
)
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    check_config_problems,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DIR_MODE,
    KEY_MODE,
    PUBLIC_MODE,
    CertPair,
    ConfigStore,
    IssuedToken,
    LinkCredentials,
    SecretStore,
    SiteMetadata,
    SitePaths,
    admin_token_text_problem,
    atomic_write,
    ensure_dir,
    new_admin_token,
)

ROLLOUT_TIMEOUT = 300.0
POLL_SECONDS = 1.0
WILDCARD_HOSTS = ("0.0.0.0", "::")
_SECRET_LINE = re.compile(r"PRIVATE KEY|skiff1\.[A-Za-z0-9_-]{16,}")
# Kinds a site's objects are found under when it is removed (Deployment first).
REMOVE_ORDER = ("Deployment", "Service", "ConfigMap", "Secret", "RoleBinding", "Role",
                "ServiceAccount")  # fmt: skip


# -- where objects go ----------------------------------------------------------------------


class Objects(ABC):
    """A namespace's objects: in a cluster, or in rendered files."""

    location = ""

    @abstractmethod
    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def preview(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The object as it would be once applied (None: cannot tell yet)."""

    @abstractmethod
    def put(self, objects: list[dict[str, Any]]) -> None:
        """Apply every object, or none when one is refused."""

    @abstractmethod
    def remove(self, kind: str, name: str) -> bool: ...

    @abstractmethod
    def find(self, kind: str, labels: dict[str, str]) -> list[dict[str, Any]]: ...

    def forget(self, kind: str, name: str) -> None:
        """Read this object afresh next time (its status changes on the server)."""
        return None


class ClusterObjects(Objects):
    def __init__(self, api: KubeApi, *, force: bool):
        self.api = api
        self.force = force
        self.location = f"namespace {api.namespace}"
        self._cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.namespace_state: bool | None = None  # None: not asked, or not allowed to ask
        self._namespace_checked = False

    def namespace_missing(self) -> bool:
        if not self._namespace_checked:
            self.namespace_state = self.api.namespace_exists()
            self._namespace_checked = True
        return self.namespace_state is False

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        key = (kind, name)
        if key not in self._cache:
            self._cache[key] = None if self.namespace_missing() else self.api.get(kind, name)
        return copy.deepcopy(self._cache[key])

    def preview(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if self.namespace_missing():
            return None
        return self.api.apply(obj, dry_run=True, force=self.force)

    def put(self, objects: list[dict[str, Any]]) -> None:
        if self.namespace_missing():
            self.api.create_namespace()
            self.namespace_state = True
        # Dry runs first: a refused object (403, 409, 422) leaves every object as it was.
        for obj in objects:
            self.api.apply(obj, dry_run=True, force=self.force)
        for obj in objects:
            self._cache[km.object_key(obj)] = self.api.apply(obj, force=self.force)

    def remove(self, kind: str, name: str) -> bool:
        self._cache.pop((kind, name), None)
        return self.api.delete(kind, name)

    def forget(self, kind: str, name: str) -> None:
        self._cache.pop((kind, name), None)

    def find(self, kind: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        if self.namespace_missing():
            return []
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.api.list(kind, selector)


class RenderedObjects(Objects):
    """`<dir>/<site>.yaml` and `<dir>/<site>.secrets/<name>.yaml` (0600)."""

    def __init__(self, directory: Path, site: str):
        self.directory = directory
        self.file = directory / f"{site}.yaml"
        self.secrets_dir = directory / f"{site}.secrets"
        self.location = str(self.file)
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        for path in [self.file, *sorted(self.secrets_dir.glob("*.yaml"))]:
            try:
                documents = km.from_yaml(path.read_bytes())
            except FileNotFoundError:
                continue
            except ValueError as exc:
                raise SkiffError(
                    f"{path} is not valid YAML ({exc.__class__.__name__}); fix or remove it",
                    field="kube.manifests_dir",
                ) from None
            for obj in documents:
                self._objects[km.object_key(obj)] = obj

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self._objects.get((kind, name)))

    def preview(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return obj

    def put(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            self._objects[km.object_key(obj)] = copy.deepcopy(obj)
        self._write()

    def remove(self, kind: str, name: str) -> bool:
        found = self._objects.pop((kind, name), None) is not None
        if found:
            self._write()
        return found

    def find(self, kind: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (k, _unused), obj in sorted(self._objects.items())
            if k == kind
            and all((obj["metadata"].get("labels") or {}).get(a) == b for a, b in labels.items())
        ]

    def files(self) -> list[Path]:
        return [p for p in [self.file, *sorted(self.secrets_dir.glob("*.yaml"))] if p.exists()]

    def _write(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True)
        plain = [o for o in self._objects.values() if o["kind"] != "Secret"]
        secrets = {
            o["metadata"]["name"]: o for o in self._objects.values() if o["kind"] == "Secret"
        }
        _write_if_changed(self.file, km.to_yaml(plain) if plain else None, PUBLIC_MODE)
        if secrets or self.secrets_dir.exists():
            ensure_dir(self.secrets_dir, DIR_MODE)
            for path in self.secrets_dir.glob("*.yaml"):
                if path.stem not in secrets:
                    path.unlink()
            for name, obj in secrets.items():
                _write_if_changed(self.secrets_dir / f"{name}.yaml", km.to_yaml([obj]), KEY_MODE)

    def remove_all(self) -> None:
        self._objects.clear()
        for path in self.files():
            path.unlink()
        if self.secrets_dir.is_dir():
            self.secrets_dir.rmdir()


def _write_if_changed(path: Path, data: bytes | None, mode: int) -> None:
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if data is None:
        if current is not None:
            path.unlink()
        return
    if current != data:
        atomic_write(path, data, mode)
    elif path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)


# -- the config and secret stores -------------------------------------------------------------


class KubeConfigStore(ConfigStore):
    """The router config in the ConfigMap; each listener's Service goes with it."""

    def __init__(self, platform: KubernetesPlatform):
        self.platform = platform
        self.location = f"ConfigMap {km.ROUTER} ({platform.objects.location})"

    def read(self) -> bytes | None:
        found = self.platform.objects.get("ConfigMap", km.ROUTER)
        text = ((found or {}).get("data") or {}).get(km.CONFIG_KEY)
        return None if text is None else text.encode()

    def write(self, data: bytes) -> None:
        spec, objects = self.platform.spec, self.platform.objects
        try:
            config = json.loads(data)
        except ValueError:
            config = {}
        services = km.listener_services(spec, config)
        objects.put([km.config_map(spec, data), *services])
        wanted = {s["metadata"]["name"] for s in services}
        listener_labels = {"skiff.io/site": spec.site, "app.kubernetes.io/component": "listener"}
        for stale in objects.find("Service", listener_labels):
            if stale["metadata"]["name"] not in wanted:
                objects.remove("Service", stale["metadata"]["name"])


class KubeSecretStore(SecretStore):
    def __init__(self, platform: KubernetesPlatform):
        self.platform = platform

    def _data(self, name: str) -> dict[str, bytes]:
        return km.secret_data(self.platform.objects.get("Secret", name))

    def _put(self, name: str, data: dict[str, bytes]) -> None:
        if data:
            self.platform.objects.put([km.secret(self.platform.spec, name, data)])
        else:
            self.platform.objects.remove("Secret", name)

    def ca(self) -> CertPair:
        data = self._data(km.SECRET_CA)
        return CertPair(data.get("ca.crt"), data.get("ca.key"))

    def put_ca(self, pair: CertPair) -> None:
        self._put(km.SECRET_CA, {"ca.crt": pair.cert_pem or b"", "ca.key": pair.key_pem or b""})

    def server(self) -> CertPair:
        data = self._data(km.SECRET_SERVER)
        return CertPair(data.get("tls.crt"), data.get("tls.key"))

    def put_server(self, pair: CertPair) -> None:
        # The router verifies dialing routers against the site CA: it is mounted beside.
        # The replicas' client certificate is issued with it (same CA, same lifetime).
        ca = self.ca()
        issuer = pki.Issued(ca.cert_pem or b"", ca.key_pem or b"")
        sibling = pki.issue_client_cert(issuer, self.platform.metadata.name)
        following = pki.issue_successor(issuer, sibling.cert_pem, valid_days=pki.CLIENT_VALID_DAYS)
        self._put(
            km.SECRET_SERVER,
            {
                "ca.crt": ca.cert_pem or b"",
                "tls.crt": pair.cert_pem or b"",
                "tls.key": pair.key_pem or b"",
                km.SIBLING_CERT: sibling.cert_pem,
                km.SIBLING_KEY: sibling.key_pem,
                km.SIBLING_NEXT_CERT: following,
            },
        )

    def admin_token_path(self) -> str | None:
        return km.ADMIN_TOKEN_PATH

    def admin_token(self) -> bytes | None:
        return self._data(km.SECRET_ADMIN).get(km.ADMIN_TOKEN_KEY)

    def admin_token_problem(self) -> str | None:
        token = (self.admin_token() or b"").strip()
        return "missing" if not token else admin_token_text_problem(token)

    def put_new_admin_token(self) -> None:
        self._put(km.SECRET_ADMIN, {km.ADMIN_TOKEN_KEY: new_admin_token()})

    def sibling_reason(self) -> str | None:
        """Why the replicas' certificate must be issued (a site made before it existed,
        or before it had a next certificate)."""
        data = self._data(km.SECRET_SERVER)
        ca_pem = self._data(km.SECRET_CA).get("ca.crt")
        cert = data.get(km.SIBLING_CERT)
        reason = pki.reissue_reason(cert, data.get(km.SIBLING_KEY), ca_cert_pem=ca_pem)
        following = data.get(km.SIBLING_NEXT_CERT)
        if reason is None and (
            not following or pki.successor_problem(cert or b"", following, ca_pem or b"")
        ):
            return "no next certificate to renew with"
        return reason

    def server_paths(self) -> dict[str, str]:
        return {
            "ca": f"{km.SERVER_DIR}/ca.crt",
            "cert": f"{km.SERVER_DIR}/tls.crt",
            "key": f"{km.SERVER_DIR}/tls.key",
        }

    def link(self, name: str) -> LinkCredentials:
        data = self._data(km.SECRET_LINKS)
        return LinkCredentials(
            data.get(f"{name}.ca.crt"),
            data.get(f"{name}.tls.crt"),
            data.get(f"{name}.tls.key"),
            data.get(f"{name}.tls.next.crt"),
        )

    def put_link(self, name: str, credentials: LinkCredentials | None) -> None:
        data = self._data(km.SECRET_LINKS)
        for suffix, value in (
            ("ca.crt", credentials.ca if credentials else None),
            ("tls.crt", credentials.cert if credentials else None),
            ("tls.key", credentials.key if credentials else None),
            ("tls.next.crt", credentials.next_cert if credentials else None),
        ):
            if value is None:
                data.pop(f"{name}.{suffix}", None)
            else:
                data[f"{name}.{suffix}"] = value
        self._put(km.SECRET_LINKS, data)

    def link_paths(self, name: str) -> dict[str, str]:
        return {
            "ca": f"{km.LINKS_DIR}/{name}.ca.crt",
            "cert": f"{km.LINKS_DIR}/{name}.tls.crt",
            "key": f"{km.LINKS_DIR}/{name}.tls.key",
            "next_cert": f"{km.LINKS_DIR}/{name}.tls.next.crt",
        }

    def token(self, name: str) -> IssuedToken:
        data = self._data(km.SECRET_TOKENS)
        return IssuedToken(
            data.get(f"{name}.tls.crt"), data.get(f"{name}.tls.key"), data.get(f"{name}.json")
        )

    def token_names(self) -> list[str]:
        suffix = ".tls.crt"
        return sorted(k[: -len(suffix)] for k in self._data(km.SECRET_TOKENS) if k.endswith(suffix))

    def put_token(self, name: str, token: IssuedToken | None) -> None:
        data = self._data(km.SECRET_TOKENS)
        for suffix, value in (
            ("tls.crt", token.cert if token else None),
            ("tls.key", token.key if token else None),
            ("json", token.info if token else None),
        ):
            if value is None:
                data.pop(f"{name}.{suffix}", None)
            else:
                data[f"{name}.{suffix}"] = value
        self._put(km.SECRET_TOKENS, data)


# -- the platform ---------------------------------------------------------------------------


class KubernetesPlatform(Platform):
    name = "kubernetes"
    config_wait_seconds = 60.0

    def __init__(
        self,
        paths: SitePaths,
        metadata: SiteMetadata,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(paths, metadata)
        self.clock, self.sleep = clock, sleep
        options = metadata.options
        self.namespace = str(options.get("namespace") or metadata.name)
        self.applies = bool(options.get("apply", True))
        self.rollout_timeout = float(options.get("rollout_timeout") or ROLLOUT_TIMEOUT)
        self._validate(options)
        self.api: KubeApi | None = None
        if self.applies:
            self.api = KubeApi(
                site=metadata.name,
                namespace=self.namespace,
                kubeconfig=options.get("kubeconfig") or None,
                context=options.get("context") or None,
            )
            self.objects: Objects = ClusterObjects(
                self.api, force=bool(options.get("force_conflicts"))
            )
        else:
            directory = options.get("manifests_dir")
            if not directory:
                raise SkiffError(
                    "is required when kube.apply is false: the directory the manifests are "
                    "written to (set skiff_kube_manifests_dir)",
                    field="kube.manifests_dir",
                )
            self.objects = RenderedObjects(Path(os.path.expanduser(str(directory))), metadata.name)
        self._config = KubeConfigStore(self)
        self._secrets = KubeSecretStore(self)
        self._changes: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]] = []
        self._stale_link_service = False
        self._stale_agent_config: tuple[str, str] | None = None  # (live, wanted) agent.json
        self._sibling_reason: str | None = None
        self._planned = False

    def _validate(self, options: dict[str, Any]) -> None:
        if not km.is_dns1123_label(self.namespace):
            raise SkiffError(
                f"{self.namespace!r} is not a valid namespace name (a DNS-1123 label: "
                "lower-case letters, digits and '-', at most 63 characters)",
                field="kube.namespace",
            )
        kind = options.get("link_service_type") or "clusterip"
        if kind not in km.LINK_SERVICE_TYPES:
            raise SkiffError(
                f"must be one of {', '.join(km.LINK_SERVICE_TYPES)}, got {kind!r}",
                field="kube.link_service_type",
            )
        replicas = options.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= vocabulary.MAX_KUBE_REPLICAS:
            raise SkiffError(
                f"must be an integer 1..{vocabulary.MAX_KUBE_REPLICAS}, got {replicas!r} (set "
                "skiff_router_replicas)",
                field="replicas",
            )

    # -- what the manifests depend on --------------------------------------------------------

    @property
    def spec(self) -> km.KubeSite:
        options = self.metadata.options
        endpoints = self.metadata.link_endpoints
        return km.KubeSite(
            site=self.metadata.name,
            namespace=self.namespace,
            image=str(options.get("image") or ""),
            replicas=int(options.get("replicas", 1)),
            workers=options.get("workers"),
            admin_port=int(options.get("admin_port", 9191)),
            link_access=bool(endpoints),
            link_service_type=str(options.get("link_service_type") or "clusterip"),
            link_port=int(endpoints[0]["port"]) if endpoints else km.LINK_PORT,
            service_annotations={
                str(k): str(v) for k, v in (options.get("service_annotations") or {}).items()
            },
            resources=dict(options.get("resources") or {}),
            selector_connectors=tuple(
                _selector_connector(item) for item in options.get("connectors") or []
            ),
        )

    def restart_for_workers(self, before: int | None, after: int | None) -> str | None:
        # The count is in the pod template: the Deployment rolls out new pods.
        return None

    # -- capabilities --------------------------------------------------------------------------

    @property
    def config(self) -> ConfigStore:
        return self._config

    @property
    def secrets(self) -> SecretStore:
        return self._secrets

    def router_sections(self, sections: dict[str, Any]) -> dict[str, Any]:
        # Probes and the pod proxy reach the admin port on the pod's address; the
        # link Service reaches the link port there.
        out = dict(sections, admin=dict(sections["admin"], host="0.0.0.0"))
        if sections.get("link_access") is not None:
            out["link_access"] = dict(
                sections["link_access"],
                host="0.0.0.0",
                port=km.LINK_PORT,
                sibling_cert=f"{km.SERVER_DIR}/{km.SIBLING_CERT}",
                sibling_next_cert=f"{km.SERVER_DIR}/{km.SIBLING_NEXT_CERT}",
            )
        out["overlay"] = km.OVERLAY_PATH
        return out

    def _live_link_service(self) -> dict[str, Any] | None:
        if not self.applies:
            return None
        return self.objects.get("Service", km.LINK_SERVICE)

    def link_endpoints(
        self, wanted: list[dict[str, Any]], *, wait: bool = False
    ) -> list[dict[str, Any]]:
        out = []
        kind = self.spec.link_service_type
        for endpoint in wanted:
            if endpoint.get("host"):
                out.append(endpoint)
            elif kind == "clusterip":
                out.append(dict(endpoint, host=f"{km.LINK_SERVICE}.{self.namespace}.svc"))
            elif kind == "nodeport":
                raise SkiffError(
                    "host is required with link service type nodeport: the address of a node "
                    "other sites reach (set skiff_link_endpoint.host)",
                    field="link_endpoint",
                )
            elif not self.applies:
                raise SkiffError(
                    "host is required in render-only mode with link service type "
                    "loadbalancer: the load balancer's address cannot be learnt without a "
                    "cluster (set skiff_link_endpoint.host)",
                    field="link_endpoint",
                )
            else:
                out.append(dict(endpoint, host=self._load_balancer_address(wait)))
        return out

    def _load_balancer_address(self, wait: bool) -> str | None:
        deadline = self.clock() + self.rollout_timeout
        while True:
            self.objects.forget("Service", km.LINK_SERVICE)
            address = km.load_balancer_address(self._live_link_service())
            if address or not wait:
                return address
            if self.clock() >= deadline:
                raise SkiffError(
                    f"the load balancer of Service {km.LINK_SERVICE} in namespace "
                    f"{self.namespace} got no address within {self.rollout_timeout:g} s; check "
                    "the cluster's load balancer controller and skiff_kube_service_annotations, "
                    "or set skiff_link_endpoint.host",
                    field="kube.link_service_type",
                )
            self.sleep(POLL_SECONDS)

    def server_hosts(self, endpoints: list[dict[str, Any]]) -> list[str]:
        address = None
        if self.spec.link_service_type == "loadbalancer":
            address = km.load_balancer_address(self._live_link_service())
        return km.server_hosts(
            self.spec, [str(e["host"]) for e in endpoints if e.get("host")], address
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, bool]]:
        actions: list[tuple[str, bool]] = []
        self._changes = []
        if isinstance(self.objects, ClusterObjects) and self.objects.namespace_missing():
            actions.append((f"create namespace {self.namespace}", False))
        for obj in km.workload_objects(self.spec):
            kind, name = km.object_key(obj)
            live = self.objects.get(kind, name)
            after = normalized(self.objects.preview(obj) or obj) or {}
            before = normalized(live)
            if live is None:
                actions.append((f"create {kind} {name}", False))
            elif before != after:
                fields = changed_fields(before, after)
                actions.append((f"update {kind} {name} ({', '.join(fields[:4])})", False))
            else:
                continue
            self._changes.append((obj, before, after))
        self._stale_link_service = not self.spec.link_access and (
            self.objects.get("Service", km.LINK_SERVICE) is not None
        )
        if self._stale_link_service:
            actions.append((f"delete Service {km.LINK_SERVICE}", False))
        self._sibling_reason = self._plan_sibling_certificate()
        if self._sibling_reason:
            actions.append(
                (f"issue the replicas' link certificate ({self._sibling_reason})", False)
            )
        self._stale_agent_config = self._plan_agent_config()
        if self._stale_agent_config:
            actions.append(
                (
                    f"update ConfigMap {km.ROUTER} ({km.AGENT_CONFIG_KEY}: selector connectors)",
                    False,
                )
            )
        self._planned = True
        return actions

    def _plan_sibling_certificate(self) -> str | None:
        """A site whose server Secret predates the replicas' certificate gets one; a
        new server certificate comes with a new one (put_server)."""
        if not self.spec.link_access or not self._secrets.server().cert_pem:
            return None
        return self._secrets.sibling_reason()

    def _plan_agent_config(self) -> tuple[str, str] | None:
        """(live, wanted) agent.json when the ConfigMap exists and its agent config
        differs; a new ConfigMap gets the wanted one with the router config."""
        wanted = km.agent_json(self.spec)
        live = self.objects.get("ConfigMap", km.ROUTER)
        current = (
            None if live is None else str((live.get("data") or {}).get(km.AGENT_CONFIG_KEY) or "")
        )
        if current == wanted:
            return None  # already in force: nothing to check or write (a cheap re-run)
        if self.spec.selector_connectors:
            self._check_agent_config(wanted.encode())
        return None if current is None else (current, wanted)

    def diff(self) -> dict[str, Any]:
        if not self._planned:
            self.plan()
        before = {
            f"{o['kind']}/{o['metadata']['name']}": b or {} for o, b, _unused in self._changes
        }
        after = {f"{o['kind']}/{o['metadata']['name']}": a for o, _unused, a in self._changes}
        if self._stale_link_service:
            before[f"Service/{km.LINK_SERVICE}"] = {"exists": True}
            after[f"Service/{km.LINK_SERVICE}"] = {}
        if self._stale_agent_config:
            live, wanted = (json.loads(text or "{}") for text in self._stale_agent_config)
            before[f"ConfigMap/{km.ROUTER}"] = {km.AGENT_CONFIG_KEY: live}
            after[f"ConfigMap/{km.ROUTER}"] = {km.AGENT_CONFIG_KEY: wanted}
        return {"before": before, "after": after} if before or after else {}

    def install(self) -> None:
        if not self._planned:
            self.plan()
        changes = self._changes
        existed = any(o["kind"] == "Deployment" and b is not None for o, b, _unused in changes)
        self.objects.put([obj for obj, _unused, _unused in changes])
        if self._stale_link_service:
            self.objects.remove("Service", km.LINK_SERVICE)
        if self._sibling_reason and self._secrets.sibling_reason():
            self._secrets.put_server(self._secrets.server())
        if self._stale_agent_config:
            # No rollout: the agent takes the connectors of the changed file.
            self.objects.put([km.config_map(self.spec, self.config.read() or b"")])
            self.reload()
        self._planned = False
        if self.applies and existed:
            # A new image or new resources roll the Deployment: wait until it is done.
            self.wait_rollout()

    def is_running(self) -> bool:
        if not self.applies:
            return False
        self.objects.forget("Deployment", km.ROUTER)
        deployment = self.objects.get("Deployment", km.ROUTER)
        return bool(deployment and (deployment.get("status") or {}).get("readyReplicas"))

    def start(self) -> None:
        if self.applies:
            self.wait_rollout()

    def stop(self, timeout: float = 10.0) -> bool:
        # Nothing is scaled down or deleted on a failure: the Deployment stays for
        # `kubectl describe`; removing the site (state absent) deletes it.
        return False

    def _owned(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for kind in REMOVE_ORDER:
            found += self.objects.find(
                kind, {"app.kubernetes.io/managed-by": "skiff", "skiff.io/site": self.metadata.name}
            )
        return found

    def uninstall(self) -> list[str]:
        if isinstance(self.objects, RenderedObjects):
            return [f"remove {path}" for path in self.objects.files()]
        return [f"delete {o['kind']} {o['metadata']['name']}" for o in self._owned()]

    def remove_files(self) -> None:
        if isinstance(self.objects, RenderedObjects):
            self.objects.remove_all()
            return
        for obj in self._owned():
            self.objects.remove(obj["kind"], obj["metadata"]["name"])

    # -- pods: rollout, status, reload ------------------------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        """The router pods that run (not terminating)."""
        if not self.applies:
            return []
        found = self.objects.find("Pod", km.selector_labels(self.spec))
        return [
            pod
            for pod in found
            if (pod.get("status") or {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        ]

    def wait_rollout(self) -> None:
        if self.api is None:  # render-only: nothing rolls out
            return
        deadline = self.clock() + self.rollout_timeout
        while True:
            deployment = self.api.get("Deployment", km.ROUTER) or {}
            if _rolled_out(deployment):
                return
            if self.clock() >= deadline:
                raise SkiffError(self._not_rolled_out(deployment), field="kube.rollout_timeout")
            self.sleep(POLL_SECONDS)

    def _not_rolled_out(self, deployment: dict[str, Any]) -> str:
        wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        problems = []
        for pod in self.objects.find("Pod", km.selector_labels(self.spec)):
            name = pod["metadata"]["name"]
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                if container.get("ready"):
                    continue
                state = container.get("state") or {}
                waiting, terminated = state.get("waiting"), state.get("terminated")
                if waiting:
                    what = f"waiting: {waiting.get('reason')}"
                    if waiting.get("message"):
                        what += f" ({str(waiting['message'])[:160]})"
                elif terminated:
                    what = f"terminated: {terminated.get('reason')} (exit {terminated.get('exitCode')})"
                else:
                    what = "running but not ready (readiness /readyz fails)"
                problems.append(f"pod {name}: container {container.get('name')} {what}")
            if not (pod.get("status") or {}).get("containerStatuses"):
                phase = (pod.get("status") or {}).get("phase") or "Pending"
                problems.append(f"pod {name}: {phase} (not scheduled or not started)")
        seen = "; ".join(problems) or "no pod of it exists"
        return (
            f"Deployment {km.ROUTER} in namespace {self.namespace}: {ready} of {wanted} replicas "
            f"ready after {self.rollout_timeout:g} s; {seen}. Check that the cluster can pull "
            f"skiff_kube_image ({self.spec.image}), kubectl describe pods -n {self.namespace} "
            f"-l app.kubernetes.io/instance={self.metadata.name}, and {self.log_location()}"
        )

    def _admin(self) -> dict[str, str]:
        """The router's admin token, in the header the API server's pod proxy passes on."""
        token = (self._secrets.admin_token() or b"").decode().strip()
        return {km.ADMIN_TOKEN_HEADER: token} if token else {}

    def statuses(self) -> list[dict[str, Any] | None]:
        if self.api is None:
            return []
        found: list[dict[str, Any] | None] = []
        for pod in self.pods():
            try:
                raw = self.api.proxy_get(
                    pod["metadata"]["name"], self.spec.admin_port, "v1/status", self._admin()
                )
                found.append(json.loads(raw))
            except ApiError as exc:
                if exc.status == 0:
                    raise
                found.append(None)  # the pod does not answer (yet)
            except ValueError:
                found.append(None)
        return found

    def refresh_value(self) -> str:
        mounted = {
            name: km.secret_data(self.objects.get("Secret", name)) for name in km.MOUNTED_SECRETS
        }
        files = (self.objects.get("ConfigMap", km.ROUTER) or {}).get("data") or {}
        mounted[f"configmap/{km.ROUTER}"] = {k: str(v).encode() for k, v in files.items()}
        return km.refresh_value(mounted)

    def reload(self) -> None:
        if self.api is None:
            return
        patch = {"metadata": {"annotations": {km.REFRESH_ANNOTATION: self.refresh_value()}}}
        for pod in self.pods():
            self.api.merge_patch("Pod", pod["metadata"]["name"], patch)

    # -- messages ---------------------------------------------------------------------------

    def not_running_note(self) -> str:
        if not self.applies:
            return (
                f"render-only: written to {self.objects.location}; the change takes effect "
                "when the manifests are applied"
            )
        return (
            f"the router does not run in namespace {self.namespace} yet: the change takes "
            "effect when skiff.fleet.site starts it"
        )

    def log_location(self) -> str:
        return f"kubectl logs -n {self.namespace} deployment/{km.ROUTER} -c router"

    def log_tail(self, lines: int = 20) -> list[str]:
        if self.api is None:
            return []
        for pod in self.pods()[:1]:
            try:
                raw = self.api.request(
                    "GET",
                    f"{self.api.path('Pod', pod['metadata']['name'])}/log",
                    query=[("container", "router"), ("tailLines", str(lines * 2))],
                    raw=True,
                )
            except ApiError:
                return []
            text = raw.decode(errors="replace")
            return [line for line in text.splitlines() if not _SECRET_LINE.search(line)][-lines:]
        return []

    def not_ready_hint(self) -> str:
        return (
            f"Check {self.log_location()} and kubectl describe pods -n {self.namespace} "
            f"-l app.kubernetes.io/instance={self.metadata.name}"
        )

    # -- config check -------------------------------------------------------------------------

    def check_config(self, data: bytes) -> list[str]:
        return self._router_check(["check-config"], "router.json", data) + self.kube_problems(
            json.loads(data)
        )

    @staticmethod
    def _with_stand_in_token(data: bytes, folder: Path) -> bytes:
        """The admin token file is the pod's (the mounted Secret, which this module
        keeps usable): the check on the controller reads a stand-in of the same form."""
        config = json.loads(data)
        admin = config.get("admin") if isinstance(config, dict) else None
        if not isinstance(admin, dict) or not admin.get("token_file"):
            return data
        stand_in = folder / "admin-token"
        stand_in.write_bytes(new_admin_token())
        stand_in.chmod(0o600)
        config["admin"] = dict(admin, token_file=str(stand_in))
        return json.dumps(config).encode()

    def _check_agent_config(self, data: bytes) -> None:
        problems = self._router_check(["kube-agent", "--check", "--config"], "agent.json", data)
        if problems:
            names = [str(c["name"]) for c in self.spec.selector_connectors]
            raise SkiffError(
                f"site {self.metadata.name}: the agent refuses its connectors by pod selector "
                f"({'; '.join(_name_connectors(problems, names))}); fix those entries of "
                "skiff_connectors",
                field="kube.connectors",
            )

    def kube_problems(self, config: dict[str, Any]) -> list[str]:
        """What the router accepts but a pod behind Services cannot serve."""
        spec = self.spec
        problems = []
        for index, listener in enumerate(config.get("listeners") or []):
            where = f"listeners[{index}]"
            name, port = str(listener.get("name")), listener.get("port")
            if not km.is_dns1123_label(name) or name == km.LINK_SERVICE:
                problems.append(
                    f"{where}.name: {name!r} names the listener's Service, so it must be a "
                    "DNS-1123 label (lower-case letters, digits and '-', at most 63) other "
                    f"than {km.LINK_SERVICE}"
                )
            if listener.get("host") not in WILDCARD_HOSTS:
                problems.append(
                    f"{where}.host: {listener.get('host')} is not reachable through the "
                    "listener's Service; use 0.0.0.0"
                )
            clash = (
                f"{port} is the admin port of the pod"
                if port == spec.admin_port
                else vocabulary.kube_port_problem(port, spec.link_access)
            )
            if clash:
                problems.append(f"{where}.port: {clash}")
        return problems

    def _router_check(self, command: list[str], name: str, data: bytes) -> list[str]:
        """The router's own check of a config file (`command FILE`), run on the controller."""
        python = self.metadata.router_python or "python3"
        env = dict(os.environ)
        router_path = self.metadata.options.get("router_path")
        if router_path:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(router_path), env.get("PYTHONPATH", "")) if p
            )
        with tempfile.TemporaryDirectory(prefix="skiff-check-") as folder:
            path = Path(folder) / name
            if name == "router.json":
                data = self._with_stand_in_token(data, Path(folder))
            path.write_bytes(data)
            try:
                done = subprocess.run(
                    [python, "-m", "skiff_router", *command, str(path)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=env,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SkiffError(
                    f"cannot run {python} -m skiff_router {command[0]} on the controller "
                    f"({exc}); set router_python to a Python that has skiff_router",
                    field="router_python",
                ) from None
        problems = check_config_problems(path, done.returncode, done.stdout)
        if problems is None:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SkiffError(
                f"{python} -m skiff_router {command[0]} failed on the controller (exit "
                f"{done.returncode}: {detail}); set router_python to a Python that has "
                "skiff_router (the role points it at the bundled router)",
                field="router_python",
            )
        return problems


def _selector_connector(item: dict[str, Any]) -> dict[str, Any]:
    """A connector by pod selector as the agent's config has it (`routing_key`
    defaults to the name)."""
    out = {k: v for k, v in item.items() if v is not None}
    out.setdefault("routing_key", out.get("name"))
    return out


def _name_connectors(problems: list[str], names: list[str]) -> list[str]:
    """`connectors[1].port: ...` -> `connector 'db' (connectors[1]).port: ...`."""

    def named(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"connector {names[index]!r}" if index < len(names) else match.group(0)

    return [re.sub(r"^connectors\[(\d+)\]", named, line) for line in problems]


def _rolled_out(deployment: dict[str, Any]) -> bool:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return (
        bool(deployment)
        and int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("readyReplicas") or 0) == wanted
        and int(status.get("availableReplicas") or 0) == wanted
        and int(status.get("replicas") or 0) == wanted
    )
