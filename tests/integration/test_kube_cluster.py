"""Opt-in tier: a kubernetes site on a real cluster (skipped unless KUBECONFIG is set).

Needs KUBECONFIG (a context whose user may create namespaces) and
SKIFF_KUBE_IMAGE (the router image, pushed where the cluster pulls from).
Runs in a namespace of its own and deletes it afterwards. The same code is
tested without a cluster against the emulated API server; this tier shows the
emulator's assumptions hold on a real API server and kubelet.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import platform as platform_module
from ansible_collections.skiff.fleet.plugins.module_utils.kube_api import KubeApi
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths

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
