"""`make demo-hybrid` as it runs: a kubernetes site as a pod (`podman kube play`),
a local site and a systemd site on a Debian host container with systemd as PID
1, each serving one service and reaching the other two; a second `up` changes
nothing, and `down` leaves no container, network or state behind.

The demo's names and ports are fixed (it is a demo): the test takes the lock
the other podman kube users take, and fails rather than touch a demo that is
already up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from fleet_harness import REPO, ansible_env
from kube_play import CONTAINERS_CONF, podman

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]

STATE = REPO / ".demo" / "hybrid"


def demo(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_hybrid.py"), action],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=dict(ansible_env(), CONTAINERS_CONF=str(CONTAINERS_CONF)),
        cwd=REPO,
    )


def why(run: subprocess.CompletedProcess[str]) -> str:
    """A failed step's own lines first (ansible's `fatal:` ones), then the end of it."""
    fatal = [line for line in run.stdout.splitlines() if line.startswith(("fatal:", "failed:"))]
    return "\n".join(fatal)[-6000:] + "\n...\n" + run.stdout[-3000:] + run.stderr[-3000:]


def test_hybrid_demo_every_service_from_every_platform() -> None:
    assert not STATE.exists(), f"a hybrid demo is up ({STATE}): make demo-hybrid-teardown"
    try:
        first = demo("up")
        assert first.returncode == 0, why(first)
        assert "router id shop.skiff-router-pod-0" in first.stdout

        shown = demo("show")
        assert shown.returncode == 0, why(shown)
        answers = re.findall(
            r"^  (\w+) -> (\w+): hello from (\w+) at site (\w+):", shown.stdout, re.M
        )
        # Every listener of every site was answered by the service it names, at the
        # site that serves it: six answers, across three platforms.
        served_at = {"catalog": "shop", "inventory": "east", "payments": "edge"}
        assert sorted((site, service) for site, service, _n, _s in answers) == sorted(
            (site, service)
            for site in served_at.values()
            for service in served_at
            if served_at[service] != site
        )
        assert all(name == service and at == served_at[service]
                   for _site, service, name, at in answers)  # fmt: skip
        assert "shop.skiff-router-pod-0 (shop)" in shown.stdout

        again = demo("up")
        assert again.returncode == 0, why(again)
        recaps = re.findall(r"^(\w+)\s+: ok=\d+\s+changed=(\d+)", again.stdout, re.M)
        assert recaps and all(changed == "0" for _host, changed in recaps), recaps
    finally:
        down = demo("down")
    assert down.returncode == 0, why(down)
    assert not STATE.exists()
    names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in names if n.startswith(("skiff-demo-", "skiff-router-pod"))], names
    assert podman("network", "exists", "skiff-demo-net", check=False).returncode != 0
    assert os.path.exists(REPO / "inventories" / "hybrid" / "hosts.yml")
