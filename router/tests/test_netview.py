"""`skiff-router status --network`: the network at a glance from one router's status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
from router_testkit import Site

from skiff_router.netview import format_network

STATUS = {
    "site": "west",
    "mode": "interior",
    "links": [
        {
            "name": "east",
            "direction": "outgoing",
            "peer": "east",
            "cost": 1,
            "state": "up",
            "error": None,
        },
        {
            "name": "north",
            "direction": "incoming",
            "peer": "north",
            "cost": 2,
            "state": "up",
            "error": None,
        },
    ],
    "routers": [
        {"id": "west", "mode": "interior", "reachable": True, "cost": 0, "next_hop": None},
        {"id": "east", "mode": "interior", "reachable": True, "cost": 1, "next_hop": "east"},
        {"id": "north", "mode": "edge", "reachable": True, "cost": 2, "next_hop": "north"},
        {"id": "south", "mode": "interior", "reachable": False, "cost": None, "next_hop": None},
    ],
    "listeners": [
        {"name": "db", "routing_key": "db", "host": "127.0.0.1", "port": 1, "state": "listening"},
        {
            "name": "old",
            "routing_key": "gone",
            "host": "127.0.0.1",
            "port": 2,
            "state": "listening",
        },
    ],
    "routing_keys": {
        "db": {"connectors": ["east"], "listeners": ["north", "west"], "reachable": True},
        "gone": {"connectors": [], "listeners": ["west"], "reachable": False},
    },
}


def test_format_network_shows_routers_links_keys_and_what_is_wrong():
    text = format_network(STATUS)
    lines = text.splitlines()
    assert lines[0] == (
        "network as seen from west (interior): 4 routers, 3 reachable, 2 routing keys"
    )
    assert any(line.split() == ["west", "(here)", "interior", "yes", "0", "-"] for line in lines)
    assert any(line.split() == ["north", "edge", "yes", "2", "north"] for line in lines)
    assert any(line.split() == ["south", "interior", "NO", "-", "-"] for line in lines)
    assert any(line.split() == ["east", "outgoing", "east", "1", "up", "-"] for line in lines)
    assert any(line.split() == ["db", "east", "north,west", "yes"] for line in lines)
    assert any(line.split() == ["gone", "-", "west", "NO"] for line in lines)
    assert lines[-2:] == [
        "listeners here with no reachable connector: gone",
        "routers not reachable from here: south",
    ]


def test_format_network_of_a_healthy_lone_router():
    text = format_network(
        {"site": "solo", "routers": [{"id": "solo", "reachable": True, "cost": 0}]}
    )
    assert "links of solo:\n  (none)" in text
    assert text.endswith("every router is reachable and every listener here has a connector")


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/status", timeout=2) as resp:
        return json.loads(resp.read())


@pytest.mark.integration
def test_status_network_against_two_linked_routers(tmp_path: Path) -> None:
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east, cost=3)
    east.connect("db", 9)
    west.listen("db")
    procs = []
    try:
        for site in (east, west):
            log = (tmp_path / f"{site.name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "skiff_router", "run", "--config", str(site.write())],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with suppress(OSError, ValueError, KeyError):
                if _status(west.admin_url)["routing_keys"]["db"]["reachable"]:
                    break
            time.sleep(0.1)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "skiff_router",
                "status",
                "--network",
                "--admin",
                west.admin_url,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert (
            lines[0]
            == "network as seen from west (interior): 2 routers, 2 reachable, 1 routing keys"
        )
        assert any(line.split() == ["east", "interior", "yes", "3", "east"] for line in lines)
        assert any(line.split() == ["db", "east", "west", "yes"] for line in lines)
        # From /v1/network: every router's links, and the counts here.
        assert "links in the network (from link state):" in lines
        assert any(line.split() == ["west", "east", "3", "up"] for line in lines)
        assert any(line.split() == ["east", "west", "3", "up"] for line in lines)
        assert "flows through west per routing key:" in lines
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
