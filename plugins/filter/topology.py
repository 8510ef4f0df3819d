# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Filters that read the fleet's topology from the inventory (see module_utils/topology.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    credential_routers,
    dialers,
    network_of,
)
from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    plain_hostvars as _plain,
)

# What dialers() and network_of() read of each host.
_LINK_VARS = ("skiff_links", "skiff_site_name")
# network_of() also leaves render-only kubernetes sites out, which these say.
_NETWORK_VARS = (*_LINK_VARS, "skiff_platform", "skiff_kube_apply")


def skiff_dialers(host: str, hostvars: Any, site_hosts: list[str]) -> list[str]:
    return dialers(_plain(hostvars, site_hosts, _LINK_VARS), list(site_hosts), host)


def skiff_network(host: str, hostvars: Any, site_hosts: list[str]) -> list[str]:
    return network_of(_plain(hostvars, site_hosts, _NETWORK_VARS), list(site_hosts), host)


def skiff_site_names(hosts: list[str], hostvars: Any) -> list[str]:
    """Site names of inventory hosts (skiff_site_name, else the inventory name)."""
    return [str(hostvars[host].get("skiff_site_name") or host) for host in hosts]


def skiff_credential_routers(hosts: list[str], hostvars: Any) -> dict[str, int]:
    """Site name -> how many routers of that site may hold its token at once
    (skiff.fleet.token's ``routers``)."""
    names = ("skiff_platform", "skiff_router_replicas", "skiff_site_name")
    plain = _plain(hostvars, list(hosts), names)
    return {
        str(plain[host].get("skiff_site_name") or host): credential_routers(plain[host])
        for host in hosts
    }


def skiff_link_items(
    links: list[dict[str, Any]], hostvars: Any, host: str, delegated: Any = None
) -> list[dict[str, Any]]:
    """`host`'s skiff_links as items of skiff.fleet.reconcile's `links`, with their tokens.

    A token comes from the tokens step (hostvars[target].skiff_token_results)
    when the target was in the run, else from the delegated token task's
    results; without either (check mode before the target exists) the item
    has no token and names its `peer`, which the module reports as pending.
    """
    dialer = _site_name(hostvars, host)
    delegated_tokens = {
        result["pair"]["target"]: result["token"]
        for result in (delegated or {}).get("results", [])
        if result.get("token") and result["pair"]["dialer"] == host
    }
    items = []
    for link in links:
        target = link["to"]
        name = _site_name(hostvars, target)
        issued = hostvars[target].get("skiff_token_results") or {}
        token = delegated_tokens.get(target) or (issued.get("tokens") or {}).get(dialer)
        item = {"name": name, "peer": name, "cost": link.get("cost", 1)}
        if token:
            item["token"] = token
        items.append(item)
    return items


def skiff_links_leaving(hosts: list[str], hostvars: Any, in_run: list[str]) -> list[dict[str, str]]:
    """Each (dialer, target) link of `hosts` whose target is outside this run (--limit)."""
    return [
        {"dialer": host, "target": link["to"]}
        for host in hosts
        for link in hostvars[host].get("skiff_links") or []
        if link["to"] not in in_run
    ]


def skiff_external_tokens(entries: list[Any]) -> dict[str, Any]:
    """skiff_external_tokens as skiff.fleet.token takes them: every name (`names`,
    `outside`), the grants' terms by name (`grants`: entries with a `dest`), and the
    routers of the entries that give them (`routers`)."""
    dicts = [e for e in entries or [] if isinstance(e, dict)]
    return {
        "names": [str(e["name"] if isinstance(e, dict) else e) for e in entries or []],
        "grants": {
            str(e["name"]): {k: v for k, v in e.items() if k not in ("name", "routers")}
            for e in dicts
            if "dest" in e
        },
        "routers": {str(e["name"]): e["routers"] for e in dicts if "routers" in e},
    }


# Results that say a step changed something on a host.
_STEP_RESULTS = (
    "skiff_site_result",
    "skiff_token_results",
    "skiff_config_result",
    "skiff_router_install",
    "skiff_firewall_result",
)


def skiff_changed_in_run(hosts: list[str], hostvars: Any) -> bool:
    """Whether any step changed anything on any of `hosts` in this run."""
    return any(
        (hostvars[host].get(name) or {}).get("changed") for host in hosts for name in _STEP_RESULTS
    )


def _site_name(hostvars: Any, host: str) -> str:
    return str(hostvars[host].get("skiff_site_name") or host)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "dialers": skiff_dialers,
            "network": skiff_network,
            "site_names": skiff_site_names,
            "credential_routers": skiff_credential_routers,
            "external_tokens": skiff_external_tokens,
            "link_items": skiff_link_items,
            "links_leaving": skiff_links_leaving,
            "changed_in_run": skiff_changed_in_run,
        }
