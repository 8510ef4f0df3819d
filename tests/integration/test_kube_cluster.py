"""Opt-in tier: a kubernetes site on a real cluster (skipped unless KUBECONFIG is set).

Needs KUBECONFIG (a context whose user may create namespaces) and
SKIFF_KUBE_IMAGE (the router image, pushed where the cluster pulls from).
Runs in a namespace of its own and deletes it afterwards. The same code is
tested without a cluster against the emulated API server; this tier shows the
emulator's assumptions hold on a real API server and kubelet.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import platform as platform_module
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.kube_api import KubeApi
from ansible_collections.skiff.fleet.plugins.module_utils.link import LinkParams, run_link
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token

pytestmark = [
    pytest.mark.kubernetes_cluster,
    pytest.mark.skipif(
        not (os.environ.get("KUBECONFIG") and os.environ.get("SKIFF_KUBE_IMAGE")),
        reason="set KUBECONFIG and SKIFF_KUBE_IMAGE to run against a real cluster",
    ),
]


@pytest.fixture
def namespace():
    name = f"skiff-test-{uuid.uuid4().hex[:8]}"
    yield name
    api = KubeApi(site=name, namespace=name)
    api.request("DELETE", f"/api/v1/namespaces/{name}", what="deleting the test namespace")


def test_site_on_a_real_cluster(tmp_path, namespace):
    params = SiteParams(
        name=namespace,
        platform="kubernetes",
        base_dir=str(tmp_path),
        image=os.environ["SKIFF_KUBE_IMAGE"],
        router_python=sys.executable,
        link_access=True,
        kube={"rollout_timeout": 300},
    )
    assert run_site(params, True, default_python=sys.executable).changed
    platform_module._INSTANCES.clear()
    assert run_site(params, False, default_python=sys.executable).changed
    platform_module._INSTANCES.clear()
    assert not run_site(params, False, default_python=sys.executable).changed

    platform_module._INSTANCES.clear()
    listener = ServiceParams(site=namespace, name="backend", base_dir=str(tmp_path),
                             host="0.0.0.0", port=8080)  # fmt: skip
    assert run_service(LISTENER, listener, False).changed  # waits for the pods' new config

    metadata = SiteMetadata.from_dict(json.loads((tmp_path / namespace / "site.json").read_text()))
    platform = platform_module.get_platform("kubernetes", SitePaths(tmp_path / namespace), metadata)
    statuses = platform.statuses()
    assert statuses and all(s["listeners"][0]["state"] == "listening" for s in statuses)

    platform_module._INSTANCES.clear()
    assert run_site(SiteParams(**{**params.__dict__, "state": "absent"}), False).changed


# An HTTP backend in the router image (python3 is there): GET / answers BODY.
BACKEND = """
import http.server, os
BODY = os.environ["BODY"].encode() * 4096
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def until(check, what, timeout=240.0):
    """Bounded: polls check() until it gives a truthy value, else fails naming what."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check()
        except SkiffError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def two_namespaces():
    names = [f"skiff-test-{uuid.uuid4().hex[:8]}" for _site in range(2)]
    yield names
    for name in names:
        api = KubeApi(site=name, namespace=name)
        api.request("DELETE", f"/api/v1/namespaces/{name}", what="deleting the test namespace")


def test_annotation_exposure_end_to_end(tmp_path, two_namespaces):
    """A Service annotated at one site is reachable by name at the other; unannotated, gone."""
    east, west = two_namespaces
    image = os.environ["SKIFF_KUBE_IMAGE"]
    for name, access in ((east, True), (west, False)):
        platform_module._INSTANCES.clear()
        params = SiteParams(name=name, platform="kubernetes", base_dir=str(tmp_path),
                            image=image, router_python=sys.executable, link_access=access,
                            kube={"rollout_timeout": 300})  # fmt: skip
        assert run_site(params, False, default_python=sys.executable).changed
    platform_module._INSTANCES.clear()
    token = run_token(TokenParams(site=east, name=west, base_dir=str(tmp_path)), False)
    platform_module._INSTANCES.clear()
    link = LinkParams(site=west, base_dir=str(tmp_path), token=token.values["token"])
    assert run_link(link, False).changed

    east_api, west_api = KubeApi(site=east, namespace=east), KubeApi(site=west, namespace=west)
    body = uuid.uuid4().hex
    east_api.request("POST", east_api.path("Pod"), what="creating the backend pod", body={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
                 "containers": [{"name": "web", "image": image, "command": ["python3", "-c", BACKEND],
                                 "env": [{"name": "BODY", "value": body}],
                                 "ports": [{"containerPort": 8080}],
                                 "securityContext": RESTRICTED,
                                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                               "limits": {"cpu": "200m", "memory": "64Mi"}}}]},
    })  # fmt: skip
    user_service = east_api.request("POST", east_api.path("Service"), what="creating Service web", body={
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "annotations": {"skiff.io/expose": "true"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })  # fmt: skip

    proxy = until(lambda: west_api.get("Service", "web"), "west's proxy Service web")
    assert proxy["metadata"]["labels"]["skiff.io/owned-by-agent"] == "true"
    want = hashlib.sha256(body.encode() * 4096).hexdigest()
    # Through the API server's service proxy: west's Service -> west's router pod ->
    # the mutual-TLS link -> east's router -> the backend pod.
    got = until(
        lambda: west_api.request("GET", f"{west_api.path('Service', 'web')}:80/proxy/",
                                 what="GET web through west", raw=True),
        "an answer from east's backend through west",
    )  # fmt: skip
    assert hashlib.sha256(got).hexdigest() == want
    # The user's Service was never written by skiff.
    live = east_api.get("Service", "web")
    assert live["metadata"]["resourceVersion"] == user_service["metadata"]["resourceVersion"]

    east_api.merge_patch("Service", "web", {"metadata": {"annotations": {"skiff.io/expose": None}}})
    until(lambda: west_api.get("Service", "web") is None, "west's proxy Service removed")
