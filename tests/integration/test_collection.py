"""The collection as users get it: docs render, the tarball carries what it should."""

from __future__ import annotations

import subprocess
import tarfile

import pytest
from fleet_harness import BIN, REPO, ansible_env

MODULES = (
    "site",
    "token",
    "link",
    "listener",
    "connector",
    "wait",
    "reconcile",
    "network_info",
    "fleet_check",
    "plan",
)


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(module: str) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "module", f"skiff.fleet.{module}"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"skiff.fleet.{module}" in proc.stdout
    assert "EXAMPLES" in proc.stdout and "RETURN VALUES" in proc.stdout
    assert "WARNING" not in proc.stderr, proc.stderr
    if module == "site":
        for platform in ("local", "systemd", "podman"):
            assert f"`{platform}' runs it" in proc.stdout, platform
        assert "`kubernetes' runs the router as the Deployment" in proc.stdout
        for option in ("link_service_type", "manifests_dir", "force_conflicts"):
            assert option in proc.stdout, option


def test_role_documentation_renders() -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "role", "skiff.fleet.site"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for variable in ("skiff_link_endpoint", "skiff_links", "skiff_listeners", "skiff_connectors"):
        assert variable in proc.stdout
    for variable in ("skiff_kube_namespace", "skiff_kube_context", "skiff_kube_kubeconfig",
                     "skiff_kube_link_access", "skiff_kube_service_annotations",
                     "skiff_kube_image", "skiff_router_replicas", "skiff_kube_apply",
                     "skiff_kube_manifests_dir"):  # fmt: skip
        assert variable in proc.stdout, variable


def test_build_leaves_out_tests_and_build_outputs(tmp_path) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = tmp_path.glob("skiff-fleet-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    for wanted in (
        "MANIFEST.json",
        "plugins/modules/site.py",
        "plugins/module_utils/topology.py",
        "roles/site/tasks/main.yml",
        "playbooks/site.yml",
        "router/pyproject.toml",
    ):
        assert wanted in names, wanted
    for name in names:
        top = name.split("/")[0]
        assert top not in {"tests", ".venv", ".cache", ".git", "build", ".demo", "bench"}, name
        assert not name.startswith("router/tests"), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
