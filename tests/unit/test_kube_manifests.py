"""Schema tier: every manifest of a kubernetes site, for every option, checked strictly.

Strict JSON schemas of three Kubernetes minor versions (kubernetes-validate;
strict = no unknown fields), then what the schemas do not say: DNS-1123
names, port names of at most 15 characters, a selector that matches its pod
template, the Pod Security "restricted" profile, and the contract of
docs/design.md (names, mounts, the agent's credential, the refresh annotation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km
from skiff_router.kube import config as agent_config

VERSIONS = ("1.30.0", "1.33.0", "1.37.0")

# kubernetes-validate reads its 1 MB definitions file on every call: read each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

BASE = km.KubeSite(site="east", namespace="east", image="registry.example.com/skiff-router:0.1.0")
OPTIONS = {
    "dial-only": BASE,
    "clusterip": dataclasses.replace(BASE, link_access=True),
    "nodeport": dataclasses.replace(
        BASE, link_access=True, link_service_type="nodeport", link_port=31671
    ),
    "loadbalancer": dataclasses.replace(
        BASE,
        link_access=True,
        link_service_type="loadbalancer",
        link_port=443,
        service_annotations={
            "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
            "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
        },
    ),
    "other-namespace": dataclasses.replace(BASE, namespace="team-a-skiff", admin_port=9300),
    "replicas": dataclasses.replace(BASE, link_access=True, replicas=2),
    "resources": dataclasses.replace(
        BASE,
        resources={"router": {"limits": {"memory": "1Gi", "cpu": 4}}, "agent": {}},
        image_pull_policy="Always",
    ),
    "selector-connectors": dataclasses.replace(
        BASE,
        selector_connectors=(
            {
                "name": "web",
                "routing_key": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "port": 8080,
            },
        ),
    ),
}
CONFIG = {
    "site": "east",
    "admin": {"host": "0.0.0.0", "port": 9191},
    "listeners": [
        {"name": "backend", "routing_key": "backend", "host": "0.0.0.0", "port": 8080},
        {"name": "db-primary", "routing_key": "db", "host": "0.0.0.0", "port": 5432},
    ],
}


def site_manifests(spec: km.KubeSite) -> list[dict[str, Any]]:
    router_json = (json.dumps(CONFIG, indent=2) + "\n").encode()
    secrets = [
        km.secret(spec, km.SECRET_CA, {"ca.crt": b"PEM", "ca.key": b"KEY"}),
        km.secret(spec, km.SECRET_SERVER, {"ca.crt": b"C", "tls.crt": b"T", "tls.key": b"K"}),
        km.secret(spec, km.SECRET_LINKS, {"west.ca.crt": b"C", "west.tls.crt": b"T",
                                          "west.tls.key": b"K"}),
        km.secret(spec, km.SECRET_TOKENS, {"west.tls.crt": b"T", "west.tls.key": b"K",
                                           "west.json": b"{}"}),
    ]  # fmt: skip
    return [
        *km.workload_objects(spec),
        km.config_map(spec, router_json),
        *km.listener_services(spec, CONFIG),
        *secrets,
    ]


ALL = [
    pytest.param(spec, obj, id=f"{option}-{obj['kind']}-{obj['metadata']['name']}")
    for option, spec in OPTIONS.items()
    for obj in site_manifests(spec)
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("spec", "obj"), ALL)
def test_strict_schema(spec, obj, version):
    # Through the rendered bytes: what a GitOps tool reads is what is validated.
    (parsed,) = km.from_yaml(km.to_yaml([obj]))
    assert parsed == obj
    kv.validate(parsed, version, strict=True)


def test_strict_schema_can_fail():
    bad = km.deployment(BASE)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[0], strict=True)


# -- what the schemas do not check ---------------------------------------------------------

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def ports_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Service":
        return obj["spec"]["ports"]
    if obj["kind"] == "Deployment":
        return [p for c in obj["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
    return []


@pytest.mark.parametrize(("spec", "obj"), ALL)
def test_names_labels_and_ports(spec, obj):
    name = obj["metadata"]["name"]
    # Services and namespaces need DNS-1123 labels; the rest subdomains.
    assert km.is_dns1123_label(obj["metadata"]["namespace"])
    if obj["kind"] == "Service":
        assert km.is_dns1123_label(name), name
    else:
        assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), name
    for key, value in obj["metadata"]["labels"].items():
        assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    for port in ports_of(obj):
        assert IANA_SVC_NAME.match(port["name"]), port["name"]
    for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        assert km.is_dns1123_label(container["name"])
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in container:
                named = container[probe]["httpGet"]["port"]
                assert named in [p["name"] for p in container["ports"]], (probe, named)


@pytest.mark.parametrize("spec", OPTIONS.values(), ids=OPTIONS.keys())
def test_selectors_match_the_pods(spec):
    deployment = km.deployment(spec)
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    # The selector never changes with options: a Deployment's selector is immutable.
    assert selector == km.selector_labels(BASE) | {"app.kubernetes.io/instance": spec.site}
    for service in [o for o in site_manifests(spec) if o["kind"] == "Service"]:
        assert service["spec"]["selector"].items() <= template_labels.items()
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" (which includes "baseline"), as the
    admission controller checks it (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    found = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(flag)
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    if pod_sc.get("sysctls"):
        found.append("sysctls")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        sc = container.get("securityContext") or {}
        where = f"container {container['name']}"
        if sc.get("privileged"):
            found.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: capabilities added")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{where}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in container.get("ports") or []):
            found.append(f"{where}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount")
        # Not in the standard, but the rule for every skiff container.
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: readOnlyRootFilesystem must be true")
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            if set(resources.get(part) or {}) != {"cpu", "memory"}:
                found.append(f"{where}: {part} must set cpu and memory")
    return found


@pytest.mark.parametrize("spec", OPTIONS.values(), ids=OPTIONS.keys())
def test_pod_security_restricted(spec):
    pod = km.deployment(spec)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def test_restricted_check_can_fail():
    pod = km.deployment(BASE)["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 2


# -- the contract of docs/design.md -------------------------------------------------------------


def test_objects_and_rbac_follow_the_contract():
    spec = OPTIONS["clusterip"]
    kinds = [km.object_key(o) for o in sorted(site_manifests(spec), key=km.sort_key)]
    assert kinds == [
        ("ServiceAccount", "skiff-agent"),
        ("Role", "skiff-agent"),
        ("RoleBinding", "skiff-agent"),
        ("Secret", "skiff-ca"),
        ("Secret", "skiff-links"),
        ("Secret", "skiff-server"),
        ("Secret", "skiff-tokens"),
        ("ConfigMap", "skiff-router"),
        ("Service", "skiff-link"),
        ("Service", "backend"),
        ("Service", "db-primary"),
        ("Deployment", "skiff-router"),
    ]
    rules = km.role(spec)["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["services"],
         "verbs": ["list", "watch", "create", "patch", "delete"]},
    ]  # fmt: skip
    for obj in site_manifests(spec):
        assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "skiff"
        assert obj["metadata"]["labels"]["skiff.io/site"] == "east"


def test_only_the_agent_holds_an_api_credential():
    pod = km.deployment(OPTIONS["clusterip"])["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    router, agent = pod["containers"]
    assert router["name"] == "router" and agent["name"] == "agent"
    assert router["args"] == ["run", "--config", "/etc/skiff/config/router.json"]
    assert agent["args"][:1] == ["kube-agent"]
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (router, agent)
    }
    assert mounts["router"] == {
        "/etc/skiff/config": "config",
        "/etc/skiff/server": "server",
        "/etc/skiff/links": "links",
        "/etc/skiff/admin": "admin-token",
        "/run/skiff": "run",
    }
    # Both read the router's admin token; the agent calls the router's admin API.
    assert mounts["agent"]["/etc/skiff/admin"] == "admin-token"
    assert km.agent_config(OPTIONS["clusterip"])["router_admin_token_file"] == km.ADMIN_TOKEN_PATH
    assert mounts["agent"]["/var/run/secrets/kubernetes.io/serviceaccount"] == "kube-api-access"
    assert mounts["agent"]["/run/skiff"] == "run"
    assert "server" not in mounts["agent"].values() and "links" not in mounts["agent"].values()
    projected = next(v for v in pod["volumes"] if v["name"] == "kube-api-access")["projected"]
    assert "serviceAccountToken" in projected["sources"][0]
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret_names == {"skiff-server", "skiff-links", "skiff-admin"}  # never the CA, tokens
    assert "readinessProbe" not in agent  # the agent never makes the router unready
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_pod_template_does_not_depend_on_links_listeners_or_config():
    spec = OPTIONS["clusterip"]
    assert km.deployment(spec) == km.deployment(dataclasses.replace(spec, link_port=443))
    # Links, listeners and config are ConfigMap/Secret/Service data, never template input.
    template = json.dumps(km.deployment(spec)["spec"]["template"])
    assert "west" not in template and "backend" not in template
    assert km.REFRESH_ANNOTATION not in template


def test_refresh_value_follows_config_and_mounted_secrets():
    config = {"router.json": b'{"site": "east"}\n', "agent.json": b"{}\n"}
    mounted = {"configmap/skiff-router": config, "skiff-links": {"west.tls.key": b"A"}}
    value = km.refresh_value(mounted)
    assert value == km.refresh_value({k: dict(v) for k, v in mounted.items()})
    assert value != km.refresh_value(dict(mounted, **{"skiff-links": {"west.tls.key": b"B"}}))
    for key in config:  # the router's config and the agent's each change it
        changed = dict(config, **{key: config[key] + b" "})
        assert value != km.refresh_value(dict(mounted, **{"configmap/skiff-router": changed}))
    assert re.fullmatch(r"[0-9a-f]{64}", value)


def test_link_service_types_and_annotations():
    nodeport = km.link_service(OPTIONS["nodeport"])
    assert nodeport["spec"]["type"] == "NodePort"
    assert nodeport["spec"]["ports"] == [
        {"name": "link", "protocol": "TCP", "targetPort": "link", "port": 55671, "nodePort": 31671}
    ]
    lb = km.link_service(OPTIONS["loadbalancer"])
    assert lb["spec"]["type"] == "LoadBalancer" and lb["spec"]["ports"][0]["port"] == 443
    assert lb["metadata"]["annotations"] == OPTIONS["loadbalancer"].service_annotations
    assert "annotations" not in km.link_service(OPTIONS["clusterip"])["metadata"]


def test_server_sans_include_in_cluster_names_and_the_load_balancer():
    spec = OPTIONS["loadbalancer"]
    service = {"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.net"}]}}}
    address = km.load_balancer_address(service)
    assert km.server_hosts(spec, ["east.example.com"], address) == [
        "east.example.com",
        "skiff-link",
        "skiff-link.east",
        "skiff-link.east.svc",
        "skiff-link.east.svc.cluster.local",
        "lb.example.net",
    ]
    assert km.load_balancer_address({"status": {"loadBalancer": {}}}) is None


def test_rendering_is_stable_and_round_trips():
    objects = site_manifests(OPTIONS["loadbalancer"])
    first = km.to_yaml(objects)
    assert km.to_yaml(list(reversed(objects))) == first
    assert sorted(km.from_yaml(first), key=km.sort_key) == sorted(objects, key=km.sort_key)
    # The router config is a literal block: readable, and its bytes survive the trip.
    assert "router.json: |\n" in first.decode()
    (config_map,) = [o for o in yaml.safe_load_all(first) if o["kind"] == "ConfigMap"]
    assert json.loads(config_map["data"]["router.json"]) == CONFIG


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_the_agent_accepts_the_config_the_platform_writes(option: str) -> None:
    """One contract, checked by its reader: agent.json in the ConfigMap is what
    `skiff-router kube-agent` validates at start and on every change."""
    spec = OPTIONS[option]
    data = json.loads(km.config_map(spec, b"{}")["data"][km.AGENT_CONFIG_KEY])
    parsed = agent_config.validate(data)
    assert [c.name for c in parsed.connectors] == [c["name"] for c in spec.selector_connectors]
    assert parsed.router_pod_labels == km.selector_labels(spec)
    assert parsed.health_port == km.AGENT_HEALTH_PORT


def test_the_pods_name_reaches_the_router_and_the_agent_under_the_names_they_read() -> None:
    """One contract, checked by its readers: the router names itself `<site>.<pod>`
    from SKIFF_ROUTER_ID_SUFFIX, the agent finds its pod from SKIFF_POD_NAME, and the
    replicas' certificate is where the router config and the agent config say."""
    from skiff_router import config as router_config
    from skiff_router.kube import agent

    assert km.ROUTER_ID_SUFFIX_ENV == router_config.ROUTER_ID_SUFFIX_ENV
    assert km.POD_NAME_ENV == agent.POD_NAME_ENV
    spec = OPTIONS["replicas"]
    containers = {
        c["name"]: c for c in km.deployment(spec)["spec"]["template"]["spec"]["containers"]
    }
    for name, variable in (("router", km.ROUTER_ID_SUFFIX_ENV), ("agent", km.POD_NAME_ENV)):
        (env,) = containers[name]["env"]
        assert env["name"] == variable
        assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    siblings = agent_config.validate(json.loads(km.agent_json(spec))).siblings
    assert siblings is not None
    mounts = {m["name"]: m["mountPath"] for m in containers["router"]["volumeMounts"]}
    assert siblings.cert == f"{mounts['server']}/{km.SIBLING_CERT}"
    assert siblings.key == f"{mounts['server']}/{km.SIBLING_KEY}"
    assert siblings.port == km.LINK_PORT
    # Dial-only sites accept no links: their replicas each dial out, no siblings.
    assert agent_config.validate(json.loads(km.agent_json(BASE))).siblings is None


def test_a_worker_count_is_in_the_pod_template_so_a_change_rolls_out_new_pods() -> None:
    def template(spec: km.KubeSite) -> dict:
        return km.deployment(spec)["spec"]["template"]["metadata"]["annotations"]

    assert km.WORKERS_ANNOTATION not in template(BASE)  # unset: one per CPU of the pod's limit
    four = template(dataclasses.replace(BASE, workers=4))
    assert four[km.WORKERS_ANNOTATION] == "4"
    assert template(dataclasses.replace(BASE, workers=2)) != four
