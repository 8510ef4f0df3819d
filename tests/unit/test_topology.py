"""Fleet inventory checks: every problem names the host and the field."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    NetSite,
    dial_cycles,
    dialers,
    fleet_findings,
    fleet_problems,
    network_of,
    reachable_sites,
    served_keys,
)

LOCAL = {"ansible_connection": "local"}
GOOD = {
    "east": {
        **LOCAL,
        "skiff_admin_port": 9191,
        "skiff_link_access": True,
        "skiff_link_endpoint": {"host": "127.0.0.1", "port": 55671},
        "skiff_connectors": [{"name": "backend", "host": "127.0.0.1", "port": 8080}],
    },
    "west": {
        **LOCAL,
        "skiff_admin_port": 9192,
        "skiff_link_access": True,
        "skiff_link_endpoint": {"host": "127.0.0.1", "port": 55672},
        "skiff_links": [{"to": "east", "cost": 1}],
        "skiff_listeners": [{"name": "backend", "port": 18080}],
    },
    "north": {
        **LOCAL,
        "skiff_admin_port": 9193,
        "skiff_links": [{"to": "west"}],
        "skiff_listeners": [{"name": "backend", "port": 18081}],
    },
}


def problems_after(change) -> list[str]:
    fleet = copy.deepcopy(GOOD)
    change(fleet)
    return fleet_problems(fleet, list(fleet))


def test_good_fleet_has_no_problem() -> None:
    assert fleet_problems(GOOD, list(GOOD)) == []


def test_link_to_a_host_that_is_not_a_site() -> None:
    found = problems_after(lambda f: f["north"].update(skiff_links=[{"to": "south"}]))
    assert found == [
        "host 'north': skiff_links[0].to: 'south' is not a host in the skiff_sites group; "
        "name one of: east, north, west"
    ]


def test_link_to_a_site_without_link_access() -> None:
    found = problems_after(lambda f: f["east"].update(skiff_links=[{"to": "north"}]))
    assert len(found) == 1
    assert found[0].startswith("host 'east': skiff_links[0].to: site 'north' does not accept links")


@pytest.mark.parametrize("port", [0, 65536, -1, "http", True])
def test_listener_port_outside_range(port) -> None:
    found = problems_after(lambda f: f["west"]["skiff_listeners"][0].update(port=port))
    assert any(
        p.startswith("host 'west': skiff_listeners[0].port: must be an integer 1-65535")
        for p in found
    )


def test_link_endpoint_port_outside_range() -> None:
    found = problems_after(lambda f: f["east"]["skiff_link_endpoint"].update(port=70000))
    assert found == ["host 'east': skiff_link_endpoint.port: must be an integer 1-65535, got 70000"]


def test_duplicated_port_on_one_machine_names_both_hosts() -> None:
    found = problems_after(lambda f: f["north"].update(skiff_admin_port=9191))
    assert found == [
        "host 'north': skiff_admin_port: port 9191 on localhost is already taken by host "
        "'east' (skiff_admin_port); give each site on one machine its own ports"
    ]


def test_same_port_on_different_machines_is_fine() -> None:
    def move(fleet):
        for host, name in (("east", "10.0.0.1"), ("west", "10.0.0.2"), ("north", "10.0.0.3")):
            fleet[host].pop("ansible_connection")
            fleet[host]["ansible_host"] = name
            fleet[host]["skiff_admin_port"] = 9191

    assert problems_after(move) == []


def test_listener_port_clashing_with_link_port() -> None:
    found = problems_after(lambda f: f["north"]["skiff_listeners"][0].update(port=55671))
    assert found == [
        "host 'north': skiff_listeners[0].port: port 55671 on localhost is already taken by "
        "host 'east' (skiff_link_endpoint.port); give each site on one machine its own ports"
    ]


def test_unknown_platform() -> None:
    found = problems_after(lambda f: f["west"].update(skiff_platform="mainframe"))
    assert found == [
        "host 'west': skiff_platform: unknown platform 'mainframe'; "
        "use one of: local, systemd, podman, kubernetes"
    ]


KUBE = {
    "skiff_platform": "kubernetes",
    "skiff_kube_image": "registry.example.com/skiff-router:0.1.0",
}


def test_kubernetes_sites_are_accepted_and_bind_no_controller_port() -> None:
    # Same admin and link ports as east on the controller: pods have their own.
    def change(fleet):
        fleet["k8s"] = {**LOCAL, **KUBE, "skiff_link_access": True,
                        "skiff_listeners": [{"name": "backend", "port": 18080}],
                        "skiff_links": [{"to": "east"}]}  # fmt: skip

    assert problems_after(change) == []


SELECTS_DB = {"matchLabels": {"app": "db"}}


@pytest.mark.parametrize(
    ("site", "connector", "problem"),
    [
        ("east", {"name": "db", "port": 5432}, "skiff_connectors[1].host: is required"),
        (
            "east",
            {"name": "db", "selector": SELECTS_DB, "port": 5432},
            "skiff_connectors[1].selector: selects pods, which only platform kubernetes has",
        ),
        (
            "k8s",
            {"name": "db", "host": "db", "selector": SELECTS_DB, "port": 5432},
            "skiff_connectors[1].selector: give host or selector, not both",
        ),
        (
            "k8s",
            {"name": "db", "selector": {}, "port": 5432},
            "skiff_connectors[1].selector: must be a label selector",
        ),
        (
            "k8s",
            {"name": "db", "selector": SELECTS_DB, "port": 5432, "tls": {"ca": "/ca.pem"}},
            "skiff_connectors[1].tls: is not supported with selector",
        ),
    ],
)
def test_connector_targets_a_host_or_pods_of_a_kubernetes_site(site, connector, problem) -> None:
    def change(fleet):
        fleet["k8s"] = {**LOCAL, **KUBE}
        fleet[site]["skiff_connectors"] = [
            {"name": "backend", "host": "127.0.0.1", "port": 8080},
            connector,
        ]

    found = problems_after(change)
    assert len(found) == 1 and found[0].startswith(f"host '{site}': {problem}"), found


def test_selector_connector_of_a_kubernetes_site_serves_its_key() -> None:
    def change(fleet):
        fleet["k8s"] = {
            **LOCAL,
            **KUBE,
            "skiff_links": [{"to": "east"}],
            "skiff_connectors": [{"name": "db", "selector": SELECTS_DB, "port": 5432}],
        }
        fleet["north"]["skiff_listeners"].append({"name": "db", "port": 15432})

    assert problems_after(change) == []
    fleet = copy.deepcopy(GOOD)
    change(fleet)
    assert fleet_findings(fleet, list(fleet)) == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (
            {"ansible_connection": "ssh"},
            "ansible_connection: a kubernetes site is managed from the controller",
        ),
        ({"skiff_kube_image": ""}, "skiff_kube_image: required"),
        (
            {"skiff_kube_namespace": "Team_A"},
            "skiff_kube_namespace: 'Team_A' is not a namespace name",
        ),
        ({"skiff_kube_link_access": "ingress"}, "skiff_kube_link_access: must be one of clusterip"),
        ({"skiff_router_replicas": 0}, "skiff_router_replicas: must be an integer 1..16"),
        ({"skiff_router_workers": 0}, "skiff_router_workers: must be an integer 1..64"),
        ({"skiff_router_workers": "4"}, "skiff_router_workers: must be an integer 1..64"),
        ({"skiff_router_replicas": 17}, "skiff_router_replicas: must be an integer 1..16"),
        (
            {"skiff_kube_apply": False},
            "skiff_kube_manifests_dir: required when skiff_kube_apply is false",
        ),
        (
            {"skiff_kube_link_access": "nodeport", "skiff_link_access": True},
            "skiff_link_endpoint.host: required with skiff_kube_link_access nodeport",
        ),
        (
            {"skiff_listeners": [{"name": "Backend", "port": 80}]},
            "skiff_listeners[0].name: 'Backend' names the listener's Service",
        ),
        (
            {"skiff_listeners": [{"name": "backend", "port": 20005}]},
            "skiff_listeners[0].port: 20005 is in the agent's proxy range 20000-20999",
        ),
        (
            {"skiff_listeners": [{"name": "backend", "port": 9192}]},
            "skiff_listeners[0].port: 9192 is the agent's health port in the pod",
        ),
        (
            {
                "skiff_link_access": True,
                "skiff_link_endpoint": {"host": "k8s.example.com"},
                "skiff_listeners": [{"name": "backend", "port": 55671}],
            },
            "skiff_listeners[0].port: 55671 is the router's link port in the pod",
        ),
        (
            {"skiff_admin_port": 20999},
            "skiff_admin_port: 20999 is in the agent's proxy range 20000-20999",
        ),
    ],
)
def test_kubernetes_site_problems(values, problem) -> None:
    found = problems_after(lambda f: f.update(k8s={**LOCAL, **KUBE, **values}))
    assert len(found) == 1 and found[0].startswith(f"host 'k8s': {problem}"), found


def test_link_access_without_endpoint() -> None:
    found = problems_after(lambda f: f["east"].pop("skiff_link_endpoint"))
    assert found[0].startswith("host 'east': skiff_link_endpoint: required when skiff_link_access")


def test_duplicate_service_names_and_bad_cost() -> None:
    def change(fleet):
        fleet["west"]["skiff_listeners"].append({"name": "backend", "port": 18090})
        fleet["west"]["skiff_links"][0]["cost"] = 0

    found = problems_after(change)
    assert "host 'west': skiff_links[0].cost: must be an integer >= 1, got 0" in found
    assert (
        "host 'west': skiff_listeners[1].name: 'backend' is used twice in skiff_listeners; "
        "names must be unique" in found
    )


def test_invalid_and_duplicate_site_names() -> None:
    found = problems_after(lambda f: f["north"].update(skiff_site_name="West"))
    assert found[0].startswith("host 'north': skiff_site_name: 'West' is not a valid site name")
    found = problems_after(lambda f: f["north"].update(skiff_site_name="west"))
    assert found == [
        "host 'north': skiff_site_name: site name 'west' is already used by host 'west'"
    ]


def test_dialers_and_network() -> None:
    sites = list(GOOD)
    assert dialers(GOOD, sites, "east") == ["west"]
    assert dialers(GOOD, sites, "west") == ["north"]
    assert dialers(GOOD, sites, "north") == []
    assert network_of(GOOD, sites, "north") == ["east", "north", "west"]


def test_network_keeps_separate_networks_apart() -> None:
    fleet = copy.deepcopy(GOOD)
    fleet["lonely"] = {**LOCAL, "skiff_admin_port": 9194, "skiff_site_name": "island"}
    assert network_of(fleet, list(fleet), "lonely") == ["island"]
    assert network_of(fleet, list(fleet), "east") == ["east", "north", "west"]


def test_listener_distribution_must_be_known() -> None:
    found = problems_after(lambda f: f["west"]["skiff_listeners"][0].update(distribution="random"))
    assert found == [
        "host 'west': skiff_listeners[0].distribution: must be balanced or closest, got 'random'"
    ]
    assert (
        problems_after(lambda f: f["west"]["skiff_listeners"][0].update(distribution="closest"))
        == []
    )


def test_edge_sites_accept_no_links() -> None:
    found = problems_after(lambda f: f["west"].update(skiff_router_mode="edge"))
    assert (
        "host 'west': skiff_link_access: an edge router accepts no links; set it to false or make the site interior"
        in found
    )
    assert (
        "host 'north': skiff_links[0].to: site 'west' is an edge router; link to an interior site instead"
        in found
    )

    def north_edge(fleet):
        fleet["north"]["skiff_router_mode"] = "edge"

    assert problems_after(north_edge) == []


def test_a_render_only_site_is_not_waited_for() -> None:
    fleet = copy.deepcopy(GOOD)
    fleet["k8s"] = {**LOCAL, **KUBE, "skiff_kube_apply": False, "skiff_links": [{"to": "east"}]}
    assert "k8s" not in network_of(fleet, list(fleet), "east")
    fleet["k8s"]["skiff_kube_apply"] = True
    assert "k8s" in network_of(fleet, list(fleet), "east")


def test_the_network_filter_reads_what_leaves_a_render_only_site_out() -> None:
    # The filter reads only some variables of each host (templating them all is slow).
    from ansible_collections.skiff.fleet.plugins.filter.topology import skiff_network

    fleet = copy.deepcopy(GOOD)
    fleet["k8s"] = {**LOCAL, **KUBE, "skiff_kube_apply": False, "skiff_links": [{"to": "east"}]}
    assert "k8s" not in skiff_network("east", fleet, list(fleet))
    fleet["k8s"]["skiff_kube_apply"] = True
    assert "k8s" in skiff_network("east", fleet, list(fleet))


# -- fleet-wide checks: the network the inventory describes -------------------------------------


def findings_after(change) -> list:
    fleet = copy.deepcopy(GOOD)
    change(fleet)
    assert fleet_problems(fleet, list(fleet)) == []
    return fleet_findings(fleet, list(fleet))


def test_good_fleet_has_no_finding() -> None:
    assert fleet_findings(GOOD, list(GOOD)) == []


def test_listener_no_connector_serves() -> None:
    found = findings_after(
        lambda f: f["north"]["skiff_listeners"].append({"name": "db", "port": 18082})
    )
    assert [(x.host, x.check, x.field, x.intended) for x in found] == [
        ("north", "unserved-listener", "skiff_listeners[1].routing_key", False)
    ]
    assert found[0].text.startswith(
        "host 'north': skiff_listeners[1].routing_key: no connector in the fleet serves "
        "routing key 'db'"
    )


def test_intended_findings_are_marked() -> None:
    def change(fleet):
        fleet["north"]["skiff_listeners"].append({"name": "db", "port": 18082})
        fleet["north"]["skiff_intended"] = ["unserved-listener"]

    (found,) = findings_after(change)
    assert found.intended


def test_unknown_intended_check_is_a_problem() -> None:
    found = problems_after(lambda f: f["north"].update(skiff_intended=["everything"]))
    assert found == [
        "host 'north': skiff_intended[0]: unknown check 'everything'; use one of: "
        "unserved-listener, link-cycle, listeners-lose-connectors"
    ]


def test_two_sites_dialing_each_other_is_a_cycle_on_both() -> None:
    found = findings_after(lambda f: f["east"].update(skiff_links=[{"to": "west"}]))
    assert sorted((x.host, x.check) for x in found) == [
        ("east", "link-cycle"),
        ("west", "link-cycle"),
    ]
    assert "sites 'east' and 'west' dial each other" in found[0].message


def test_longer_cycle_is_named_in_order() -> None:
    def ring(fleet):
        fleet["north"].update(
            skiff_link_access=True, skiff_link_endpoint={"host": "127.0.0.1", "port": 55673}
        )
        fleet["east"]["skiff_links"] = [{"to": "north"}]

    found = findings_after(ring)
    assert {x.host for x in found} == {"east", "west", "north"}
    assert "the links dial in a cycle east -> north -> west -> east" in found[0].message


def test_rings_of_many_sites_are_found_without_recursion_limits() -> None:
    sites = {
        f"s{i:04d}": NetSite(f"s{i:04d}", links=(f"s{(i + 1) % 3000:04d}",)) for i in range(3000)
    }
    (cycle,) = dial_cycles(sites)
    assert len(cycle) == 3001 and cycle[0] == cycle[-1] == "s0000"
    # A tree has none.
    tree = {f"t{i}": NetSite(f"t{i}", links=(f"t{i // 2}",) if i else ()) for i in range(500)}
    assert dial_cycles(tree) == []


def test_site_whose_listeners_reach_no_connector() -> None:
    # north links to west, which is made an edge: an edge carries no transit,
    # so north no longer reaches east's connector.
    def cut(fleet):
        fleet["north"]["skiff_links"] = []

    found = findings_after(cut)
    assert [(x.host, x.check, x.field) for x in found] == [
        ("north", "listeners-lose-connectors", "skiff_listeners")
    ]
    assert "none of this site's listeners would reach a connector (routing keys backend)" in (
        found[0].message
    )


def test_edge_routers_carry_no_transit() -> None:
    edge = NetSite("e", mode="edge", links=("a", "b"))
    sites = {
        "a": NetSite("a", listeners=("k",)),
        "b": NetSite("b", connectors=("k",)),
        "e": edge,
    }
    assert reachable_sites(sites, "a") == {"a", "e"}
    assert served_keys(sites, "a") == set()
    assert served_keys(sites, "e") == {"k"}
    interior = dict(sites, e=NetSite("e", links=("a", "b")))
    assert served_keys(interior, "a") == {"k"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("soon", "skiff_rotate: 'soon' is neither 'now' nor an ISO 8601 time"),
        ("2026-01-01T00:00:00", "skiff_rotate: '2026-01-01T00:00:00' has no time zone"),
        ("2999-01-01T00:00:00Z", "skiff_rotate: '2999-01-01T00:00:00Z' is in the future"),
        (True, "skiff_rotate: must be 'now' or an ISO 8601 time"),
    ],
)
def test_skiff_rotate_is_checked_before_anything_runs(value, problem) -> None:
    found = problems_after(lambda f: f["north"].update(skiff_rotate=value))
    assert len(found) == 1 and found[0].startswith(f"host 'north': {problem}"), found
    ca_problem = problem.replace("skiff_rotate:", "skiff_rotate_ca:")
    found = problems_after(lambda f: f["north"].update(skiff_rotate_ca=value))
    assert len(found) == 1 and found[0].startswith(f"host 'north': {ca_problem}"), found
    for good in ("", "now", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"):
        assert problems_after(lambda f, v=good: f["north"].update(skiff_rotate=v)) == []


def test_credential_routers_count_a_kubernetes_sites_pods_and_its_rollout() -> None:
    from ansible_collections.skiff.fleet.plugins.filter.topology import (
        skiff_credential_routers,
    )

    hostvars = {
        "west-host": {"skiff_site_name": "west"},
        "shop": {"skiff_platform": "kubernetes", "skiff_router_replicas": 3},
        "cart": {"skiff_platform": "kubernetes"},
        "odd": {"skiff_platform": "kubernetes", "skiff_router_replicas": 99},
    }
    assert skiff_credential_routers(list(hostvars), hostvars) == {
        "west": 1,
        "shop": 4,
        "cart": 2,
        "odd": 1,  # the fleet check names the bad count
    }


@pytest.mark.parametrize(
    ("host", "variable", "value", "problem"),
    [
        ("east", "skiff_external_tokens", ["Partner!"], "skiff_external_tokens[0]: needs a name"),
        ("east", "skiff_external_tokens", ["acme", "acme"],
         "skiff_external_tokens[1]: 'acme' is listed twice"),
        ("east", "skiff_external_tokens", ["west"],
         "skiff_external_tokens[0]: 'west' is the name of a site of the inventory"),
        ("east", "skiff_external_tokens", [{"name": "acme", "dest": "acme.grant"}],
         "skiff_external_tokens[0].dest: must be an absolute path on this host"),
        ("east", "skiff_external_tokens", [{"name": "acme", "dest": "/x", "redemptions": 0}],
         "skiff_external_tokens[0].redemptions: must be an integer 1..100, got 0"),
        ("east", "skiff_external_tokens", [{"name": "acme", "dest": "/x", "ttl": 5}],
         "skiff_external_tokens[0]: must be a mapping of dest, redemptions, redeem_within"),
        ("east", "skiff_external_tokens", [{"name": "acme", "routers": 18}],
         "skiff_external_tokens[0].routers: must be an integer 1..17 (routers of the peer"),
        ("north", "skiff_external_links", [{"name": "acme"}],
         "skiff_external_links[0].token_file: must be the absolute path"),
        ("north", "skiff_external_links", [{"name": "west", "token_file": "/t"}],
         "skiff_external_links[0].name: 'west' names another link of this site already"),
        ("north", "skiff_external_links", [{"name": "acme", "token_file": "/t", "cost": 0}],
         "skiff_external_links[0].cost: must be an integer >= 1"),
        ("north", "skiff_external_links", [{"name": "acme", "token_file": "/t", "to": "x"}],
         "skiff_external_links[0]: must be a mapping of name, token_file and cost"),
    ],
)  # fmt: skip
def test_external_tokens_and_links_are_checked_before_anything_runs(
    host, variable, value, problem
) -> None:
    found = problems_after(lambda f: f[host].update({variable: value}))
    assert len(found) == 1 and found[0].startswith(f"host '{host}': {problem}"), found


def test_good_external_tokens_and_links_pass_and_split_for_the_token_module() -> None:
    from ansible_collections.skiff.fleet.plugins.filter.topology import skiff_external_tokens

    tokens = [
        "acme",
        {"name": "globex", "dest": "/root/globex.grant", "redemptions": 2, "routers": 3},
        {"name": "initech", "routers": 2},  # a token for a peer with a replica
    ]
    links = [{"name": "initech", "token_file": "/etc/skiff/initech.token", "cost": 3}]

    def change(fleet):
        fleet["east"]["skiff_external_tokens"] = tokens
        fleet["north"]["skiff_external_links"] = links

    assert problems_after(change) == []
    assert skiff_external_tokens(tokens) == {
        "names": ["acme", "globex", "initech"],
        "grants": {"globex": {"dest": "/root/globex.grant", "redemptions": 2}},
        "routers": {"globex": 3, "initech": 2},
    }

    def kube(fleet):
        fleet["east"].update(skiff_platform="kubernetes", skiff_external_tokens=tokens)

    assert any("cannot issue grants yet" in p for p in problems_after(kube))
