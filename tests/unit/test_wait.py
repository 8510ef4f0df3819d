from __future__ import annotations

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.wait import (
    WaitParams,
    problems,
    run_wait,
)


def status(**kw) -> dict:
    base = {
        "site": "west",
        "config": {"sha256": "x", "error": None},
        "routers": [
            {"id": "west", "reachable": True, "cost": 0},
            {"id": "east", "reachable": True, "cost": 1},
        ],
        "listeners": [
            {
                "name": "backend",
                "routing_key": "backend",
                "host": "127.0.0.1",
                "port": 18080,
                "state": "listening",
                "error": None,
            }
        ],
        "routing_keys": {
            "backend": {"connectors": ["east"], "listeners": ["west"], "reachable": True}
        },
    }
    base.update(kw)
    return base


def test_converged():
    assert problems(status(), ["east", "west"]) == {}


def test_router_not_reachable():
    found = problems(status(), ["east", "north"])
    assert found == {"routers not reachable": ["north"]}
    routers = [{"id": "east", "reachable": False}]
    assert problems(status(routers=routers), ["east"]) == {"routers not reachable": ["east"]}


def test_a_site_with_replicas_is_reached_through_any_of_its_routers():
    routers = [
        {"id": "west", "site": "west", "reachable": True},
        {"id": "shop.skiff-router-7c9d-a", "site": "shop", "reachable": False},
        {"id": "shop.skiff-router-7c9d-b", "site": "shop", "reachable": True},
        {"id": "north.skiff-router-1", "site": "north", "reachable": False},
    ]
    found = problems(status(routers=routers), ["shop", "north"])
    assert found == {"routers not reachable": ["north"]}


def test_listener_without_connector_and_in_error():
    listeners = [
        {"name": "a", "routing_key": "ka", "host": "h", "port": 1, "state": "listening"},
        {
            "name": "b",
            "routing_key": "kb",
            "host": "h",
            "port": 2,
            "state": "error",
            "error": "in use",
        },
    ]
    found = problems(status(listeners=listeners, routing_keys={}), [])
    assert found == {
        "listeners with no reachable connector": ["a (routing key 'ka')"],
        "listeners in error": ["b (h:2: in use)"],
    }


def test_no_answer():
    assert "admin endpoint not answering" in problems(None, [])


@pytest.fixture
def west(tmp_path, services, fleet):
    run_site(SiteParams(name="west", base_dir=str(tmp_path), router_python="py"), False, **services)
    return fleet[tmp_path / "west"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.1)


def test_waits_until_converged(tmp_path, west, fleet):
    clock = Clock()
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        clock.sleep(seconds)
        if len(polls) == 3:
            west.routers = [{"id": "west", "reachable": True}, {"id": "east", "reachable": True}]

    params = WaitParams(site="west", base_dir=str(tmp_path), routers=["east"], timeout=10)
    result = run_wait(params, False, platform_factory=fleet.factory, clock=clock, sleep=sleep)
    assert not result.changed
    assert len(polls) == 3
    assert result.values["status"]["site"] == "west"


def test_times_out_naming_what_did_not_converge(tmp_path, west, fleet):
    clock = Clock()
    params = WaitParams(site="west", base_dir=str(tmp_path), routers=["east"], timeout=3)
    with pytest.raises(SkiffError) as err:
        run_wait(params, True, platform_factory=fleet.factory, clock=clock, sleep=clock.sleep)
    assert str(err.value) == "site 'west': not converged after 3 s: routers not reachable: east"
    assert err.value.details["problems"] == {"routers not reachable": ["east"]}
    assert clock.now >= 3


def test_router_not_running_fails_at_once(tmp_path, west, fleet):
    west.running = False
    params = WaitParams(site="west", base_dir=str(tmp_path), timeout=30)
    with pytest.raises(SkiffError, match="router is not running"):
        run_wait(params, False, platform_factory=fleet.factory, clock=Clock(), sleep=lambda s: None)


def test_bad_router_name(tmp_path, west, fleet):
    params = WaitParams(site="west", base_dir=str(tmp_path), routers=["East"])
    with pytest.raises(SkiffError, match="site 'west': routers: 'East' is not a valid site name"):
        run_wait(params, False, platform_factory=fleet.factory)


def test_links_must_be_up_and_a_refused_grant_fails_at_once(tmp_path, west, fleet):
    up = {"name": "east", "direction": "outgoing", "state": "up", "error": None}
    incoming = {"name": "north", "direction": "incoming", "state": "draining", "error": None}
    assert problems(status(links=[up, incoming]), ["east"]) == {}
    connecting = dict(up, state="connecting", error="connection refused")
    assert problems(status(links=[connecting]), ["east"]) == {
        "links not up": ["east (connection refused)"]
    }
    used = dict(up, state="down", error="closed by peer: grant used")
    assert problems(status(links=[used]), ["east"]) == {
        "links refused for good": ["east (closed by peer: grant used)"]
    }
    west.links = [used]
    clock = Clock()
    params = WaitParams(site="west", base_dir=str(tmp_path), routers=["east"], timeout=30)
    with pytest.raises(SkiffError) as err:
        run_wait(params, False, platform_factory=fleet.factory, clock=clock, sleep=clock.sleep)
    assert clock.now == 0  # no waiting: no retry can help
    assert err.value.site == "west" and err.value.field == "links"
    assert "east (closed by peer: grant used)" in err.value.message
    assert "ask it for a new one" in err.value.message
