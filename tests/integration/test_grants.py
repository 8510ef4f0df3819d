"""A one-time grant for a peer outside the inventory, end to end with playbooks/site.yml.

Three inventories, as three organisations would have: east's (it issues the grant
with skiff_external_tokens), globex's (it redeems the grant from the file with
skiff_external_links) and initech's (it got a copy of the same file). Local sites on
loopback, real TLS, real bytes: globex's flows reach east's service, initech is
refused with "grant used", and re-runs of every inventory change nothing and prune
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat

import pytest
from fleet_harness import (
    EchoServer,
    admin_status,
    echo_through,
    free_ports,
    router_pids,
    run_playbook,
    until,
    write_inventory,
)

pytestmark = pytest.mark.integration


def test_a_grant_is_redeemed_by_one_outside_site_and_refused_to_a_copy(tmp_path) -> None:
    admin_e, admin_g, admin_i, link_e, lis_g, backend = free_ports(6)
    grant_file = tmp_path / "globex.grant"
    east_hosts = {
        "east": {
            "skiff_admin_port": admin_e,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link_e},
            "skiff_connectors": [{"name": "echo", "host": "127.0.0.1", "port": backend}],
            # routers: the partner may link from two routers at once (replicas, say).
            "skiff_external_tokens": [{"name": "partner", "dest": str(grant_file), "routers": 2}],
        }
    }
    globex_file = tmp_path / "globex" / "east.grant"
    globex_hosts = {
        "globex": {
            "skiff_admin_port": admin_g,
            "skiff_external_links": [{"name": "east", "token_file": str(globex_file)}],
            "skiff_listeners": [{"name": "echo", "port": lis_g}],
            # Its key is served outside this inventory, by east.
            "skiff_intended": ["unserved-listener"],
        }
    }
    initech_file = tmp_path / "initech" / "east.grant"
    initech_hosts = {
        "initech": {
            "skiff_admin_port": admin_i,
            "skiff_external_links": [{"name": "east", "token_file": str(initech_file)}],
        }
    }
    inventories = {
        name: write_inventory(tmp_path / f"{name}.yml", hosts, tmp_path / name / "sites")
        for name, hosts in (("east", east_hosts), ("globex", globex_hosts),
                            ("initech", initech_hosts))
    }  # fmt: skip
    echo = EchoServer(backend)
    try:
        issued = run_playbook(inventories["east"], "site.yml")
        assert issued.returncode == 0, issued.output[-4000:]
        assert stat.S_IMODE(grant_file.stat().st_mode) == 0o600
        config = json.loads((tmp_path / "east" / "sites" / "east" / "router.json").read_text())
        assert {(c["name"], c["routers"]) for c in config["link_clients"]} == {("partner", 2)}
        # Handed over: each partner keeps the file readable by its owner only.
        for copy in (globex_file, initech_file):
            copy.parent.mkdir()
            shutil.copy2(grant_file, copy)
        grant_file.unlink()

        redeemed = run_playbook(inventories["globex"], "site.yml")
        assert redeemed.returncode == 0, redeemed.output[-4000:]
        payload = os.urandom(1024 * 1024)
        answer = echo_through(lis_g, payload)
        assert hashlib.sha256(answer).digest() == hashlib.sha256(payload).digest()
        east_base = tmp_path / "east" / "sites"
        grants = admin_status(east_base, "east", admin_e)["link_access"]["grants"]
        assert grants["partner"]["redeemed_by"] == ["globex"]
        assert grants["partner"]["state"] == "redeemed"

        # The copy links nowhere: east refuses it, and initech's run fails at once
        # naming the site, the link and why; its router keeps running.
        copied = run_playbook(inventories["initech"], "site.yml")
        assert copied.returncode != 0, copied.output[-4000:]
        assert (
            "site 'initech': links: links refused for good: east (closed by peer: "
            "grant used)" in copied.output
        ), copied.output[-4000:]
        assert "PRIVATE KEY" not in copied.output
        initech_base = tmp_path / "initech" / "sites"
        assert router_pids(initech_base)

        def refused() -> bool:
            links = admin_status(initech_base, "initech", admin_i)["links"]
            return any(lk["error"] == "closed by peer: grant used" for lk in links)

        until(refused, "initech told the grant is used", timeout=30)
        east_status = admin_status(east_base, "east", admin_e)
        assert {lk["peer"] for lk in east_status["links"]} == {"globex"}
        assert east_status["link_access"]["grants_refused"] >= 1

        # Re-runs change nothing: the grant is kept (its file is not written again),
        # and the outside link is not pruned.
        for name in ("east", "globex"):
            again = run_playbook(inventories[name], "site.yml")
            assert again.returncode == 0, again.output[-4000:]
            assert again.changed() == {name: 0}, again.output[-4000:]
        assert not grant_file.exists()
        answer = echo_through(lis_g, payload)
        assert hashlib.sha256(answer).digest() == hashlib.sha256(payload).digest()
    finally:
        for name, inventory in inventories.items():
            run_playbook(inventory, "teardown.yml")
            for pid in router_pids(tmp_path / name / "sites"):
                os.kill(pid, signal.SIGTERM)
        echo.close()
