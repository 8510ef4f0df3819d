"""A site that leaves the inventory loses its credentials everywhere it linked:
by `site.yml` with skiff_prune (the default), and by `playbooks/decommission.yml`.
Three local sites on loopback, real TLS: north dials west, west dials east."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from fleet_harness import admin_status as status
from fleet_harness import free_ports, router_pids, run_playbook, until, write_inventory
from test_fleet import fleet_hosts

pytestmark = pytest.mark.integration


def accepted(base_dir: Path, site: str) -> list[str]:
    config = json.loads((base_dir / site / "router.json").read_text())
    # Each token is listed with its certificate and the next one: its name once.
    return list(dict.fromkeys(c["name"] for c in config.get("link_clients", [])))


def link_up(base_dir: Path, site: str, port: int, name: str) -> bool:
    links = status(base_dir, site, port)["links"]
    return any(link["name"] == name and link["state"] == "up" for link in links)


def test_a_site_that_leaves_is_revoked_by_prune_and_by_decommission(tmp_path) -> None:
    base_dir = tmp_path / "sites"
    hosts = fleet_hosts(free_ports(8))
    ports = {name: site_vars["skiff_admin_port"] for name, site_vars in hosts.items()}
    inventory = write_inventory(tmp_path / "hosts.yml", hosts, base_dir)
    try:
        first = run_playbook(inventory, "site.yml")
        assert first.returncode == 0, first.output[-4000:]
        assert accepted(base_dir, "west") == ["north"]
        assert accepted(base_dir, "east") == ["west"]
        until(lambda: link_up(base_dir, "north", ports["north"], "west"), "north linked")

        # --limit west with a new link port for west: north (outside the run) dials it,
        # so the run stops before changing anything and names north.
        moved = {k: dict(v) for k, v in hosts.items()}
        moved["west"]["skiff_link_endpoint"] = {"host": "127.0.0.1", "port": free_ports(1)[0]}
        moved_inventory = write_inventory(tmp_path / "moved.yml", moved, base_dir)
        config = (base_dir / "west" / "router.json").read_bytes()
        limited = run_playbook(moved_inventory, "site.yml", "--limit", "west")
        assert limited.returncode != 0
        assert "which the sites dialing it outside this run depend on: north" in limited.output
        assert (base_dir / "west" / "router.json").read_bytes() == config
        assert link_up(base_dir, "north", ports["north"], "west")

        # north leaves the inventory (its router still runs): west prunes its token.
        without_north = {k: v for k, v in hosts.items() if k != "north"}
        smaller = write_inventory(tmp_path / "without-north.yml", without_north, base_dir)
        pruned = run_playbook(smaller, "site.yml")
        assert pruned.returncode == 0, pruned.output[-4000:]
        assert accepted(base_dir, "west") == []
        assert not (base_dir / "west" / "tokens" / "north").exists()
        until(lambda: not link_up(base_dir, "north", ports["north"], "west"), "north cut off")
        # Its redials are refused at the handshake, and keep being refused.
        until(
            lambda: status(base_dir, "west", ports["west"])["link_access"]["refused_credentials"]
            >= 2,
            "north's redials refused",
        )
        assert not link_up(base_dir, "north", ports["north"], "west")

        # Back in the inventory: a new token, linked again.
        back = run_playbook(inventory, "site.yml")
        assert back.returncode == 0, back.output[-4000:]
        until(lambda: link_up(base_dir, "north", ports["north"], "west"), "north relinked")

        # decommission.yml revokes north everywhere and removes it.
        gone = run_playbook(inventory, "decommission.yml", "-e", "site=north")
        assert gone.returncode == 0, gone.output[-4000:]
        assert accepted(base_dir, "west") == [] and accepted(base_dir, "east") == ["west"]
        assert not (base_dir / "north").exists()
        assert sorted(p.name for p in base_dir.iterdir()) == ["east", "west"]
        assert link_up(base_dir, "west", ports["west"], "east")  # the rest goes on
    finally:
        run_playbook(inventory, "teardown.yml")
        for pid in router_pids(base_dir):  # only if teardown itself failed
            os.kill(pid, signal.SIGTERM)
