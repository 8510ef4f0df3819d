"""network_info's merge: site views (canned /v1/status documents) -> the network."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.network import (
    NetworkInfoParams,
    merge,
    run_network_info,
    site_certificates,
    site_view,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import FileSecretStore, SitePaths

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def status(site, links=(), routers=(), listeners=(), connectors=(), keys=None, mode="interior"):
    return {
        "site": site,
        "mode": mode,
        "version": "0.1.0",
        "ready": True,
        "config": {"sha256": f"sha-{site}", "error": None},
        "links": list(links),
        "routers": list(routers),
        "listeners": list(listeners),
        "connectors": list(connectors),
        "routing_keys": keys or {},
        "flows": {"open": 0},
    }


def out(name, peer, cost=1, state="up", error=None):
    return {
        "name": name,
        "direction": "outgoing",
        "peer": peer,
        "cost": cost,
        "state": state,
        "error": error,
    }


def inc(peer, cost=1):
    return {
        "name": peer,
        "direction": "incoming",
        "peer": peer,
        "cost": cost,
        "state": "up",
        "error": None,
    }


def router(rid, reachable=True, mode="interior"):
    return {"id": rid, "reachable": reachable, "mode": mode}


def listener(key, port):
    return {
        "name": key,
        "routing_key": key,
        "host": "127.0.0.1",
        "port": port,
        "state": "listening",
    }


EAST = status(
    "east",
    links=[inc("west")],
    routers=[router("east"), router("west"), router("north", mode="edge")],
    connectors=[{"name": "db", "routing_key": "db", "host": "127.0.0.1", "port": 5432}],
    keys={"db": {"connectors": ["east"], "listeners": ["west", "north"], "reachable": True}},
)
WEST = status(
    "west",
    links=[out("east", "east", 1), inc("north", 2)],
    routers=[router("east"), router("west"), router("north", mode="edge")],
    listeners=[listener("db", 15432), listener("cache", 16379)],
    keys={
        "db": {"connectors": ["east"], "listeners": ["west", "north"], "reachable": True},
        "cache": {"connectors": [], "listeners": ["west"], "reachable": False},
    },
)


def test_two_views_make_one_network():
    network = merge([site_view(EAST, source="a"), site_view(WEST, source="b")], now=NOW)
    assert sorted(network["sites"]) == ["east", "north", "west"]
    assert network["sites"]["east"]["read"] and network["sites"]["west"]["read"]
    # north was not read: known from the others' views, with who reaches it.
    assert network["sites"]["north"] == {
        "mode": "edge",
        "read": False,
        "reachable_from": ["east", "west"],
    }
    assert network["links"] == [
        {
            "from": "north",
            "to": "west",
            "name": "west",
            "cost": 2,
            "state": "up",
            "error": None,
            "seen_by": "west",
        },
        {
            "from": "west",
            "to": "east",
            "name": "east",
            "cost": 1,
            "state": "up",
            "error": None,
            "seen_by": "west",
        },
    ]
    assert network["routing_keys"]["db"] == {
        "listeners": ["north", "west"],
        "connectors": ["east"],
        "unreachable_at": [],
        "reachable": True,
    }
    assert network["routing_keys"]["cache"]["unreachable_at"] == ["west"]
    assert network["unreachable_keys"] == ["cache"]
    assert network["unreadable"] == []


def test_a_link_down_and_an_unreadable_site_are_reported():
    west = dict(WEST, links=[out("east", "east", 1, "connecting", "connection refused")])
    network = merge(
        [site_view(west), site_view(None, name="east", source="/x/east", error="no answer")]
    )
    assert network["links"][0]["state"] == "connecting"
    assert network["links"][0]["error"] == "connection refused"
    assert network["unreadable"] == [{"site": "east", "source": "/x/east", "why": "no answer"}]
    assert network["sites"]["east"]["read"] is False


def test_certificates_are_sorted_by_expiry_with_days_left():
    views = [
        site_view(
            EAST,
            certificates=[
                {"what": "site CA", "path": "p", "not_after": "2030-01-01T00:00:00+00:00"}
            ],
        ),
        site_view(
            WEST,
            certificates=[
                {
                    "what": "link 'east' client certificate",
                    "path": "q",
                    "not_after": "2026-01-11T00:00:00+00:00",
                }
            ],
        ),
    ]
    network = merge(views, now=NOW)
    assert [(c["site"], c["what"], c["days_left"]) for c in network["certificates"]] == [
        ("west", "link 'east' client certificate", 10),
        ("east", "site CA", 1461),
    ]


def test_reads_local_sites_through_their_platform_with_certificates(tmp_path, services, fleet):
    base = str(tmp_path)
    run_site(
        SiteParams(
            name="east",
            base_dir=base,
            router_python="py",
            link_access=True,
            link_endpoint={"host": "127.0.0.1", "port": 55671},
        ),
        False,
        **services,
    )
    run_site(
        SiteParams(name="west", base_dir=base, router_python="py", admin_port=9192),
        False,
        **services,
    )
    fleet[tmp_path / "west"].running = False
    result = run_network_info(
        NetworkInfoParams(base_dir=base), True, platform_factory=services["platform_factory"]
    )
    network = result.values["network"]
    assert network["sites"]["east"]["read"]
    assert network["unreadable"][0]["site"] == "west"
    assert "does not answer" in network["unreadable"][0]["why"]
    whats = sorted((c["site"], c["what"]) for c in network["certificates"])
    assert whats == [
        ("east", "server certificate"),
        ("east", "site CA"),
        ("west", "site CA"),
    ]
    assert all("KEY" not in str(c) for c in network["certificates"])
    assert not result.changed
    assert site_certificates(FileSecretStore(SitePaths(tmp_path / "nowhere")), ["x"]) == []


def test_admin_urls_that_do_not_answer_are_named():
    tokens = []

    def refuse(url, timeout, token):
        tokens.append(token)
        raise ConnectionRefusedError(111, "Connection refused")

    result = run_network_info(
        NetworkInfoParams(
            base_dir="/nonexistent", admin_urls=("http://127.0.0.1:1",), admin_token="t" * 20
        ),
        True,
        fetch=refuse,
    )
    assert tokens == ["t" * 20]
    (bad,) = result.values["network"]["unreadable"]
    assert bad["source"] == "http://127.0.0.1:1" and "cannot read http://127.0.0.1:1" in bad["why"]
    with pytest.raises(SkiffError, match=r"timeout: 0 must be > 0"):
        run_network_info(NetworkInfoParams(timeout=0), True)
    with pytest.raises(SkiffError, match="sites: 'Bad' is not a valid site name"):
        run_network_info(NetworkInfoParams(base_dir="/x", sites=("Bad",)), True)
