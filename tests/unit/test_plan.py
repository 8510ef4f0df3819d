"""The plan of a check run: from per-site results to one readable plan of the fleet."""

from __future__ import annotations

from ansible_collections.skiff.fleet.plugins.module_utils.plan import (
    SiteReport,
    build_plan,
    render_plan,
)
from ansible_collections.skiff.fleet.plugins.module_utils.topology import NetSite


def link(name, cost=1):
    return {
        "name": name,
        "peer": name,
        "cost": cost,
        "endpoints": [{"host": "127.0.0.1", "port": 55671}],
        "ca": f"links/{name}/ca.crt",
        "cert": f"links/{name}/tls.crt",
        "key": f"links/{name}/tls.key",
    }


def service(name, port, key=None, host="127.0.0.1"):
    return {"name": name, "routing_key": key or name, "host": host, "port": port}


def config_result(before, after, changes=(), actions=()):
    return {
        "changed": bool(changes),
        "actions": list(actions),
        "diff": {"before": before, "after": after},
        "changes": list(changes),
    }


def lists(links=(), listeners=(), connectors=()):
    return {"links": list(links), "listeners": list(listeners), "connectors": list(connectors)}


UNCHANGED_SITE = {"changed": False, "actions": [], "diff": {"before": {"metadata": {"name": "x"}}}}

# east serves db; west links to east and listens for db; north links to west and listens too.
EAST = lists(connectors=[service("db", 5432)])
WEST = lists(links=[link("east")], listeners=[service("db", 15432)])
NORTH = lists(links=[link("west", 2)], listeners=[service("db", 25432)])


def converged_reports():
    return [
        SiteReport("east", "east", site=UNCHANGED_SITE, config=config_result(EAST, EAST)),
        SiteReport("west", "west", site=UNCHANGED_SITE, config=config_result(WEST, WEST)),
        SiteReport("north", "north", site=UNCHANGED_SITE, config=config_result(NORTH, NORTH)),
    ]


def test_converged_fleet_plans_nothing():
    plan = build_plan(converged_reports())
    assert not plan["changed"] and plan["errors"] == []
    assert sorted(plan["sites"]["unchanged"]) == ["east", "north", "west"]
    text = render_plan(plan, sites=3)
    assert text.splitlines() == [
        "Plan for 3 sites (a check run: nothing was changed)",
        "No changes: every site already is what the inventory says.",
    ]


def test_fresh_fleet_creates_sites_links_and_makes_keys_reachable():
    new_site = {
        "changed": True,
        "actions": ["create site directory /x", "create the site CA", "start the router"],
        "diff": {"before": {"config": {}, "metadata": {}}},
    }
    empty = lists()
    reports = [
        SiteReport(
            "east",
            "east",
            site=new_site,
            config=config_result(
                empty,
                EAST,
                [
                    {
                        "section": "connectors",
                        "action": "add",
                        "name": "db",
                        "before": None,
                        "after": service("db", 5432),
                    }
                ],
            ),
        ),
        SiteReport(
            "west",
            "west",
            site=new_site,
            config=config_result(
                empty,
                lists(listeners=[service("db", 15432)]),
                [
                    {
                        "section": "links",
                        "action": "add",
                        "name": "east",
                        "before": None,
                        "after": {"name": "east", "peer": "east", "cost": 3},
                        "pending": True,
                    },
                    {
                        "section": "listeners",
                        "action": "add",
                        "name": "db",
                        "before": None,
                        "after": service("db", 15432),
                    },
                ],
            ),
        ),
    ]
    plan = build_plan(reports)
    assert plan["changed"]
    assert plan["sites"]["create"] == ["east", "west"]
    assert plan["links"]["add"] == [
        {
            "from": "west",
            "to": "east",
            "name": "east",
            "cost": 3,
            "note": "its token is issued during the run",
        }
    ]
    assert plan["reachable"] == {"db": ["west"]}
    text = render_plan(plan, sites=2)
    assert "Sites to create (2):\n  east\n  west" in text
    assert "Links to add (1):\n  west -> east  cost 3 (its token is issued during the run)" in text
    assert "Services that become reachable (1):\n  'db' at west" in text
    assert "Listeners and connectors to add (2):" in text


def test_removing_a_link_makes_keys_unreachable_beyond_it():
    reports = converged_reports()
    west_after = lists(listeners=[service("db", 15432)])
    reports[1].config = config_result(
        WEST,
        west_after,
        [
            {
                "section": "links",
                "action": "remove",
                "name": "east",
                "before": link("east"),
                "after": None,
            }
        ],
        ["remove link 'east'", "remove the credentials of link 'east'"],
    )
    plan = build_plan(reports)
    assert plan["links"]["remove"] == [{"from": "west", "to": "east", "name": "east", "cost": 1}]
    assert plan["unreachable"] == {
        "db": [
            {"site": "north", "why": "no connector reachable"},
            {"site": "west", "why": "no connector reachable"},
        ]
    }
    text = render_plan(plan, sites=3)
    assert (
        "Services that become unreachable (1):\n"
        "  'db' at north (no connector reachable), west (no connector reachable)"
    ) in text


def test_recost_and_removed_listener():
    reports = converged_reports()
    north_after = lists(links=[link("west", 7)])
    reports[2].config = config_result(
        NORTH,
        north_after,
        [
            {
                "section": "links",
                "action": "update",
                "name": "west",
                "before": link("west", 2),
                "after": link("west", 7),
            },
            {
                "section": "listeners",
                "action": "remove",
                "name": "db",
                "before": service("db", 25432),
                "after": None,
            },
        ],
    )
    plan = build_plan(reports)
    assert (
        plan["links"]["update"][0]["cost_before"] == 2 and plan["links"]["update"][0]["cost"] == 7
    )
    assert plan["unreachable"] == {"db": [{"site": "north", "why": "listener removed"}]}
    text = render_plan(plan, sites=3)
    assert "Links to re-cost (1):\n  north -> west  cost 2 -> 7" in text
    assert (
        "Listeners and connectors to remove (1):\n  north: listener 'db' (routing key 'db', 127.0.0.1:25432)"
        in text
    )


def test_certificates_to_renew_say_why():
    reports = converged_reports()
    reports[0].site = {
        "changed": True,
        "actions": [
            "issue the server certificate for 127.0.0.1 (expires within 30 days)",
            "replace the site CA (not yet valid)",
            "reload the router",
        ],
        "diff": {"before": {"metadata": {"name": "east"}}},
    }
    reports[0].tokens = [
        {
            "changed": True,
            "actions": [
                "issue token 'west' (the previous one: expires within 30 days)",
                "renew token 'north' with its next certificate (the previous one: expires "
                "within 30 days)",
                "issue grant 'acme' to /root/acme.grant, 1 redemption within 15 minutes "
                "(the previous one: issued before the rotation time 2026-12-04 09:00:00 UTC)",
            ],
        }
    ]
    reports[1].config = config_result(
        WEST, WEST, [], ["write the credentials of link 'east' from the token"]
    )
    plan = build_plan(reports)
    assert plan["certificates"] == [
        {
            "site": "east",
            "what": "server certificate for 127.0.0.1",
            "why": "expires within 30 days",
        },
        {"site": "east", "what": "site CA", "why": "not yet valid"},
        {
            "site": "east",
            "what": "token for site 'west' (its link's client certificate)",
            "why": "expires within 30 days",
        },
        {
            "site": "east",
            "what": "token for site 'north' (its link's client certificate)",
            "why": "expires within 30 days; its next certificate takes over",
        },
        {
            "site": "east",
            "what": "grant 'acme' for a peer outside the inventory",
            "why": "issued before the rotation time 2026-12-04 09:00:00 UTC",
        },
        {
            "site": "west",
            "what": "credentials of link 'east'",
            "why": "a new token was issued for it",
        },
    ]
    # Certificate work is not listed again as a site change; notes are not changes.
    assert plan["sites"]["change"] == {}
    assert plan["changed"]
    assert (
        "Certificates to renew (6):\n  east: server certificate for 127.0.0.1 (expires within 30 days)"
        in render_plan(plan, sites=3)
    )


def test_sites_that_cannot_be_planned_are_named_with_the_reason():
    reports = converged_reports()
    reports[0].site = {
        "unreachable": True,
        "msg": "Failed to connect to the host via ssh: Connection refused",
    }
    reports[0].config = None
    reports[2].site = UNCHANGED_SITE
    reports[2].config = {
        "failed": True,
        "msg": "site 'north': link 'west': token: no token from site 'west'",
    }
    plan = build_plan(reports)
    assert plan["errors"] == [
        {
            "site": "east",
            "host": "east",
            "why": "unreachable: Failed to connect to the host via ssh: Connection refused",
        },
        {
            "site": "north",
            "host": "north",
            "why": "failed: site 'north': link 'west': token: no token from site 'west'",
        },
    ]
    text = render_plan(plan, sites=3)
    assert "Cannot plan (nothing was planned for these sites) (2):" in text
    assert "  east: unreachable: Failed to connect" in text
    # What cannot be read does not invent reachability changes.
    assert plan["unreachable"] == {} and plan["reachable"] == {}
    assert "No changes" not in text


def test_sites_outside_the_run_count_for_reachability():
    reports = converged_reports()[1:]  # east is outside the run (--limit)
    plan = build_plan(reports, {"east": NetSite("east", connectors=("db",))})
    assert plan["reachable"] == {} and plan["unreachable"] == {}
    alone = build_plan(reports)
    assert alone["unreachable"] == {}  # nothing served before either: no change


def test_site_changes_keep_what_matters_and_a_lone_reload():
    reports = converged_reports()
    reports[0].site = {
        "changed": True,
        "actions": ["write /x/east/router.json (log_level)", "reload the router"],
        "diff": {"before": {"metadata": {"name": "east"}}},
    }
    reports[1].site = {
        "changed": True,
        "actions": ["reload the router (it does not run the config on disk)"],
        "diff": {"before": {"metadata": {"name": "west"}}},
    }
    plan = build_plan(reports)
    assert plan["sites"]["change"] == {
        "east": ["write /x/east/router.json (log_level)"],
        "west": ["reload the router (it does not run the config on disk)"],
    }
    assert "Sites to change (2):\n  east: write /x/east/router.json (log_level)" in render_plan(
        plan, sites=3
    )
