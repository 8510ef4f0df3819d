from __future__ import annotations

import json

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    CONNECTOR,
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths


@pytest.fixture
def site(tmp_path, services):
    run_site(SiteParams(name="west", base_dir=str(tmp_path), router_python="py"), False, **services)
    return SitePaths(tmp_path / "west")


def listener(paths, **kw) -> ServiceParams:
    values = dict(site="west", base_dir=str(paths.root.parent), name="backend", port=18080)
    values.update(kw)
    return ServiceParams(**values)


def config(site) -> dict:
    return json.loads(site.config.read_text())


def test_listener_four_steps(site, services, fleet):
    check = run_service(LISTENER, listener(site), True, **services)
    assert check.changed
    assert check.actions[0] == "add listener 'backend' (routing key 'backend', 127.0.0.1:18080)"
    assert "listeners" not in config(site)
    assert check.diff == {
        "before": {"listeners": []},
        "after": {
            "listeners": [
                {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 18080}
            ]
        },
    }
    applied = run_service(LISTENER, listener(site), False, **services)
    assert applied.changed
    assert config(site)["listeners"] == check.diff["after"]["listeners"]
    assert fleet[site.root].calls[-1] == "reload"
    assert applied.values["listener"]["port"] == 18080
    assert not run_service(LISTENER, listener(site), True, **services).changed
    calls = list(fleet[site.root].calls)
    assert not run_service(LISTENER, listener(site), False, **services).changed
    assert fleet[site.root].calls == calls


def test_update_keeps_position_and_other_entries(site, services):
    for name, port in (("a", 1001), ("b", 1002), ("c", 1003)):
        run_service(LISTENER, listener(site, name=name, port=port), False, **services)
    result = run_service(LISTENER, listener(site, name="b", port=2002), False, **services)
    assert result.actions[0].startswith("update listener 'b'")
    assert [(e["name"], e["port"]) for e in config(site)["listeners"]] == [
        ("a", 1001),
        ("b", 2002),
        ("c", 1003),
    ]


def test_remove_and_remove_again(site, services):
    run_service(LISTENER, listener(site), False, **services)
    gone = run_service(LISTENER, listener(site, state="absent", port=None), False, **services)
    assert gone.changed and gone.actions[0] == "remove listener 'backend'"
    assert "listeners" not in config(site)
    assert gone.values["listener"] is None
    assert not run_service(LISTENER, listener(site, state="absent"), False, **services).changed


def test_connector_needs_host_and_shares_logic(site, services):
    params = ServiceParams(site="west", base_dir=str(site.root.parent), name="db", port=5432)
    with pytest.raises(SkiffError) as err:
        run_service(CONNECTOR, params, False, **services)
    assert str(err.value) == "site 'west': connector 'db': host: is required when state is present"
    params = ServiceParams(
        site="west",
        base_dir=str(site.root.parent),
        name="db",
        host="db.internal",
        port=5432,
        routing_key="postgres",
    )
    assert run_service(CONNECTOR, params, False, **services).changed
    assert config(site)["connectors"] == [
        {"name": "db", "routing_key": "postgres", "host": "db.internal", "port": 5432}
    ]
    # A connector and a listener may share a name: they live in different lists.
    run_service(LISTENER, listener(site, name="db", port=15432), False, **services)
    assert len(config(site)["connectors"]) == 1 and len(config(site)["listeners"]) == 1


def test_listener_port_in_use_restores_and_fails(site, services, fleet):
    run_service(LISTENER, listener(site, name="a", port=1001), False, **services)
    before = site.config.read_bytes()
    fleet[site.root].busy_ports.add(18080)
    with pytest.raises(SkiffError) as err:
        run_service(LISTENER, listener(site), False, **services)
    message = str(err.value)
    assert message.startswith("site 'west': listener 'backend': cannot listen on 127.0.0.1:18080")
    assert "address already in use" in message and "previous config was restored" in message
    assert site.config.read_bytes() == before
    assert fleet[site.root].in_force == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(port=0), "listener 'backend': port: 0 is out of range (1..65535)"),
        (dict(port=65536), "port: 65536 is out of range"),
        (dict(routing_key=""), "routing_key: must be a non-empty string"),
        (dict(name="a b"), "name: 'a b' is not a valid name"),
        (dict(host=""), "host: '' is not a host name"),
        (dict(site="nowhere"), "site 'nowhere': listener 'backend': no site at"),
        (dict(site="Bad_Site"), "site: 'Bad_Site' is not a valid site name"),
    ],
)
def test_bad_input(site, services, overrides, message):
    with pytest.raises(SkiffError) as err:
        run_service(LISTENER, listener(site, **overrides), False, **services)
    assert message in str(err.value)


def test_duplicate_listener_address(site, services):
    run_service(LISTENER, listener(site, name="a"), False, **services)
    with pytest.raises(SkiffError) as err:
        run_service(LISTENER, listener(site, name="b"), False, **services)
    assert "127.0.0.1:18080 is already used by listener 'a'" in str(err.value)
    with pytest.raises(SkiffError, match="already used by listener 'a'"):
        run_service(LISTENER, listener(site, name="c", host="0.0.0.0"), False, **services)
    # Another port is fine; a connector may point anywhere.
    run_service(LISTENER, listener(site, name="b", port=18081), False, **services)


def test_check_mode_without_site_predicts_change(tmp_path, services):
    params = ServiceParams(site="later", base_dir=str(tmp_path), name="x", port=1)
    result = run_service(LISTENER, params, True, **services)
    assert result.changed and "site does not exist yet" in result.actions[0]
    assert not list(tmp_path.iterdir())


def test_router_not_running_writes_config_only(site, services, fleet):
    fleet[site.root].running = False
    result = run_service(LISTENER, listener(site), False, **services)
    assert result.changed
    assert any("router not running" in a for a in result.actions)
    assert "reload" not in fleet[site.root].calls


def test_listener_distribution_is_written_only_when_not_the_default(site, services):
    run_service(LISTENER, listener(site, distribution="balanced"), False, **services)
    assert "distribution" not in config(site)["listeners"][0]
    # An entry without the key and an explicit default are the same listener.
    assert not run_service(LISTENER, listener(site), False, **services).changed
    closest = run_service(LISTENER, listener(site, distribution="closest"), False, **services)
    assert closest.changed
    assert config(site)["listeners"][0]["distribution"] == "closest"
    assert not run_service(
        LISTENER, listener(site, distribution="closest"), True, **services
    ).changed
    with pytest.raises(SkiffError, match="distribution: must be one of balanced, closest"):
        run_service(LISTENER, listener(site, distribution="random"), False, **services)
