"""Every module run for real by ansible-playbook against localhost and real routers.

Each target (targets/<module>/tasks/main.yml, the layout `ansible-test
integration` runs) does the four steps of community.crypto (check mode, apply,
check mode again, apply again) with assertions on `changed`, a `--diff` case
and bad-input cases. Here we apply it as a role, the way ansible-test's own
playbook does, with a fresh base_dir and free ports, and make sure no router
outlives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_harness import free_ports

from ansible_collections.skiff.fleet.plugins.module_utils.platform_local import LocalPlatform
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TARGETS = Path(__file__).resolve().parent / "targets"
BIN = Path(sys.executable).parent


def have_router() -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import skiff_router"], capture_output=True, check=False
    )
    return done.returncode == 0


def router_pids(base_dir: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "skiff_router" in cmdline and str(base_dir) in cmdline:
            pids.append(int(entry))
    return pids


@pytest.fixture
def base_dir(tmp_path):
    base = tmp_path / "sites"
    yield base
    # The playbooks tear down in `always:`; this catches what a crash left behind.
    if base.is_dir():
        for site in base.iterdir():
            paths = SitePaths(site)
            LocalPlatform(paths, SiteMetadata(name=site.name, router_python=sys.executable)).stop(
                timeout=5
            )
    assert router_pids(base) == [], "a router outlived its test"


def run_target(target: str, base_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    variables = {
        "base_dir": str(base_dir),
        "ports": free_ports(8),
        "ansible_python_interpreter": sys.executable,
    }
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"),
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    # What ansible-test generates for a role target, on localhost.
    playbook = base_dir.parent / f"{target}.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  roles:\n"
        f"    - {json.dumps(str(TARGETS / target))}\n"
    )
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            json.dumps(variables),
            str(playbook),
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


needs_router = pytest.mark.skipif(not have_router(), reason="skiff_router is not installed")


@needs_router
@pytest.mark.parametrize(
    "target",
    ["site", "listener", "connector", "token", "link", "wait", "reconcile", "network_info"],
)
def test_target(target: str, base_dir: Path) -> None:
    done = run_target(target, base_dir, "-v")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "failed=0" in output
    assert f"TASK [{TARGETS / target} : " in output, "the target's tasks did not run"
    # Secrets never reach the output, even with -v.
    assert "PRIVATE KEY" not in output
    assert "skiff1.ey" not in output
