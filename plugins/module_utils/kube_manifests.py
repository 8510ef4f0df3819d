"""The Kubernetes objects of one site, as plain dicts (private to skiff.fleet; not a public API).

Pure functions: a `KubeSite` (and the router config, the secret data) in,
manifests out. No client, no I/O, so the schema tests validate exactly what
the platform applies or renders. Names, volumes, labels and the refresh
annotation are the contract in docs/design.md ("Kubernetes sites").
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError

try:
    import yaml

    HAS_YAML = True
except ImportError:  # reported when a kubernetes site's manifests are written or read
    HAS_YAML = False

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary

ROUTER = "skiff-router"  # Deployment and ConfigMap
AGENT = "skiff-agent"  # ServiceAccount, Role, RoleBinding
LINK_SERVICE = "skiff-link"
SECRET_CA = "skiff-ca"
SECRET_SERVER = "skiff-server"
SECRET_LINKS = "skiff-links"
SECRET_TOKENS = "skiff-tokens"
SECRET_ADMIN = "skiff-admin"  # the router's admin token (key ADMIN_TOKEN_KEY)
SECRETS = (SECRET_CA, SECRET_SERVER, SECRET_LINKS, SECRET_TOKENS, SECRET_ADMIN)
# Mounted in the pod, hence what a refresh must make the kubelet sync.
MOUNTED_SECRETS = (SECRET_SERVER, SECRET_LINKS, SECRET_ADMIN)
ADMIN_TOKEN_KEY = "token"
# The pod proxy of the API server drops Authorization: the router takes this header too.
ADMIN_TOKEN_HEADER = "X-Skiff-Admin-Token"

CONFIG_KEY = "router.json"
AGENT_CONFIG_KEY = "agent.json"
CONFIG_DIR = "/etc/skiff/config"
SERVER_DIR = "/etc/skiff/server"
LINKS_DIR = "/etc/skiff/links"
ADMIN_DIR = "/etc/skiff/admin"
ADMIN_TOKEN_PATH = f"{ADMIN_DIR}/{ADMIN_TOKEN_KEY}"
RUN_DIR = "/run/skiff"
OVERLAY_PATH = f"{RUN_DIR}/overlay.json"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

LINK_PORT = vocabulary.KUBE_LINK_PORT
AGENT_HEALTH_PORT = vocabulary.KUBE_AGENT_HEALTH_PORT
PROXY_PORTS = vocabulary.KUBE_PROXY_PORTS
RUN_AS = 10001  # the image's USER
REFRESH_ANNOTATION = "skiff.io/refresh"
# The router's worker count, in the pod template: a new count rolls out new pods.
WORKERS_ANNOTATION = "skiff.io/workers"
# Each router pod is a router of its own (`<site>.<pod name>`), its agent knows its
# pod: both from the downward API (the names the router and the agent read).
ROUTER_ID_SUFFIX_ENV = "SKIFF_ROUTER_ID_SUFFIX"
POD_NAME_ENV = "SKIFF_POD_NAME"
# The client certificate the replicas of a site link to each other with (skiff-server).
SIBLING_CERT, SIBLING_KEY = "sibling.crt", "sibling.key"
# The replicas' next certificate (same key): their links renew themselves with it.
SIBLING_NEXT_CERT = "sibling.next.crt"
AGENT_OWNED_LABEL = "skiff.io/owned-by-agent"

LINK_SERVICE_TYPES = {
    "clusterip": "ClusterIP",
    "nodeport": "NodePort",
    "loadbalancer": "LoadBalancer",
}
DEFAULT_RESOURCES = {
    "router": {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    },
    "agent": {
        "requests": {"cpu": "20m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    },
}
# Kinds in the order a site's file lists them (and an API client applies them).
KIND_ORDER = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "ConfigMap",
    "Service",
    "Deployment",
)
API_VERSIONS = {
    "ServiceAccount": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Deployment": "apps/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class KubeSite:
    """Everything the manifests of one site depend on besides config and secrets."""

    site: str
    namespace: str
    image: str
    replicas: int = 1
    # Router worker processes per pod (None: one per CPU of the pod's limit). In the
    # pod template, so a new count rolls out new pods.
    workers: int | None = None
    admin_port: int = 9191
    link_access: bool = False
    link_service_type: str = "clusterip"
    # The port other sites dial: the Service port, or the node port with nodeport.
    link_port: int = LINK_PORT
    service_annotations: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    # Connectors whose targets are pods (`selector`), expanded by the agent.
    selector_connectors: tuple[dict[str, Any], ...] = ()

    def container_resources(self, container: str) -> dict[str, Any]:
        wanted = dict(DEFAULT_RESOURCES[container])
        for part in ("requests", "limits"):
            given = (self.resources.get(container) or {}).get(part)
            if given:
                wanted[part] = dict(wanted[part], **{k: str(v) for k, v in given.items()})
        return wanted


def is_dns1123_label(name: str) -> bool:
    return bool(DNS1123_LABEL.match(name))


def labels(spec: KubeSite, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "skiff",
        "app.kubernetes.io/part-of": "skiff",
        "app.kubernetes.io/component": component,
        "skiff.io/site": spec.site,
    }


def selector_labels(spec: KubeSite) -> dict[str, str]:
    """The Deployment's selector; it never changes (a Deployment's selector is immutable)."""
    return {"app.kubernetes.io/name": ROUTER, "app.kubernetes.io/instance": spec.site}


def site_selector(spec: KubeSite) -> str:
    """Label selector of everything skiff made for this site."""
    return f"app.kubernetes.io/managed-by=skiff,skiff.io/site={spec.site}"


def _meta(spec: KubeSite, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": spec.namespace, "labels": labels(spec, component)}
    meta.update(extra)
    return meta


def _object(kind: str, metadata: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": metadata, **body}


# -- RBAC of the in-pod agent ------------------------------------------------------------


def service_account(spec: KubeSite) -> dict[str, Any]:
    return _object(
        "ServiceAccount", _meta(spec, AGENT, "agent"), automountServiceAccountToken=False
    )


def role(spec: KubeSite) -> dict[str, Any]:
    """Least privilege, namespaced: follow pods (selector connectors), manage Services
    (proxies; the agent touches only the ones it labelled as its own). The agent
    never reads one object (`get`) or replaces one (`update`): lists and watches
    give it every object, merge patches and deletes carry preconditions."""
    return _object(
        "Role",
        _meta(spec, AGENT, "agent"),
        rules=[
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            {
                "apiGroups": [""],
                "resources": ["services"],
                "verbs": ["list", "watch", "create", "patch", "delete"],
            },
        ],
    )


def role_binding(spec: KubeSite) -> dict[str, Any]:
    return _object(
        "RoleBinding",
        _meta(spec, AGENT, "agent"),
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
        subjects=[{"kind": "ServiceAccount", "name": AGENT, "namespace": spec.namespace}],
    )


# -- config and secrets -------------------------------------------------------------------


def agent_config(spec: KubeSite) -> dict[str, Any]:
    """The agent's config file (`agent.json` in the ConfigMap)."""
    config: dict[str, Any] = {
        "site": spec.site,
        "namespace": spec.namespace,
        "overlay": OVERLAY_PATH,
        "router_admin": f"http://127.0.0.1:{spec.admin_port}",
        "router_admin_token_file": ADMIN_TOKEN_PATH,
        "health": {"host": "0.0.0.0", "port": AGENT_HEALTH_PORT},
    }
    if spec.selector_connectors:
        config["connectors"] = [dict(c) for c in spec.selector_connectors]
    if spec.link_access:
        # Other sites' links land on one pod each (through skiff-link): the router
        # pods link to each other so that every one of them reaches the network.
        config["siblings"] = {
            "port": LINK_PORT,
            "server_name": f"{LINK_SERVICE}.{spec.namespace}.svc",
            "ca": f"{SERVER_DIR}/ca.crt",
            "cert": f"{SERVER_DIR}/{SIBLING_CERT}",
            "key": f"{SERVER_DIR}/{SIBLING_KEY}",
            "next_cert": f"{SERVER_DIR}/{SIBLING_NEXT_CERT}",
        }
    return config


def agent_json(spec: KubeSite) -> str:
    return json.dumps(agent_config(spec), indent=2) + "\n"


def config_map(spec: KubeSite, router_json: bytes) -> dict[str, Any]:
    return _object(
        "ConfigMap",
        _meta(spec, ROUTER, "router"),
        data={CONFIG_KEY: router_json.decode(), AGENT_CONFIG_KEY: agent_json(spec)},
    )


def secret(spec: KubeSite, name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return _object(
        "Secret",
        _meta(spec, name, "router"),
        type="Opaque",
        data={key: base64.b64encode(data[key]).decode() for key in sorted(data)},
    )


def secret_data(obj: dict[str, Any] | None) -> dict[str, bytes]:
    """A Secret's data decoded (what `secret()` encoded)."""
    encoded = (obj or {}).get("data") or {}
    return {key: base64.b64decode(value) for key, value in encoded.items()}


def refresh_value(mounted: dict[str, dict[str, bytes]]) -> str:
    """The refresh annotation: changes whenever a file of the mounted ConfigMap
    (router and agent config) or Secrets does."""
    digest = hashlib.sha256()
    for name in sorted(mounted):
        for key in sorted(mounted[name]):
            digest.update(f"\0{name}/{key}\0".encode())
            digest.update(mounted[name][key])
    return digest.hexdigest()


# -- the router Deployment -------------------------------------------------------------------

_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _router_container(spec: KubeSite) -> dict[str, Any]:
    ports = [{"name": "admin", "containerPort": spec.admin_port, "protocol": "TCP"}]
    if spec.link_access:
        ports.insert(0, {"name": "link", "containerPort": LINK_PORT, "protocol": "TCP"})
    return {
        "name": "router",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [_pod_name(ROUTER_ID_SUFFIX_ENV)],
        "ports": ports,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "resources": spec.container_resources("router"),
        "securityContext": dict(_CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "server", "mountPath": SERVER_DIR, "readOnly": True},
            {"name": "links", "mountPath": LINKS_DIR, "readOnly": True},
            {"name": "admin-token", "mountPath": ADMIN_DIR, "readOnly": True},
            {"name": "run", "mountPath": RUN_DIR},
        ],
    }


def _pod_name(variable: str) -> dict[str, Any]:
    return {
        "name": variable,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
    }


def _agent_container(spec: KubeSite) -> dict[str, Any]:
    # No readiness probe: the agent must never make the router's pod unready.
    return {
        "name": "agent",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": ["kube-agent", "--config", f"{CONFIG_DIR}/{AGENT_CONFIG_KEY}"],
        "env": [_pod_name(POD_NAME_ENV)],
        "ports": [{"name": "agent-health", "containerPort": AGENT_HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "agent-health"},
            "periodSeconds": 20,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": spec.container_resources("agent"),
        "securityContext": dict(_CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "admin-token", "mountPath": ADMIN_DIR, "readOnly": True},
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "kube-api-access", "mountPath": SA_TOKEN_DIR, "readOnly": True},
        ],
    }


def _volumes() -> list[dict[str, Any]]:
    # Secrets are optional: a site without link access has no server Secret, one
    # without links no links Secret, and the pod template stays the same either way.
    return [
        {"name": "config", "configMap": {"name": ROUTER}},
        {"name": "server", "secret": {"secretName": SECRET_SERVER, "defaultMode": 0o440,
                                      "optional": True}},
        {"name": "links", "secret": {"secretName": SECRET_LINKS, "defaultMode": 0o440,
                                     "optional": True}},
        # Group-readable for the pod's fsGroup (the router's own group, which the
        # router's token check allows); without it the admin API refuses everything.
        {"name": "admin-token", "secret": {"secretName": SECRET_ADMIN, "defaultMode": 0o440,
                                           "optional": True}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {
            # The agent's API credential, mounted in the agent container only.
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        },
    ]  # fmt: skip


def deployment(spec: KubeSite) -> dict[str, Any]:
    pod_labels = dict(labels(spec, "router"), **selector_labels(spec))
    pod_spec: dict[str, Any] = {
        "serviceAccountName": AGENT,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 30,
        "containers": [_router_container(spec), _agent_container(spec)],
        "volumes": _volumes(),
    }
    if spec.replicas > 1:
        pod_spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector_labels(spec)},
                        },
                    }
                ]
            }
        }
    return _object(
        "Deployment",
        _meta(spec, ROUTER, "router", labels=dict(labels(spec, "router"), **selector_labels(spec))),
        spec={
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(spec)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": vocabulary.KUBE_ROLLOUT_SURGE},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "kubectl.kubernetes.io/default-container": "router",
                        **({WORKERS_ANNOTATION: str(spec.workers)} if spec.workers else {}),
                    },
                },
                "spec": pod_spec,
            },
        },
    )


# -- Services -----------------------------------------------------------------------------


def link_service(spec: KubeSite) -> dict[str, Any]:
    kind = LINK_SERVICE_TYPES[spec.link_service_type]
    port: dict[str, Any] = {"name": "link", "protocol": "TCP", "targetPort": "link"}
    if kind == "NodePort":
        port.update(port=LINK_PORT, nodePort=spec.link_port)
    else:
        port["port"] = spec.link_port
    extra = {"annotations": dict(spec.service_annotations)} if spec.service_annotations else {}
    return _object(
        "Service",
        _meta(spec, LINK_SERVICE, "link", **extra),
        spec={"type": kind, "selector": selector_labels(spec), "ports": [port]},
    )


def listener_service(spec: KubeSite, listener: dict[str, Any]) -> dict[str, Any]:
    """Pods of the namespace reach a listener's remote service by the listener's name."""
    meta = _meta(spec, listener["name"], "listener")
    meta["labels"]["skiff.io/listener"] = listener["name"]
    return _object(
        "Service",
        meta,
        spec={
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [
                {
                    "name": "tcp",
                    "protocol": "TCP",
                    "port": int(listener["port"]),
                    "targetPort": int(listener["port"]),
                }
            ],
        },
    )


def listener_services(spec: KubeSite, config: dict[str, Any]) -> list[dict[str, Any]]:
    listeners = sorted(config.get("listeners") or [], key=lambda entry: entry["name"])
    return [listener_service(spec, entry) for entry in listeners]


def in_cluster_names(spec: KubeSite) -> list[str]:
    ns = spec.namespace
    return [
        LINK_SERVICE,
        f"{LINK_SERVICE}.{ns}",
        f"{LINK_SERVICE}.{ns}.svc",
        f"{LINK_SERVICE}.{ns}.svc.cluster.local",
    ]


def server_hosts(spec: KubeSite, endpoint_hosts: list[str], lb_address: str | None) -> list[str]:
    """The server certificate's SANs: what other sites dial, the in-cluster names, the LB."""
    hosts = [h for h in endpoint_hosts if h] + in_cluster_names(spec)
    if lb_address:
        hosts.append(lb_address)
    return list(dict.fromkeys(hosts))


def load_balancer_address(service: dict[str, Any] | None) -> str | None:
    ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")
    for entry in ingress or []:
        address = entry.get("ip") or entry.get("hostname")
        if address:
            return address
    return None


# -- a whole site ---------------------------------------------------------------------------


def workload_objects(spec: KubeSite) -> list[dict[str, Any]]:
    """What the site runs besides config and secrets: RBAC, the link Service, the Deployment."""
    objects = [service_account(spec), role(spec), role_binding(spec)]
    if spec.link_access:
        objects.append(link_service(spec))
    objects.append(deployment(spec))
    return objects


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def sort_key(obj: dict[str, Any]) -> tuple[int, int, str]:
    """Stable order: by kind, the link Service before listener Services, then by name."""
    kind, name = object_key(obj)
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, 0 if name == LINK_SERVICE else 1, name


def _need_yaml() -> None:
    if not HAS_YAML:
        raise SkiffError(
            "platform kubernetes needs PyYAML where the module runs (python3-yaml, or "
            "pip install PyYAML)",
            field="platform",
        )


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Multi-line strings (the router config) as literal blocks: readable in a Git diff.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


@cache
def _dumper() -> type[yaml.SafeDumper]:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _str)
    return Dumper


def to_yaml(objects: list[dict[str, Any]]) -> bytes:
    """One multi-document YAML stream, objects in `sort_key` order: same objects, same bytes."""
    _need_yaml()
    ordered = sorted(objects, key=sort_key)
    return "".join(
        "---\n" + yaml.dump(obj, Dumper=_dumper(), sort_keys=False, default_flow_style=False,
                            width=1000)
        for obj in ordered
    ).encode()  # fmt: skip


def from_yaml(data: bytes) -> list[dict[str, Any]]:
    _need_yaml()
    return [doc for doc in yaml.safe_load_all(data) if isinstance(doc, dict)]
