"""skiff.fleet.site with platform kubernetes, run for real by ansible-playbook.

Render-only mode writes files; the apply mode talks to the emulated API server
(kube_api_emulator.py) over HTTP, from the module process Ansible starts, exactly
as it would talk to a cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_harness import BIN, REPO, ansible_env
from kube_api_emulator import KubeApiServer

pytestmark = pytest.mark.integration

TARGET = Path(__file__).resolve().parent / "targets" / "site_kubernetes"


def test_site_kubernetes_target(tmp_path):
    with KubeApiServer() as api:
        variables = {
            "base_dir": str(tmp_path / "sites"),
            "manifests_dir": str(tmp_path / "manifests"),
            "kubeconfig": str(api.kubeconfig(tmp_path / "kubeconfig")),
            "ansible_python_interpreter": sys.executable,
        }
        # The target applied as a role, the way ansible-test's own playbook does.
        playbook = tmp_path / "site_kubernetes.yml"
        playbook.write_text(
            f"- hosts: localhost\n  gather_facts: false\n  roles:\n    - {json.dumps(str(TARGET))}\n"
        )
        done = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-v",
             "-e", json.dumps(variables), str(playbook)],
            cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]
        assert "failed=0" in output
        assert "PRIVATE KEY" not in output
        # The removal deleted every object it made; the namespace stays.
        assert api.kinds("west") == []
        assert "west" in api.namespaces
