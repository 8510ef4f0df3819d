"""playbooks/site.yml end to end: three local sites on loopback, real TLS, real bytes.

north -> west -> east: north's flows cross two links. Runs the playbook the
way a user does, then checks convergence, byte-exact traffic, idempotence,
check mode, bad inventories that must not disturb the running fleet, and teardown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from fleet_harness import (
    EchoServer,
    echo_through,
    free_ports,
    router_pids,
    run_playbook,
    write_inventory,
)

pytestmark = pytest.mark.integration


def fleet_hosts(ports: list[int]) -> dict:
    """north (edge) -> west -> east, with east serving the echo key."""
    admin_e, admin_w, admin_n, link_e, link_w, lis_w, lis_n, backend = ports
    return {
        "east": {
            "skiff_admin_port": admin_e,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link_e},
            "skiff_connectors": [
                {"name": "echo", "routing_key": "echo", "host": "127.0.0.1", "port": backend}
            ],
        },
        "west": {
            "skiff_admin_port": admin_w,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link_w},
            "skiff_links": [{"to": "east", "cost": 1}],
            "skiff_listeners": [{"name": "echo", "routing_key": "echo", "port": lis_w}],
        },
        "north": {
            # An edge router: it dials an interior and never carries transit traffic.
            "skiff_router_mode": "edge",
            "skiff_admin_port": admin_n,
            "skiff_links": [{"to": "west", "cost": 2}],
            "skiff_listeners": [{"name": "echo", "routing_key": "echo", "port": lis_n}],
        },
    }


def test_check_mode_on_a_fresh_fleet_predicts_every_change_and_makes_none(tmp_path) -> None:
    base_dir = tmp_path / "sites"
    inventory = write_inventory(tmp_path / "hosts.yml", fleet_hosts(free_ports(8)), base_dir)
    check = run_playbook(inventory, "site.yml", "--check", "--diff")
    assert check.returncode == 0, check.output[-4000:]
    changed = check.changed()
    assert set(changed) == {"east", "west", "north"}
    assert all(count > 0 for count in changed.values()), changed
    # The run ends with the plan of the whole fleet.
    plan = check.output[check.output.index("Plan for 3 sites") :]
    assert "Sites to create (3):" in plan
    assert "west -> east  cost 1 (its token is issued during the run)" in plan
    assert "north -> west  cost 2 (its token is issued during the run)" in plan
    assert "'echo' at north, west" in plan  # becomes reachable there
    assert not base_dir.exists() or list(base_dir.iterdir()) == []
    assert router_pids(base_dir) == []


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    base_dir = root / "sites"
    ports = free_ports(9)
    hosts = fleet_hosts(ports[:8])
    lis_w, lis_n, backend, spare = ports[5:9]
    echo = EchoServer(backend)
    inventory = write_inventory(root / "hosts.yml", hosts, base_dir)
    state = {
        "root": root,
        "base_dir": base_dir,
        "hosts": hosts,
        "inventory": inventory,
        "ports": {"west": lis_w, "north": lis_n, "spare": spare},
        "first": run_playbook(inventory, "site.yml"),
    }
    try:
        yield state
    finally:
        run_playbook(inventory, "teardown.yml")
        for pid in router_pids(base_dir):  # only if teardown itself failed
            os.kill(pid, signal.SIGTERM)
        echo.close()


def test_first_run_converges(fleet) -> None:
    first = fleet["first"]
    assert first.returncode == 0, first.output[-4000:]
    assert set(first.changed()) == {"east", "west", "north"}
    assert all(count > 0 for count in first.changed().values())


def test_bytes_cross_one_and_two_links_intact(fleet) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    for site in ("west", "north"):
        answer = echo_through(fleet["ports"][site], payload)
        assert hashlib.sha256(answer).hexdigest() == hashlib.sha256(payload).hexdigest(), site


def test_every_site_sees_every_other(fleet) -> None:
    import urllib.request

    for site, site_vars in fleet["hosts"].items():
        url = f"http://127.0.0.1:{site_vars['skiff_admin_port']}/v1/status"
        token = (fleet["base_dir"] / site / "admin" / "token").read_text().strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.load(response)
        assert status["site"] == site
        reachable = {r["id"] for r in status["routers"] if r["reachable"]}
        assert reachable == {"east", "west", "north"}
        assert status["routing_keys"]["echo"]["connectors"] == ["east"]
        assert status["mode"] == ("edge" if site == "north" else "interior")


def _wait_task(output: str) -> str:
    """The output of the convergence task."""
    return output.split("The site sees its network and serves its listeners")[1].split("TASK [")[0]


def test_second_run_changes_nothing(fleet) -> None:
    again = run_playbook(fleet["inventory"], "site.yml")
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed() == {"east": 0, "west": 0, "north": 0}
    # Nothing changed anywhere: no site polls its router's status.
    waited = _wait_task(again.output)
    assert "ok: [" not in waited and waited.count("skipping: [") == 3, waited
    forced = run_playbook(fleet["inventory"], "site.yml", "-e", "skiff_wait_when_unchanged=true")
    assert forced.returncode == 0, forced.output[-4000:]
    assert _wait_task(forced.output).count("ok: [") == 3


def _status(fleet, site: str) -> dict:
    import urllib.request

    port = fleet["hosts"][site]["skiff_admin_port"]
    token = (fleet["base_dir"] / site / "admin" / "token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.mark.parametrize(
    ("variable", "changed"),
    [
        # Every server certificate and token.
        ("skiff_rotate", ["east/tls/server.crt", "west/links/east/tls.crt",
                          "north/links/west/tls.crt"]),
        # The CAs of both sites that accept links, and so everything they signed.
        ("skiff_rotate_ca", ["east/ca/ca.crt", "west/ca/ca.crt", "west/links/east/ca.crt",
                             "north/links/west/ca.crt", "east/tls/server.crt"]),
    ],
)  # fmt: skip
def test_rotation_replaces_credentials_without_dropping_an_open_flow(
    fleet, variable: str, changed: list[str]
) -> None:
    """-e skiff_rotate=now issues every server certificate and token again, and
    skiff_rotate_ca=now replaces the CAs as well; each dialing site dials its new
    link before it lets the old one go, so a flow open across both links
    (north -> west -> east) keeps every byte."""
    base = fleet["base_dir"]
    files = [base / path for path in changed]
    before = [f.read_bytes() for f in files]
    with socket.create_connection(("127.0.0.1", fleet["ports"]["north"]), timeout=30) as flow:
        sent = received = b""
        for round_ in range(2):
            chunk = os.urandom(256 * 1024)
            flow.sendall(chunk)
            sent += chunk
            while len(received) < len(sent):
                received += flow.recv(65536)
            if round_ == 0:
                rotated = run_playbook(fleet["inventory"], "site.yml", "-e", f"{variable}=now")
                assert rotated.returncode == 0, rotated.output[-4000:]
                assert all(f.read_bytes() != b for f, b in zip(files, before, strict=True))
                # The old links still carry the open flow; new flows took the new ones.
                # (Each worker of a router dials the link: one of them carries the flow.)
                # A worker's old link without flows closes within a tick or so.
                for site, link in (("north", "west"), ("west", "east")):
                    deadline = time.monotonic() + 20
                    while True:
                        links = _status(fleet, site)["links"]
                        out = [x for x in links if x["direction"] == "outgoing"]
                        assert {(x["name"], x["state"]) for x in out} == {(link, "up")}, links
                        if sum(x["draining"] for x in out) == 1:
                            break
                        assert time.monotonic() < deadline, links
                        time.sleep(0.2)
        assert received == sent
        flow.shutdown(socket.SHUT_WR)
        assert flow.recv(1) == b""
    deadline = time.monotonic() + 20
    while any(
        x.get("draining") for site in ("north", "west") for x in _status(fleet, site)["links"]
    ):
        assert time.monotonic() < deadline, "the old links did not close after their flow"
        time.sleep(0.3)
    payload = os.urandom(512 * 1024)
    assert echo_through(fleet["ports"]["north"], payload) == payload
    again = run_playbook(fleet["inventory"], "site.yml")
    assert again.changed() == {"east": 0, "west": 0, "north": 0}, again.output[-4000:]


def test_limited_run_still_links_to_sites_outside_it(fleet) -> None:
    # north's link needs a token from west, which is not in this run: it is
    # issued by delegation instead of through hostvars.
    limited = run_playbook(fleet["inventory"], "site.yml", "--limit", "north")
    assert limited.returncode == 0, limited.output[-4000:]
    assert limited.changed() == {"north": 0}
    assert "Tokens from sites outside this run" in limited.output


def test_check_mode_on_converged_fleet_predicts_nothing(fleet) -> None:
    check = run_playbook(fleet["inventory"], "site.yml", "--check", "--diff")
    assert check.returncode == 0, check.output[-4000:]
    assert check.changed() == {"east": 0, "west": 0, "north": 0}


def test_check_mode_predicts_a_new_listener_and_changes_nothing(fleet) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    hosts["north"]["skiff_listeners"].append(
        {"name": "echo-too", "routing_key": "echo", "port": fleet["ports"]["spare"]}
    )
    inventory = write_inventory(fleet["root"] / "more.yml", hosts, fleet["base_dir"])
    config = fleet["base_dir"] / "north" / "router.json"
    before = config.read_bytes()
    check = run_playbook(inventory, "site.yml", "--check", "--diff")
    assert check.returncode == 0, check.output[-4000:]
    assert check.changed() == {"east": 0, "west": 0, "north": 1}
    assert "echo-too" in check.output  # the diff shows what would be added
    assert config.read_bytes() == before


def _assert_fleet_still_serves(fleet) -> None:
    payload = os.urandom(64 * 1024)
    assert echo_through(fleet["ports"]["north"], payload) == payload


@pytest.mark.parametrize(
    ("host", "change", "message"),
    [
        (
            "north",
            lambda h: h["north"].update(skiff_links=[{"to": "nowhere"}]),
            "host 'north': skiff_links[0].to: 'nowhere' is not a host in the skiff_sites group",
        ),
        (
            "west",
            lambda h: h["west"]["skiff_listeners"][0].update(port=70000),
            "host 'west': skiff_listeners[0].port: must be an integer 1-65535, got 70000",
        ),
        (
            "north",
            lambda h: h["north"].update(skiff_admin_port=h["east"]["skiff_admin_port"]),
            "host 'north': skiff_admin_port: port",
        ),
        (
            "east",
            lambda h: h["east"].update(skiff_platform="mainframe"),
            "host 'east': skiff_platform: unknown platform 'mainframe'; use one of: local",
        ),
    ],
    ids=["link-to-non-site", "port-out-of-range", "duplicated-port", "unknown-platform"],
)
def test_bad_inventory_fails_clearly_and_leaves_the_fleet_running(
    fleet, host, change, message
) -> None:
    hosts = copy.deepcopy(fleet["hosts"])
    change(hosts)
    inventory = write_inventory(fleet["root"] / "bad.yml", hosts, fleet["base_dir"])
    configs = {site: (fleet["base_dir"] / site / "router.json").read_bytes() for site in hosts}
    pids = sorted(router_pids(fleet["base_dir"]))
    run = run_playbook(inventory, "site.yml")
    assert run.returncode != 0
    assert message in run.output, run.output[-4000:]
    assert run.recap()[host]["failed"] == 1
    assert {
        site: (fleet["base_dir"] / site / "router.json").read_bytes() for site in hosts
    } == configs
    assert sorted(router_pids(fleet["base_dir"])) == pids
    _assert_fleet_still_serves(fleet)


def test_teardown_removes_everything(fleet) -> None:
    # Runs last in this module (pytest keeps file order).
    down = run_playbook(fleet["inventory"], "teardown.yml")
    assert down.returncode == 0, down.output[-4000:]
    deadline = time.monotonic() + 10
    while router_pids(fleet["base_dir"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert router_pids(fleet["base_dir"]) == []
    assert list(Path(fleet["base_dir"]).glob("*/router.json")) == []
    again = run_playbook(fleet["inventory"], "teardown.yml")
    assert again.returncode == 0 and again.changed() == {"east": 0, "west": 0, "north": 0}
