"""`make demo`'s network, run as the demo runs it: three sites, each serving one
service and reaching the other two, one path crossing two links.

The demo inventory is used as written, with every port moved to a free one
and the site directories in a temporary directory, so the test runs beside a
real demo (or another test run) on the same machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fleet_harness import REPO, free_ports, router_pids, run_playbook

pytestmark = pytest.mark.integration

DEMO = REPO / "inventories" / "demo"


def remapped_demo(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the demo inventory whose ports are all free ones, state under tmp_path."""
    hosts_doc = yaml.safe_load((DEMO / "hosts.yml").read_text())
    hosts = hosts_doc["skiff_sites"]["hosts"]
    wanted: list[tuple[dict, str]] = []
    for site_vars in hosts.values():
        wanted.append((site_vars, "skiff_admin_port"))
        if "skiff_link_endpoint" in site_vars:
            wanted.append((site_vars["skiff_link_endpoint"], "port"))
        for entry in site_vars.get("skiff_connectors", []) + site_vars.get("skiff_listeners", []):
            wanted.append((entry, "port"))
    for (holder, key), port in zip(wanted, free_ports(len(wanted)), strict=True):
        holder[key] = port
    inventory = tmp_path / "demo"
    shutil.copytree(DEMO, inventory)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts_doc, sort_keys=False))
    group_vars = inventory / "group_vars" / "skiff_sites.yml"
    settings = yaml.safe_load(group_vars.read_text())
    settings["skiff_base_dir"] = str(tmp_path / "sites")
    group_vars.write_text(yaml.safe_dump(settings, sort_keys=False))
    return inventory, hosts


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_every_service_answers_from_every_other_site(tmp_path) -> None:
    inventory, hosts = remapped_demo(tmp_path)
    # The seeds' shape: every site serves one service and reaches all the others,
    # and north and east are two links apart.
    services = {c["name"] for v in hosts.values() for c in v["skiff_connectors"]}
    assert len(services) == len(hosts) == 3
    for site_vars in hosts.values():
        own = {c["name"] for c in site_vars["skiff_connectors"]}
        assert {lis["name"] for lis in site_vars["skiff_listeners"]} == services - own
    assert [link["to"] for link in hosts["north"]["skiff_links"]] == ["west"]
    assert [link["to"] for link in hosts["west"]["skiff_links"]] == ["east"]

    state = tmp_path / "state"
    started = script(
        "demo_backend.py", "start", "--inventory", str(inventory), "--state", str(state)
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        first = run_playbook(inventory, "site.yml")
        assert first.returncode == 0, first.output[-4000:]
        shown = script("demo_show.py", str(inventory))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        # Six requests (three sites x two remote services), each answered by its provider.
        for site, site_vars in hosts.items():
            for listener in site_vars["skiff_listeners"]:
                provider = next(
                    s
                    for s, v in hosts.items()
                    for c in v["skiff_connectors"]
                    if c["name"] == listener["name"]
                )
                assert (
                    f"{site} -> {listener['name']}: hello from {listener['name']} "
                    f"at site {provider}:" in shown.stdout
                ), shown.stdout
        assert "FAILED" not in shown.stdout and "WRONG" not in shown.stdout

        again = run_playbook(inventory, "site.yml")
        assert again.returncode == 0, again.output[-4000:]
        assert set(again.changed().values()) == {0}, again.changed()
    finally:
        run_playbook(inventory, "teardown.yml")
        script("demo_backend.py", "stop", "--state", str(state))
    assert router_pids(tmp_path / "sites") == []


def test_demo_show_fails_when_a_service_is_down(tmp_path) -> None:
    """The demo's check can fail: with no network running every request fails."""
    inventory, _unused = remapped_demo(tmp_path)
    shown = script("demo_show.py", str(inventory), "--no-status")
    assert shown.returncode == 1
    assert shown.stdout.count("FAILED") >= 6
