"""API tier: the kubernetes platform over real HTTP against an emulated API server.

The module logic (site, token, link, listener) runs unchanged; only the API
server is a stand-in (tests/integration/kube_api_emulator.py, real response shapes
of a Kubernetes API server). Each failure names the site, the field and what
to do, and leaves every object as it was.
"""

from __future__ import annotations

import base64
import json
import socket
import sys

import pytest
from cryptography import x509
from kube_api_emulator import KubeApiServer

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km
from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils import platform as platform_module
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.link import LinkParams, run_link
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import decode

IMAGE = "registry.example.com/skiff-router:0.1.0"


@pytest.fixture
def api():
    with KubeApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(api, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = closed.getsockname()[1]
    return api.kubeconfig(tmp_path / "kubeconfig", down_port=down)


@pytest.fixture(autouse=True)
def fresh_platforms():
    # Each module run is a new process in Ansible: no platform object outlives a test.
    platform_module._INSTANCES.clear()
    yield
    platform_module._INSTANCES.clear()


def site(tmp_path, kubeconfig, name="east", **overrides) -> SiteParams:
    kube = {"kubeconfig": str(kubeconfig), "context": "emulator", "rollout_timeout": 5}
    kube.update(overrides.pop("kube", {}))
    values = dict(
        name=name,
        platform="kubernetes",
        base_dir=str(tmp_path / "base"),
        image=IMAGE,
        router_python=sys.executable,
        link_access=True,
        kube=kube,
    )
    values.update(overrides)
    return SiteParams(**values)


def run(params, check=False):
    platform_module._INSTANCES.clear()
    return run_site(params, check, default_python=sys.executable)


def test_four_steps_against_the_api(api, tmp_path, kubeconfig):
    params = site(tmp_path, kubeconfig)
    check = run(params, check=True)
    assert check.changed
    assert "create namespace east" in check.actions
    assert "create Deployment skiff-router" in check.actions
    assert api.writes() == []  # check mode: reads and nothing else

    applied = run(params)
    assert applied.changed
    assert "start the router" in applied.actions
    assert api.kinds("east") == sorted(
        [("ConfigMap", "skiff-router"), ("Deployment", "skiff-router"),
         ("Role", "skiff-agent"), ("RoleBinding", "skiff-agent"),
         ("Secret", "skiff-admin"), ("Secret", "skiff-ca"), ("Secret", "skiff-server"),
         ("Service", "skiff-link"), ("ServiceAccount", "skiff-agent"),
         ("Pod", f"skiff-router-{api.router_pods('east')[0]['metadata']['name'].split('-')[2]}-0")]
    )  # fmt: skip
    # Every object went through server-side apply with skiff's field manager, each
    # write after a dry run of the same object.
    for request in api.writes():
        if request["method"] == "PATCH":
            assert request["query"]["fieldManager"] == ["skiff"]
    applies = [r for r in api.requests if r["content_type"] == "application/apply-patch+yaml"]
    assert all(
        any("All" in earlier["query"].get("dryRun", []) and earlier["path"] == r["path"]
            for earlier in applies[:i])
        for i, r in enumerate(applies) if "dryRun" not in r["query"]
    )  # fmt: skip
    config = json.loads(api.get("ConfigMap", "east", "skiff-router")["data"]["router.json"])
    assert config["link_access"]["cert"] == "/etc/skiff/server/tls.crt"
    assert config["admin"]["host"] == "0.0.0.0"
    # The admin API needs the token of the skiff-admin Secret, mounted in the pod.
    assert config["admin"]["token_file"] == "/etc/skiff/admin/token"
    token = api.get("Secret", "east", "skiff-admin")["data"]["token"]
    assert len(base64.b64decode(token).strip()) >= 32
    assert result_token_not_in(applied, base64.b64decode(token).decode().strip())
    meta = json.loads((tmp_path / "base" / "east" / "site.json").read_text())
    assert meta["link_endpoints"] == [{"host": "skiff-link.east.svc", "port": 55671}]

    writes = len(api.writes())
    again_check = run(params, check=True)
    assert not again_check.changed, again_check.actions
    again = run(params)
    assert not again.changed, again.actions
    assert len(api.writes()) == writes  # idempotent: not one write


def test_server_certificate_names_the_service_and_the_load_balancer(api, tmp_path, kubeconfig):
    api.load_balancer_address = "203.0.113.9"
    params = site(tmp_path, kubeconfig, kube={"link_service_type": "loadbalancer"})
    result = run(params)
    assert result.values["link_endpoints"] == [{"host": "203.0.113.9", "port": 55671}]
    assert any("the link address is known now" in a for a in result.actions)
    secret = km.secret_data(api.get("Secret", "east", "skiff-server"))
    cert = x509.load_pem_x509_certificate(secret["tls.crt"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(sans.get_values_for_type(x509.DNSName))
    assert {"skiff-link", "skiff-link.east", "skiff-link.east.svc",
            "skiff-link.east.svc.cluster.local"} <= names  # fmt: skip
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["203.0.113.9"]
    assert not run(params).changed


def test_diff_shows_what_changes_and_ignores_what_the_server_writes(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    deployment_rv = api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"]
    newer = site(tmp_path, kubeconfig, image=IMAGE.replace("0.1.0", "0.2.0"))
    check = run(newer, check=True)
    assert "update Deployment skiff-router (spec.template)" in check.actions
    before = check.diff["before"]["objects"]["Deployment/skiff-router"]
    after = check.diff["after"]["objects"]["Deployment/skiff-router"]
    assert set(check.diff["after"]["objects"]) == {"Deployment/skiff-router"}
    for obj in (before, after):
        assert "status" not in obj
        assert not {"resourceVersion", "managedFields", "uid", "generation"} & set(obj["metadata"])
    images = [c["image"] for c in after["spec"]["template"]["spec"]["containers"]]
    assert images == [IMAGE.replace("0.1.0", "0.2.0")] * 2
    # Server defaults are on both sides (the dry run), so they are no difference.
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert (
        api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"]
        == deployment_rv
    )
    rolled = run(newer)
    assert rolled.changed
    assert api.get("Deployment", "east", "skiff-router")["metadata"]["generation"] == 2
    assert not run(newer).changed


def test_listener_becomes_a_service_and_reaches_pods_without_restart(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    pods_before = [p["metadata"]["uid"] for p in api.router_pods("east")]
    template_rv = api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"]
    listener = ServiceParams(site="east", name="backend", base_dir=str(tmp_path / "base"),
                             host="0.0.0.0", port=8080)  # fmt: skip
    platform_module._INSTANCES.clear()
    added = run_service(LISTENER, listener, False)
    assert added.changed
    service = api.get("Service", "east", "backend")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == km.selector_labels(km.KubeSite("east", "east", IMAGE))
    pods = api.router_pods("east")
    assert [p["metadata"]["uid"] for p in pods] == pods_before  # no restart
    assert (
        api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"] == template_rv
    )
    config_text = api.get("ConfigMap", "east", "skiff-router")["data"]["router.json"]
    for pod in pods:
        assert pod["metadata"]["annotations"][km.REFRESH_ANNOTATION]
        # The pod reports the new config: the refresh made the kubelet sync it.
        assert api.pod_state[("east", pod["metadata"]["name"])].synced["router.json"] == config_text
    removed = run_service(LISTENER, ServiceParams(site="east", name="backend",
                                                  base_dir=str(tmp_path / "base"), state="absent"), False)  # fmt: skip
    assert removed.changed and api.get("Service", "east", "backend") is None


def test_without_the_refresh_the_wait_names_the_stale_pod(api, tmp_path, kubeconfig, monkeypatch):
    from ansible_collections.skiff.fleet.plugins.module_utils import platform_kubernetes

    run(site(tmp_path, kubeconfig))
    monkeypatch.setattr(platform_kubernetes.KubernetesPlatform, "reload", lambda self: None)
    monkeypatch.setattr(platform_kubernetes.KubernetesPlatform, "config_wait_seconds", 0.5)
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig, log_level="debug"))
    assert "site 'east'" in str(failure.value)
    assert "still runs config sha256" in str(failure.value)
    assert "the previous config was restored" in str(failure.value)
    restored = json.loads(api.get("ConfigMap", "east", "skiff-router")["data"]["router.json"])
    assert restored["log_level"] == "info"


def test_links_and_tokens_live_in_secrets_and_keep_the_pod_template(api, tmp_path, kubeconfig):
    east = site(tmp_path, kubeconfig)
    run(east)
    west = site(tmp_path, kubeconfig, name="west", link_access=False)
    run(west)
    platform_module._INSTANCES.clear()
    token = run_token(TokenParams(site="east", name="west", base_dir=east.base_dir), False)
    assert decode(token.values["token"]).endpoints == [
        {"host": "skiff-link.east.svc", "port": 55671}
    ]
    tokens = km.secret_data(api.get("Secret", "east", "skiff-tokens"))
    assert sorted(tokens) == ["west.json", "west.tls.crt", "west.tls.key"]
    platform_module._INSTANCES.clear()
    again = run_token(TokenParams(site="east", name="west", base_dir=east.base_dir), False)
    assert not again.changed and again.values["token"] == token.values["token"]

    template_rv = api.get("Deployment", "west", "skiff-router")["metadata"]["resourceVersion"]
    platform_module._INSTANCES.clear()
    link = run_link(
        LinkParams(site="west", base_dir=west.base_dir, token=token.values["token"]), False
    )
    assert link.changed
    assert link.values["link"]["key"] == "/etc/skiff/links/east.tls.key"
    links = km.secret_data(api.get("Secret", "west", "skiff-links"))
    assert sorted(links) == ["east.ca.crt", "east.tls.crt", "east.tls.key", "east.tls.next.crt"]
    config_text = api.get("ConfigMap", "west", "skiff-router")["data"]["router.json"]
    assert "PRIVATE KEY" not in config_text
    assert (
        api.get("Deployment", "west", "skiff-router")["metadata"]["resourceVersion"] == template_rv
    )
    platform_module._INSTANCES.clear()
    assert not run_link(LinkParams(site="west", base_dir=west.base_dir,
                                   token=token.values["token"]), False).changed  # fmt: skip


def test_status_through_the_pod_proxy_and_log_without_secrets(api, tmp_path, kubeconfig):
    params = site(tmp_path, kubeconfig)
    run(params)
    metadata = SiteMetadata.from_dict(json.loads((tmp_path / "base/east/site.json").read_text()))
    platform = platform_module.get_platform(
        "kubernetes", SitePaths(tmp_path / "base/east"), metadata
    )
    (status,) = platform.statuses()
    assert status["site"] == "east" and len(status["config"]["sha256"]) == 64
    proxied = [r for r in api.requests if "/proxy/" in r["path"]]
    assert proxied[-1]["path"].endswith(":9191/proxy/v1/status")
    # The admin token goes in the header the pod proxy passes on (never Authorization,
    # which carries the API credential and which the proxy drops); without it, 401.
    token = base64.b64decode(api.get("Secret", "east", "skiff-admin")["data"]["token"]).strip()
    assert proxied[-1]["pod_headers"]["x-skiff-admin-token"].encode() == token
    pod = api.router_pods("east")[0]["metadata"]["name"]
    with pytest.raises(SkiffError, match="401"):
        platform.api.proxy_get(pod, 9191, "v1/status")
    # A replaced token applies at the next request (the router reads its file each time).
    api.objects[("Secret", "east", "skiff-admin")]["data"]["token"] = base64.b64encode(
        b"another-admin-token-0123456789"
    ).decode()
    platform_module._INSTANCES.clear()  # the next module run
    platform = platform_module.get_platform(
        "kubernetes", SitePaths(tmp_path / "base/east"), metadata
    )
    assert platform.statuses()[0]["site"] == "east"
    assert platform.log_tail() == ["router started", "link west up"]


# -- bad input and refusals: a message naming site, field and what to do; nothing torn down ------


def snapshot(api, namespace="east"):
    return {key: api.get(*key[:1], namespace, key[1]) for key in api.kinds(namespace)}


def test_forbidden_verb(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    before = snapshot(api)
    api.fail("PATCH", "ConfigMap", 403, "Forbidden")
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig, log_level="debug"))
    message = str(failure.value)
    assert message.startswith("site 'east': kube.context: forbidden (403) on checking ConfigMap")
    assert 'cannot patch resource "configmaps"' in message
    assert "Rights skiff needs" in message
    assert snapshot(api) == before


def test_conflict_with_another_field_manager(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    deployment = api.objects[("Deployment", "east", "skiff-router")]
    deployment["spec"]["replicas"] = 3  # `kubectl scale` did this
    api.set_owner("Deployment", "east", "skiff-router", "kubectl", ("spec", "replicas"))
    before = snapshot(api)
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig), check=True)
    message = str(failure.value)
    assert "site 'east': kube.force_conflicts: conflict (409)" in message
    assert ".spec.replicas" in message and "skiff_kube_force_conflicts" in message
    assert snapshot(api) == before
    forced = run(site(tmp_path, kubeconfig, kube={"force_conflicts": True}))
    assert "update Deployment skiff-router (spec.replicas)" in forced.actions
    assert api.get("Deployment", "east", "skiff-router")["spec"]["replicas"] == 1


def test_invalid_node_port(api, tmp_path, kubeconfig):
    params = site(tmp_path, kubeconfig, link_endpoint={"host": "node1.example.net", "port": 80},
                  kube={"link_service_type": "nodeport"})  # fmt: skip
    with pytest.raises(SkiffError) as failure:
        run(params)
    message = str(failure.value)
    assert message.startswith("site 'east': spec.ports[0].nodePort: the cluster rejects")
    assert "skiff_link_endpoint.port" in message and "30000-32767" in message


def test_missing_namespace_that_may_not_be_created(api, tmp_path, kubeconfig):
    api.fail("POST", "Namespace", 403, "Forbidden")
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig))
    message = str(failure.value)
    assert message.startswith("site 'east': kube.namespace: namespace east does not exist")
    assert "kubectl create namespace east" in message
    assert api.writes() == [r for r in api.requests if r["method"] == "POST"]


def test_namespaced_user_who_may_not_read_namespaces(api, tmp_path, kubeconfig):
    api.namespaces.add("east")
    api.fail("GET", "Namespace", 403, "Forbidden")
    assert run(site(tmp_path, kubeconfig)).changed
    assert not run(site(tmp_path, kubeconfig)).changed


def test_unreachable_cluster(api, tmp_path, kubeconfig):
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig, kube={"context": "down"}))
    message = str(failure.value)
    assert message.startswith(
        "site 'east': kube.context: cannot reach the Kubernetes API at http://127.0.0.1:"
    )
    assert "Nothing was changed" in message


def test_unknown_context_and_missing_kubeconfig(api, tmp_path, kubeconfig):
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig, kube={"context": "prod"}))
    assert str(failure.value) == (
        f"site 'east': kube.context: context 'prod' is not in kubeconfig {kubeconfig} (it has: "
        "emulator, down, stale); set skiff_kube_context to one of them"
    )
    with pytest.raises(
        SkiffError, match=r"kube\.kubeconfig: kubeconfig /nonexistent does not exist"
    ):
        run(site(tmp_path, kubeconfig, kube={"kubeconfig": "/nonexistent"}))
    with pytest.raises(SkiffError, match=r"kube\.kubeconfig: the cluster refused the credentials"):
        run(site(tmp_path, kubeconfig, kube={"context": "stale"}))
    assert api.writes() == []


def test_rollout_that_never_becomes_ready_names_the_pod(api, tmp_path, kubeconfig):
    api.image_pull_error = 'Back-off pulling image "registry.example.com/skiff-router:0.1.0"'
    with pytest.raises(SkiffError) as failure:
        run(site(tmp_path, kubeconfig, kube={"rollout_timeout": 1}))
    message = str(failure.value)
    assert (
        "kube.rollout_timeout: Deployment skiff-router in namespace east: 0 of 1 replicas ready"
        in message
    )
    assert "container router waiting: ImagePullBackOff" in message
    assert "skiff_kube_image" in message
    # Nothing is torn down: the Deployment stays for `kubectl describe`.
    assert api.get("Deployment", "east", "skiff-router") is not None


def test_bad_listener_for_a_pod_is_refused_before_anything_changes(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    before = snapshot(api)
    platform_module._INSTANCES.clear()
    with pytest.raises(SkiffError) as failure:
        run_service(LISTENER, ServiceParams(site="east", name="Backend_1", base_dir=str(tmp_path / "base"),
                                            host="127.0.0.1", port=9191), False)  # fmt: skip
    message = str(failure.value)
    assert message.startswith("site 'east': listener 'Backend_1': router.json: the router rejects")
    assert "DNS-1123" in message and "use 0.0.0.0" in message and "the admin port" in message
    assert snapshot(api) == before


def test_removal_deletes_every_object_of_the_site(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    check = run(site(tmp_path, kubeconfig, state="absent"), check=True)
    assert "delete Deployment skiff-router" in check.actions
    assert api.kinds("east") != []
    assert run(site(tmp_path, kubeconfig, state="absent")).changed
    assert api.kinds("east") == []
    assert "east" in api.namespaces  # the namespace may hold other things: it stays
    assert not run(site(tmp_path, kubeconfig, state="absent")).changed


def test_removal_deletes_the_agents_proxy_services_and_leaves_the_users(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))

    def service(name, labels):
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "east", "labels": labels},
                "spec": {"ports": [{"port": 80}]}}  # fmt: skip

    # What the agent creates for a service exposed at another site (its labels,
    # router/src/skiff_router/kube/plan.py proxy_labels), and a user's own Service.
    proxy = {"app.kubernetes.io/managed-by": "skiff", "app.kubernetes.io/part-of": "skiff",
             "skiff.io/site": "east", "skiff.io/owned-by-agent": "true"}  # fmt: skip
    with api.lock:
        api.objects[("Service", "east", "orders")] = service("orders", proxy)
        api.objects[("Service", "east", "web")] = service("web", {"app": "web"})
    check = run(site(tmp_path, kubeconfig, state="absent"), check=True)
    assert "delete Service orders" in check.actions
    assert run(site(tmp_path, kubeconfig, state="absent")).changed
    assert api.kinds("east") == [("Service", "web")]


# -- render-only (GitOps): files, no cluster ------------------------------------------------------


def rendered(tmp_path, **overrides) -> SiteParams:
    kube = {"apply": False, "manifests_dir": str(tmp_path / "manifests")}
    kube.update(overrides.pop("kube", {}))
    values = dict(
        name="east",
        platform="kubernetes",
        base_dir=str(tmp_path / "base"),
        image=IMAGE,
        router_python=sys.executable,
        link_access=True,
        link_endpoint={"host": "east.example.com", "port": 443},
        kube=kube,
    )
    values.update(overrides)
    return SiteParams(**values)


def result_token_not_in(result, token: str) -> bool:
    """No secret in what a module returns or says."""
    text = json.dumps([result.values, result.actions, result.diff, result.warnings], default=str)
    return token not in text


def test_render_only_is_stable_private_and_reads_its_state_back(tmp_path):
    import stat

    out = tmp_path / "manifests"
    check = run(rendered(tmp_path), check=True)
    assert check.changed and not out.exists()
    first = run(rendered(tmp_path))
    assert first.changed and "start the router" not in first.actions
    site_file = out / "east.yaml"
    secret_files = sorted(p.name for p in (out / "east.secrets").iterdir())
    assert secret_files == ["skiff-admin.yaml", "skiff-ca.yaml", "skiff-server.yaml"]
    assert stat.S_IMODE((out / "east.secrets").stat().st_mode) == 0o700
    for path in (out / "east.secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(site_file.stat().st_mode) == 0o644
    text = site_file.read_text()
    assert "kind: Secret" not in text and "PRIVATE KEY" not in text
    kinds = [doc["kind"] for doc in km.from_yaml(site_file.read_bytes())]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment"]
    snapshot_bytes = {p: p.read_bytes() for p in out.rglob("*.yaml")}
    mtimes = {p: p.stat().st_mtime_ns for p in snapshot_bytes}

    # A re-run (a fresh controller: no site.json) finds CA and keys in the files.
    import shutil

    shutil.rmtree(tmp_path / "base")
    again = run(rendered(tmp_path))
    assert again.actions == [f"create site directory {tmp_path / 'base' / 'east'}",
                             f"write {tmp_path / 'base' / 'east' / 'site.json'}"]  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*.yaml")} == snapshot_bytes
    assert {p: p.stat().st_mtime_ns for p in snapshot_bytes} == mtimes
    assert not run(rendered(tmp_path)).changed

    # A token and a listener change only data files; the Deployment stays byte-identical.
    platform_module._INSTANCES.clear()
    token = run_token(TokenParams(site="east", name="west", base_dir=str(tmp_path / "base")), False)
    assert decode(token.values["token"]).endpoints == [{"host": "east.example.com", "port": 443}]
    assert (out / "east.secrets" / "skiff-tokens.yaml").exists()
    platform_module._INSTANCES.clear()
    listener = ServiceParams(site="east", name="backend", base_dir=str(tmp_path / "base"),
                             host="0.0.0.0", port=8080)  # fmt: skip
    added = run_service(LISTENER, listener, False)
    assert any("render-only: written to" in a for a in added.actions)
    documents = {
        (d["kind"], d["metadata"]["name"]): d for d in km.from_yaml(site_file.read_bytes())
    }
    assert ("Service", "backend") in documents
    deployment_before = [
        d for d in km.from_yaml(snapshot_bytes[site_file]) if d["kind"] == "Deployment"
    ]
    assert [documents[("Deployment", "skiff-router")]] == deployment_before

    removed = run(rendered(tmp_path, state="absent"))
    assert removed.changed and list(out.rglob("*.yaml")) == []


def test_render_only_needs_what_no_cluster_can_tell(tmp_path):
    with pytest.raises(
        SkiffError, match=r"kube\.manifests_dir: is required when kube\.apply is false"
    ):
        run(rendered(tmp_path, kube={"manifests_dir": None}))
    lb = rendered(tmp_path, link_endpoint={"port": 443}, kube={"link_service_type": "loadbalancer"})
    with pytest.raises(SkiffError, match="link_endpoint: host is required in render-only mode"):
        run(lb)
    assert not (tmp_path / "manifests").exists()


DB = {"name": "db", "selector": {"matchLabels": {"app": "db"}}, "port": 5432}


def test_selector_connectors_reach_the_agent_without_a_rollout(api, tmp_path, kubeconfig):
    """Connectors by pod selector are the agent's config (agent.json in the ConfigMap):
    a change is planned, shown in the diff, written and synced into the running pods
    by the refresh annotation, with the pod template untouched."""
    run(site(tmp_path, kubeconfig))
    pods_before = [p["metadata"]["uid"] for p in api.router_pods("east")]
    template_rv = api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"]
    router_json = api.get("ConfigMap", "east", "skiff-router")["data"]["router.json"]

    params = site(tmp_path, kubeconfig, kube={"connectors": [DB]})
    check = run(params, check=True)
    assert "update ConfigMap skiff-router (agent.json: selector connectors)" in check.actions
    after = check.diff["after"]["objects"]["ConfigMap/skiff-router"]["agent.json"]
    assert after["connectors"] == [dict(DB, routing_key="db")]
    assert (
        "connectors" not in check.diff["before"]["objects"]["ConfigMap/skiff-router"]["agent.json"]
    )
    assert (
        json.loads(api.get("ConfigMap", "east", "skiff-router")["data"]["agent.json"]).get(
            "connectors"
        )
        is None
    )  # check mode wrote nothing

    applied = run(params)
    assert applied.changed
    data = api.get("ConfigMap", "east", "skiff-router")["data"]
    assert json.loads(data["agent.json"])["connectors"] == [dict(DB, routing_key="db")]
    assert data["router.json"] == router_json  # the router's config is not the agent's
    assert [p["metadata"]["uid"] for p in api.router_pods("east")] == pods_before
    assert (
        api.get("Deployment", "east", "skiff-router")["metadata"]["resourceVersion"] == template_rv
    )
    for pod in api.router_pods("east"):
        synced = api.pod_state[("east", pod["metadata"]["name"])].synced
        assert synced["agent.json"] == data["agent.json"]  # the refresh synced the volume

    assert not run(params, check=True).changed
    assert not run(params).changed
    assert json.loads(api.get("ConfigMap", "east", "skiff-router")["data"]["agent.json"])[
        "connectors"
    ] == [dict(DB, routing_key="db")]

    # Removing them is a change the same way.
    removed = run(site(tmp_path, kubeconfig))
    assert "update ConfigMap skiff-router (agent.json: selector connectors)" in removed.actions
    assert "connectors" not in json.loads(
        api.get("ConfigMap", "east", "skiff-router")["data"]["agent.json"]
    )


def test_bad_selector_is_refused_naming_the_connector_before_anything_changes(
    api, tmp_path, kubeconfig
):
    run(site(tmp_path, kubeconfig))
    writes = len(api.writes())
    bad = dict(DB, selector={"matchLabels": {"bad key!": "x"}})
    for check in (True, False):
        with pytest.raises(SkiffError) as failure:
            run(site(tmp_path, kubeconfig, kube={"connectors": [bad]}), check=check)
        text = str(failure.value)
        assert failure.value.field == "kube.connectors"
        assert "site east" in text and "connector 'db'" in text
        assert "selector.matchLabels.bad key!" in text and "skiff_connectors" in text
    assert len(api.writes()) == writes


def test_replicas_are_routers_of_their_own_linked_by_the_sites_sibling_certificate(
    api, tmp_path, kubeconfig
):
    """skiff_router_replicas: 2 -> two pods, each naming itself from its pod name, the
    agent linking them with the site's sibling client certificate (kept in
    skiff-server beside the server certificate), and the wait reading both pods."""
    applied = run(site(tmp_path, kubeconfig, replicas=2))
    assert applied.changed
    deployment = api.get("Deployment", "east", "skiff-router")
    assert deployment["spec"]["replicas"] == 2
    pods = api.router_pods("east")
    assert len(pods) == 2
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert containers["router"]["env"] == [
        {
            "name": "SKIFF_ROUTER_ID_SUFFIX",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        }
    ]
    assert containers["agent"]["env"][0]["name"] == "SKIFF_POD_NAME"
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100

    server = km.secret_data(api.get("Secret", "east", "skiff-server"))
    ca = x509.load_pem_x509_certificate(
        km.secret_data(api.get("Secret", "east", "skiff-ca"))["ca.crt"]
    )
    sibling = x509.load_pem_x509_certificate(server["sibling.crt"])
    assert sibling.issuer == ca.subject
    # The CN is the site, as a token names the dialing site.
    assert sibling.subject.rfc4514_string() == "CN=east,O=skiff"
    # Its next certificate (same key): the replicas renew their links with it.
    ca_pem = km.secret_data(api.get("Secret", "east", "skiff-ca"))["ca.crt"]
    assert pki.successor_problem(server["sibling.crt"], server["sibling.next.crt"], ca_pem) is None
    data = api.get("ConfigMap", "east", "skiff-router")["data"]
    access = json.loads(data["router.json"])["link_access"]
    assert access["sibling_cert"] == "/etc/skiff/server/sibling.crt"
    assert access["sibling_next_cert"] == "/etc/skiff/server/sibling.next.crt"
    siblings = json.loads(data["agent.json"])["siblings"]
    assert siblings["server_name"] == "skiff-link.east.svc"
    assert siblings["cert"] == "/etc/skiff/server/sibling.crt"
    assert siblings["next_cert"] == "/etc/skiff/server/sibling.next.crt"
    platform_module._INSTANCES.clear()
    meta = json.loads((tmp_path / "base" / "east" / "site.json").read_text())
    platform = platform_module.get_platform(
        "kubernetes",
        SitePaths.for_site(str(tmp_path / "base"), "east"),
        SiteMetadata.from_dict(meta),
    )
    router_ids = sorted(status["router_id"] for status in platform.statuses() if status)
    assert router_ids == sorted(f"east.{p['metadata']['name']}" for p in pods)
    assert not run(site(tmp_path, kubeconfig, replicas=2)).changed


def test_a_site_made_before_the_sibling_certificate_gets_one(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    secret = api.get("Secret", "east", "skiff-server")
    old = km.secret_data(secret)
    for key in ("sibling.crt", "sibling.key"):
        old.pop(key)
    with api.lock:  # a Secret written by an earlier version: no sibling certificate
        stored = api.objects[("Secret", "east", "skiff-server")]
        stored["data"] = km.secret(km.KubeSite("east", "east", IMAGE), "skiff-server", old)["data"]
    check = run(site(tmp_path, kubeconfig), check=True)
    assert "issue the replicas' link certificate (missing)" in check.actions
    applied = run(site(tmp_path, kubeconfig))
    assert "issue the replicas' link certificate (missing)" in applied.actions
    server = km.secret_data(api.get("Secret", "east", "skiff-server"))
    assert server["tls.crt"] == old["tls.crt"]  # the server certificate stays
    assert "sibling.crt" in server and "sibling.key" in server
    assert not run(site(tmp_path, kubeconfig)).changed
    # One made before the next certificate existed gets a pair with one.
    without = km.secret_data(api.get("Secret", "east", "skiff-server"))
    without.pop("sibling.next.crt")
    with api.lock:
        stored = api.objects[("Secret", "east", "skiff-server")]
        stored["data"] = km.secret(km.KubeSite("east", "east", IMAGE), "skiff-server", without)[
            "data"
        ]
    renewed = run(site(tmp_path, kubeconfig))
    assert "issue the replicas' link certificate (no next certificate to renew with)" in (
        renewed.actions
    )
    assert "sibling.next.crt" in km.secret_data(api.get("Secret", "east", "skiff-server"))
    assert not run(site(tmp_path, kubeconfig)).changed


def test_replicas_out_of_range_are_refused(api, tmp_path, kubeconfig):
    for replicas in (0, 17):
        with pytest.raises(SkiffError) as failure:
            run(site(tmp_path, kubeconfig, replicas=replicas))
        assert failure.value.field == "replicas"
        assert "1..16" in str(failure.value)


def test_a_worker_count_rolls_out_new_pods_instead_of_a_restart(api, tmp_path, kubeconfig):
    run(site(tmp_path, kubeconfig))
    check = run(site(tmp_path, kubeconfig, workers=4), check=True)
    assert "update Deployment skiff-router (spec.template)" in check.actions
    assert not any(a.startswith("restart the router") for a in check.actions), check.actions
    applied = run(site(tmp_path, kubeconfig, workers=4))
    assert applied.changed
    deployment = api.get("Deployment", "east", "skiff-router")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[km.WORKERS_ANNOTATION] == "4"
    data = api.get("ConfigMap", "east", "skiff-router")["data"]
    assert json.loads(data["router.json"])["workers"] == 4
    assert not run(site(tmp_path, kubeconfig, workers=4)).changed


def test_a_kubernetes_site_redeems_a_grant_from_a_file(api, tmp_path, kubeconfig, services):
    """A grant another site issued (here a local site, as a fake router) is handed over
    as a 0600 file; the kubernetes site's link reads it and keeps it in its Secret."""
    hub = SiteParams(
        name="hub",
        base_dir=str(tmp_path / "hub"),
        router_python="py",
        link_access=True,
        link_endpoint={"host": "hub.example.internal", "port": 55671},
    )
    run_site(hub, False, **services)
    dest = tmp_path / "hub.grant"
    params = TokenParams(
        site="hub", name="partner", base_dir=hub.base_dir, grants={"partner": {"dest": str(dest)}}
    )
    run_token(params, False, **services)
    west = site(tmp_path, kubeconfig, name="west", link_access=False)
    run(west)
    platform_module._INSTANCES.clear()
    link = run_link(LinkParams(site="west", base_dir=west.base_dir, token_file=str(dest)), False)
    assert link.changed and link.values["link"]["peer"] == "hub"
    links = km.secret_data(api.get("Secret", "west", "skiff-links"))
    assert links["hub.tls.crt"].decode() == decode(dest.read_text()).cert
    platform_module._INSTANCES.clear()
    assert not run_link(
        LinkParams(site="west", base_dir=west.base_dir, token_file=str(dest)), False
    ).changed
