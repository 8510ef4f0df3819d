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
        [str(BIN / "ansible-doc"), "-t", "role", "skiff.fleet.skiff"],
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
        "roles/skiff/tasks/main.yml",
        "playbooks/site.yml",
        "router/pyproject.toml",
        "router/src/skiff_router/py.typed",
        "LICENSE",
        "CHANGELOG.rst",
        "changelogs/changelog.yaml",
        "roles/skiff/README.md",
    ):
        assert wanted in names, wanted
    developer_files = {"tests", ".venv", ".cache", ".git", "build", ".demo", "bench", "molecule"}
    developer_files |= {"scripts", "inventories", "Makefile", "ansible.cfg", "mypy.ini", ".ci"}
    for name in names:
        top = name.split("/")[0]
        assert top not in developer_files and not top.startswith("requirements-"), name
        assert not name.startswith("router/tests"), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name


def test_action_group_sets_site_and_base_dir_once(tmp_path) -> None:
    """meta/runtime.yml's group: module_defaults reach every module that takes `site`."""
    base_dir = tmp_path / "sites"
    playbook = tmp_path / "group.yml"
    playbook.write_text(
        f"""
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/skiff.fleet.fleet:
      site: nowhere
      base_dir: {base_dir}
  tasks:
    - name: Wait for a site that does not exist, named only by the group's defaults
      skiff.fleet.wait:
        timeout: 1
"""
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
         "-e", f"ansible_python_interpreter={BIN / 'python'}"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"site 'nowhere': no site at {base_dir}/nowhere" in output, output
    assert "Unsupported parameters" not in output, output
