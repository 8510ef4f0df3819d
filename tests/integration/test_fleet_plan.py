"""The network-wide plan (site.yml --check, playbooks/plan.yml) and the fleet-wide checks.

Three local sites on loopback (west -> east, north -> west), real routers. The
plan is read as text and as JSON; every planning run must leave the sites'
files and processes exactly as they were.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys

import pytest
from fleet_harness import (
    BIN,
    REPO,
    ansible_env,
    free_ports,
    router_pids,
    run_playbook,
    write_inventory,
)

pytestmark = pytest.mark.integration


def hosts_for(ports: list[int]) -> dict:
    admin_e, admin_w, admin_n, link_e, link_w, lis_w, lis_n, backend = ports
    return {
        "east": {
            "skiff_admin_port": admin_e,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link_e},
            "skiff_connectors": [{"name": "echo", "host": "127.0.0.1", "port": backend}],
        },
        "west": {
            "skiff_admin_port": admin_w,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link_w},
            "skiff_links": [{"to": "east", "cost": 1}],
            "skiff_listeners": [{"name": "echo", "port": lis_w}],
        },
        "north": {
            "skiff_admin_port": admin_n,
            "skiff_links": [{"to": "west", "cost": 2}],
            "skiff_listeners": [{"name": "echo", "port": lis_n}],
        },
    }


def snapshot(base_dir) -> dict:
    """Every file of every site (path -> bytes) and the running routers."""
    files = {
        str(p.relative_to(base_dir)): p.read_bytes()
        for p in sorted(base_dir.rglob("*"))
        if p.is_file() and "logs" not in p.parts and "run" not in p.parts
    }
    return {"files": files, "pids": sorted(router_pids(base_dir))}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    base_dir = root / "sites"
    ports = free_ports(11)
    hosts = hosts_for(ports[:8])
    state = {"root": root, "base_dir": base_dir, "hosts": hosts, "spare": ports[8:]}
    state["inventory"] = write_inventory(root / "hosts.yml", hosts, base_dir)
    try:
        yield state
    finally:
        run_playbook(state["inventory"], "teardown.yml")
        for pid in router_pids(base_dir):  # only if teardown itself failed
            os.kill(pid, signal.SIGTERM)


def plan_run(fleet, hosts, name: str, *extra: str):
    inventory = write_inventory(fleet["root"] / f"{name}.yml", hosts, fleet["base_dir"])
    dest = fleet["root"] / f"{name}.json"
    run = run_playbook(inventory, "plan.yml", "-e", f"skiff_plan_file={dest}", *extra)
    plan = json.loads(dest.read_text()) if dest.exists() else None
    return run, plan


def test_plan_of_a_fresh_fleet_creates_nothing(fleet) -> None:
    run, plan = plan_run(fleet, fleet["hosts"], "fresh")
    assert run.returncode == 0, run.output[-4000:]
    assert sorted(plan["sites"]["create"]) == ["east", "north", "west"]
    assert sorted((link["from"], link["to"], link["cost"]) for link in plan["links"]["add"]) == [
        ("north", "west", 2),
        ("west", "east", 1),
    ]
    assert plan["reachable"] == {"echo": ["north", "west"]}
    assert plan["changed"] and plan["errors"] == []
    assert "Plan for 3 sites (a check run: nothing was changed)" in run.output
    assert not fleet["base_dir"].exists() or list(fleet["base_dir"].iterdir()) == []


def test_apply_then_plan_of_the_converged_fleet_is_empty(fleet) -> None:
    first = run_playbook(fleet["inventory"], "site.yml")
    assert first.returncode == 0, first.output[-4000:]
    before = snapshot(fleet["base_dir"])
    run, plan = plan_run(fleet, fleet["hosts"], "converged")
    assert run.returncode == 0, run.output[-4000:]
    assert not plan["changed"], plan
    assert "No changes: every site already is what the inventory says." in run.output
    assert snapshot(fleet["base_dir"]) == before


def test_plan_of_a_change_lists_links_services_and_reachability(fleet) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    hosts["north"]["skiff_links"][0]["cost"] = 5
    hosts["north"]["skiff_listeners"].append(
        {"name": "echo-too", "routing_key": "echo", "port": fleet["spare"][0]}
    )
    hosts["west"]["skiff_listeners"] = []
    before = snapshot(fleet["base_dir"])
    run, plan = plan_run(fleet, hosts, "change")
    assert run.returncode == 0, run.output[-4000:]
    assert plan["links"]["update"] == [
        {"from": "north", "to": "west", "name": "west", "cost": 5, "cost_before": 2}
    ]
    assert [(s["site"], s["kind"], s["name"]) for s in plan["services"]["add"]] == [
        ("north", "listener", "echo-too")
    ]
    assert [(s["site"], s["name"]) for s in plan["services"]["remove"]] == [("west", "echo")]
    assert plan["unreachable"] == {"echo": [{"site": "west", "why": "listener removed"}]}
    text = run.output[run.output.index("Plan for 3 sites") :]
    assert "Links to re-cost (1):\n  north -> west  cost 2 -> 5" in text
    assert "Services that become unreachable (1):\n  'echo' at west (listener removed)" in text
    assert snapshot(fleet["base_dir"]) == before


NETWORK_PLAY = """
- name: Read the live network from every site
  hosts: skiff_sites
  gather_facts: false
  tasks:
    - name: This site's view
      skiff.fleet.network_info:
        base_dir: "{{ skiff_base_dir }}"
        sites: ["{{ inventory_hostname }}"]
      register: view

    - name: The whole network, joined
      ansible.builtin.copy:
        content: "{{ ansible_play_hosts | map('extract', hostvars, 'view') | skiff.fleet.merge_networks | to_json }}"
        dest: "{{ dest }}"
        mode: "0644"
      delegate_to: localhost
      run_once: true
"""


def test_network_info_returns_the_live_network(fleet) -> None:
    play = fleet["root"] / "network.yml"
    play.write_text(NETWORK_PLAY)
    dest = fleet["root"] / "network.json"
    before = snapshot(fleet["base_dir"])
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(fleet["inventory"]),
            str(play),
            "-e",
            f"dest={dest}",
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    network = json.loads(dest.read_text())
    assert sorted(network["sites"]) == ["east", "north", "west"]
    assert all(site["read"] and site["ready"] for site in network["sites"].values())
    assert [(x["from"], x["to"], x["cost"], x["state"]) for x in network["links"]] == [
        ("north", "west", 2, "up"),
        ("west", "east", 1, "up"),
    ]
    assert network["routing_keys"]["echo"] == {
        "listeners": ["north", "west"],
        "connectors": ["east"],
        "unreachable_at": [],
        "reachable": True,
    }
    assert network["unreachable_keys"] == [] and network["unreadable"] == []
    whats = {(c["site"], c["what"]) for c in network["certificates"]}
    assert ("east", "server certificate") in whats
    assert ("west", "link 'east' client certificate") in whats
    assert all(c["days_left"] > 300 for c in network["certificates"])
    # From any one site, the router itself shows the same at a glance.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "skiff_router",
            "status",
            "--network",
            "--config",
            str(fleet["base_dir"] / "north" / "router.json"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("network as seen from north (interior): 3 routers, 3 reachable")
    assert snapshot(fleet["base_dir"]) == before


def test_site_check_mode_ends_with_the_same_plan(fleet) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    hosts["north"]["skiff_links"][0]["cost"] = 5
    inventory = write_inventory(fleet["root"] / "check.yml", hosts, fleet["base_dir"])
    before = snapshot(fleet["base_dir"])
    run = run_playbook(inventory, "site.yml", "--check")
    assert run.returncode == 0, run.output[-4000:]
    assert "Links to re-cost (1):\n  north -> west  cost 2 -> 5" in run.output
    assert run.changed() == {"east": 0, "west": 0, "north": 1}
    assert snapshot(fleet["base_dir"]) == before


@pytest.mark.parametrize(
    ("change", "hosts_failing", "message"),
    [
        (
            lambda h: h["north"]["skiff_listeners"].append({"name": "db", "port": 1}),
            {"north"},
            "host 'north': skiff_listeners[1].routing_key: no connector in the fleet serves "
            "routing key 'db'",
        ),
        (
            lambda h: h["east"].update(skiff_links=[{"to": "west"}]),
            {"east", "west"},
            "sites 'east' and 'west' dial each other",
        ),
        (
            lambda h: h["north"].update(skiff_links=[]),
            {"north"},
            "host 'north': skiff_listeners: none of this site's listeners would reach a connector",
        ),
    ],
    ids=["unserved-listener", "link-cycle", "listeners-lose-connectors"],
)
def test_fleet_checks_stop_the_run_before_any_change(fleet, change, hosts_failing, message) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    change(hosts)
    inventory = write_inventory(fleet["root"] / "bad.yml", hosts, fleet["base_dir"])
    before = snapshot(fleet["base_dir"])
    run = run_playbook(inventory, "site.yml")
    assert run.returncode != 0
    assert message in run.output, run.output[-4000:]
    recap = run.recap()
    assert {host for host, counts in recap.items() if counts["failed"]} == hosts_failing
    assert all(counts["changed"] == 0 for counts in recap.values())
    assert snapshot(fleet["base_dir"]) == before


def test_intended_findings_only_warn(fleet) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    hosts["north"]["skiff_listeners"].append({"name": "db", "port": fleet["spare"][1]})
    hosts["north"]["skiff_intended"] = ["unserved-listener"]
    inventory = write_inventory(fleet["root"] / "intended.yml", hosts, fleet["base_dir"])
    run = run_playbook(inventory, "site.yml", "--check")
    assert run.returncode == 0, run.output[-4000:]
    assert "[WARNING]: host 'north': skiff_listeners[1].routing_key: no connector" in run.output
    assert "(marked intended)" in run.output


def test_a_site_that_cannot_be_planned_is_named_and_nothing_changes(fleet) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    # A host nothing answers on: ssh to a closed loopback port.
    hosts["south"] = {
        "ansible_connection": "ssh",
        "ansible_host": "127.0.0.1",
        "ansible_port": 1,
        "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes",
        "skiff_admin_port": fleet["spare"][2],
        "skiff_connectors": [{"name": "south-db", "host": "127.0.0.1", "port": 5432}],
    }
    before = snapshot(fleet["base_dir"])
    run, plan = plan_run(fleet, hosts, "unreachable")
    assert run.returncode != 0
    assert [(e["site"], e["why"].split(":")[0]) for e in plan["errors"]] == [
        ("south", "unreachable")
    ]
    assert "Failed to connect to the host" in plan["errors"][0]["why"]
    text = run.output[run.output.index("Plan for 4 sites") :]
    assert "Cannot plan (nothing was planned for these sites) (1):\n  south: unreachable:" in text
    assert snapshot(fleet["base_dir"]) == before
